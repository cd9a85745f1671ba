"""Compare the runs of one or more sweeps over seeds: an HTML page, PNG figures, tables.

    python scripts/report.py outputs/multiruns/2026-11-01_12-00-00_bits_grid   # or make report
    python scripts/report.py outputs/multiruns/seed0_grid outputs/multiruns/seed1_grid
    python scripts/report.py outputs/multiruns        # every sweep under a parent folder

Reads every results.json under the given folders (sweep dirs, their parent, run dirs, or the
files); runs that differ only in their seed are one configuration, wherever they are. Writes into
``--out`` (default: ``report/`` inside the first folder): ``index.html`` (self-contained: figures
inline; configurations with n, mean, sd and 95% CI, each comparison's Welch verdict, the
figures, every run), ``pareto_size.png``, ``pareto_latency.png`` (int8 latency in the fastest
runtime each run measured, the best float path's as a line; fake-quant latency, marked, for runs
without an int8 export), ``pareto_bops.png`` (mixed-precision runs are diamonds on all three),
``accuracy_vs_bits.png``,
``configurations.md`` (table and verdicts), ``runs.md``, ``configurations.csv`` (every metric's
n, mean, sd, CI) and ``comparisons.csv``. No training code is imported: the report is what the
runs recorded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lowbit.report import default_accuracy, load_runs_or_explain, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="sweep dirs, run dirs or results.json files")
    parser.add_argument("--out", type=Path, help="where to write (default: FIRST_PATH/report)")
    parser.add_argument(
        "--accuracy",
        default=None,
        help="the accuracy metric of the figures (default: val/acc_best, or "
        "val/map50_best for detection runs; test/acc and test/map50 are "
        "the held-out ones)",
    )
    parser.add_argument("--title", help="the page's title (default: the first folder's name)")
    args = parser.parse_args(argv)
    runs = load_runs_or_explain(args.paths, "report")
    if runs is None:
        return 2
    accuracy = args.accuracy or default_accuracy(runs)
    first = Path(args.paths[0])
    out = args.out or (first if first.is_dir() else first.parent) / "report"
    names = [Path(path).resolve().name for path in args.paths]
    title = args.title or "lowbit report: " + (
        names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"
    )
    files = write_report(runs, out, title=title, accuracy=accuracy)
    failed = sum(not run.ok for run in runs)
    print(f"report: {len(runs)} runs ({failed} failed) -> {files.html}")
    for path in [files.configurations, files.markdown, *files.tables, *files.figures]:
        print(f"        {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
