"""Print chosen columns of a results data file (CSV, or a JSON list of objects) as a Markdown
table, or the marker that renders that table into a documentation page.

    python scripts/csv_table.py docs/results/ptq_vs_qat_nin_digits/configurations.csv \\
        configuration n mean ci_low ci_high --where metric=val/acc_best [--marker]

The documentation's measured tables are these tables: a page holds the ``--marker`` line and
the site build (docs/hooks/results_tables.py) replaces it with the table, so that no number is
typed by hand. Numbers are printed with 4 decimals (``--decimals N``, or ``keep`` for the
file's own digits); ``--where COLUMN=VALUE`` keeps the rows whose column holds that value. The
formatting is ``lowbit.report.results_tables``, the hook's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lowbit.report.results_tables import ResultsTableError, TableSpec, parse_decimals

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("columns", nargs="*", help="default: every column, in the file's order")
    parser.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE")
    parser.add_argument("--decimals", default="4", metavar="N|keep")
    parser.add_argument("--marker", action="store_true", help="print the page's marker instead")
    args = parser.parse_args(argv)
    path = args.file.resolve()
    try:
        where = tuple(tuple(w.split("=", 1)) for w in args.where if "=" in w)
        decimals = parse_decimals(args.decimals)
        spec = TableSpec(str(path), tuple(args.columns), where, decimals)
        spec.table(Path("/"))  # the file, its columns and rows are checked either way
        if args.marker:
            if not path.is_relative_to(DOCS):
                raise ResultsTableError(f"a page can only show a file under {DOCS}")
            relative = TableSpec(str(path.relative_to(DOCS)), spec.columns, where, decimals)
            print(relative.marker())
        else:
            print(spec.table(Path("/")), end="")
    except ResultsTableError as error:
        print(f"csv_table: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
