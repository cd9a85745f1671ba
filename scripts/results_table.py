"""Print a Markdown table of finished runs from their results.json files.

    python scripts/results_table.py outputs/runs/*/        # or any results.json paths

One row per run: name, model, quantizer, W/A/G, accuracies, size, compression, BOPs, latencies,
duration and status, read from results.json only (no training code is imported), so the table is
what the runs recorded. The same table is in scripts/report.py's runs.md and HTML page.
"""

from __future__ import annotations

import argparse

from lowbit.report import load_runs_or_explain, markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs or results.json files")
    args = parser.parse_args(argv)
    runs = load_runs_or_explain(args.paths, "results_table")
    if runs is None:
        return 2
    print(markdown_table(runs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
