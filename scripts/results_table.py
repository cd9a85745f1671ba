"""Print a Markdown table of runs from their results.json files, one row per configuration.

    python scripts/results_table.py outputs/multiruns/<sweep>/ [more sweeps]   # or any results.json
    python scripts/results_table.py --runs outputs/runs/*/                      # one row per run

Runs that differ only in their seed are one configuration: its row has the number of seeds and
the mean, standard deviation and 95% confidence interval of the accuracies, and the mean costs
(size, BOPs, latency, duration). ``--runs`` prints one row per run instead. Read from results.json
only (no training code is imported); the same tables are in scripts/report.py's configurations.md
and runs.md.
"""

from __future__ import annotations

import argparse

from lowbit.report import load_runs_or_explain, markdown_table
from lowbit.report.configs import group_configurations
from lowbit.report.table import configurations_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs or results.json files")
    parser.add_argument(
        "--runs", action="store_true", help="one row per run instead of one per configuration"
    )
    args = parser.parse_args(argv)
    runs = load_runs_or_explain(args.paths, "results_table")
    if runs is None:
        return 2
    table = (
        markdown_table(runs) if args.runs else configurations_markdown(group_configurations(runs))
    )
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
