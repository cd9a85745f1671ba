"""Print chosen columns of a CSV file (a report's configurations.csv) as a Markdown table.

    python scripts/csv_table.py docs/results/ptq_vs_qat_nin_digits.csv \\
        configuration n mean ci_low ci_high --where metric=val/acc_best

The documentation's measured tables are made this way from the data files beside them, so that
no number is typed by hand. Numbers are printed with 4 decimals; ``--where COLUMN=VALUE`` keeps
the rows whose column holds that value.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def cell(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and "." not in value else f"{number:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("columns", nargs="+")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"csv_table: error: no such file {args.csv}", file=sys.stderr)
        return 2
    with args.csv.open(newline="") as file:
        rows = list(csv.DictReader(file))
    missing = [c for c in args.columns if rows and c not in rows[0]]
    if missing:
        print(f"csv_table: error: {args.csv} has no column {', '.join(missing)}", file=sys.stderr)
        return 2
    for condition in args.where:
        column, _, value = condition.partition("=")
        rows = [row for row in rows if row.get(column) == value]
    print("| " + " | ".join(args.columns) + " |")
    print("|" + "---|" * len(args.columns))
    for row in rows:
        print("| " + " | ".join(cell(row[c]) for c in args.columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
