"""Compare the runs of a sweep: an HTML page, PNG figures and a Markdown table.

    python scripts/report.py outputs/multiruns/2026-11-01_12-00-00_bits_grid   # or make report

Reads every results.json under the given folders (sweep dirs, run dirs, or the files) and writes
into ``--out`` (default: ``report/`` inside the first folder): ``index.html`` (self-contained:
figures inline), ``pareto_size.png``, ``pareto_latency.png`` (int8 latency; fake-quant latency,
marked, for runs without an int8 export), ``pareto_bops.png``, ``accuracy_vs_bits.png`` and
``runs.md``. No training code is imported: the report is what the runs recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.report import default_accuracy, load_runs_or_explain, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="sweep dirs, run dirs or results.json files")
    parser.add_argument("--out", type=Path, help="where to write (default: FIRST_PATH/report)")
    parser.add_argument("--accuracy", default=None,
                        help="the accuracy metric of the figures (default: val/acc_best, or "
                             "val/map50_best for detection runs; test/acc and test/map50 are "
                             "the held-out ones)")
    parser.add_argument("--title", help="the page's title (default: the first folder's name)")
    args = parser.parse_args(argv)
    runs = load_runs_or_explain(args.paths, "report")
    if runs is None:
        return 2
    accuracy = args.accuracy or default_accuracy(runs)
    first = Path(args.paths[0])
    out = args.out or (first if first.is_dir() else first.parent) / "report"
    files = write_report(runs, out, title=args.title or f"lowbit report: {first.resolve().name}",
                         accuracy=accuracy)
    failed = sum(not run.ok for run in runs)
    print(f"report: {len(runs)} runs ({failed} failed) -> {files.html}")
    for path in [files.markdown, *files.figures]:
        print(f"        {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
