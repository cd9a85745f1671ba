"""Measured tables rendered from their data files, so that no page retypes a number.

A page under ``docs/`` holds a marker where a measured table goes, on a line of its own:

    <!-- results-table: results/calibration_nin_digits/configurations.csv columns=n,mean -->

and the MkDocs hook ``docs/hooks/results_tables.py`` replaces it with the Markdown table
(``render_markers``) when the site is built; ``scripts/csv_table.py`` prints the same table, or
the marker that renders it, on the command line. A marker that names a missing file, column or
option raises ``ResultsTableError``, which fails the build.

The marker's path is relative to the docs folder; a data file is a CSV with a header row or a
JSON list of objects. Options (one token each; quote a value with spaces):

- ``columns=A,B``: these columns, in this order (default: all of them, in the file's order);
- ``where=COLUMN=VALUE``: keep the rows whose column holds VALUE (repeat to combine);
- ``decimals=N``: numbers with N decimals (default 4, integers as integers), or ``decimals=keep``:
  every cell as the file writes it (the tables transcribed from the pages, whose cells hold the
  digits that were published, such as ``1.060 [1.047, 1.070]``).

Every data file names the command that produced it in the ``commands.yaml`` beside it
(``COMMANDS_FILE``: file name -> command); ``tests/test_docs_results.py`` checks both.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from lowbit.report.table import markdown_rows

COMMANDS_FILE = "commands.yaml"
MARKER = re.compile(r"<!--\s*results-table:\s*(?P<body>.*?)\s*-->")
KEEP = "keep"


class ResultsTableError(ValueError):
    """A marker or a data file that cannot make its table."""


def read_rows(path: Path) -> list[dict[str, object]]:
    """The rows of a CSV file (cells as strings) or of a JSON list of objects."""
    if not path.is_file():
        raise ResultsTableError(f"no such file {path}")
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ResultsTableError(f"{path} is not a JSON list of objects")
        return rows
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def cell(value: object, decimals: int | str = 4) -> str:
    """A value as a table cell: integers as integers, other numbers with ``decimals`` decimals,
    text as it is; with ``decimals="keep"``, everything as the file writes it."""
    if value is None:
        return ""
    text = str(value)
    if decimals == KEEP:
        return text
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() and "." not in text:
        return str(int(number))
    return f"{number:.{decimals}f}"


def parse_decimals(value: str) -> int | str:
    if value == KEEP or value.isdigit():
        return value if value == KEEP else int(value)
    raise ResultsTableError(f"decimals must be a count or {KEEP!r}, not {value!r}")


@dataclass(frozen=True)
class TableSpec:
    """What one marker (or one csv_table.py command line) asks for."""

    path: str  # relative to the docs folder
    columns: tuple[str, ...] = ()
    where: tuple[tuple[str, str], ...] = ()
    decimals: int | str = 4

    @classmethod
    def parse(cls, body: str) -> TableSpec:
        """``PATH [columns=A,B] [where=COLUMN=VALUE ...] [decimals=N|keep]``"""
        tokens = shlex.split(body)
        if not tokens:
            raise ResultsTableError("a results-table marker names no file")
        path, *options = tokens
        columns: tuple[str, ...] = ()
        where: list[tuple[str, str]] = []
        decimals: int | str = 4
        for option in options:
            key, _, value = option.partition("=")
            if key == "columns" and value:
                columns = tuple(value.split(","))
            elif key == "where" and "=" in value:
                column, _, wanted = value.partition("=")
                where.append((column, wanted))
            elif key == "decimals":
                decimals = parse_decimals(value)
            else:
                raise ResultsTableError(f"results-table {path}: unknown option {option!r}")
        return cls(path, columns, tuple(where), decimals)

    def marker(self) -> str:
        options = [self.path]
        if self.columns:
            options.append("columns=" + ",".join(self.columns))
        options += [f"where={column}={value}" for column, value in self.where]
        if self.decimals != 4:
            options.append(f"decimals={self.decimals}")
        return f"<!-- results-table: {shlex.join(options)} -->"

    def header_and_rows(self, docs_dir: Path) -> tuple[list[str], list[dict[str, object]]]:
        """The columns shown and the rows kept, each checked against the file."""
        path = docs_dir / self.path
        rows = read_rows(path)
        known = list(dict.fromkeys(key for row in rows for key in row))  # a JSON row may lack some
        columns = list(self.columns) or known
        missing = [c for c in [*columns, *(c for c, _ in self.where)] if c not in known]
        if not rows:
            raise ResultsTableError(f"{path} has no rows")
        if missing:
            raise ResultsTableError(f"{path} has no column {', '.join(missing)}")
        for column, wanted in self.where:
            rows = [row for row in rows if str(row.get(column)) == wanted]
        if not rows:
            raise ResultsTableError(f"{path}: no row where {self.where}")
        return columns, rows

    def cells(self, docs_dir: Path) -> tuple[list[str], list[list[str]]]:
        columns, rows = self.header_and_rows(docs_dir)
        return columns, [[cell(row.get(c), self.decimals) for c in columns] for row in rows]

    def table(self, docs_dir: Path) -> str:
        """The Markdown table, ending in a newline."""
        return markdown_rows(*self.cells(docs_dir))


def render_markers(markdown: str, docs_dir: Path) -> str:
    """The page with each marker replaced by its table (the MkDocs hook's work)."""
    return MARKER.sub(lambda m: TableSpec.parse(m["body"]).table(docs_dir).rstrip("\n"), markdown)
