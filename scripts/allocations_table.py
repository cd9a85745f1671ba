"""One CSV row per allocation file: its budget, what was predicted, and each layer's width.

    python scripts/allocations_table.py outputs/runs/*/allocations/lsq-hessian-*.yaml > table.csv

Columns: ``source`` (the run whose weights were scored: its folder's name), ``method``, each
budget (``size_kb``, ``bops_ratio``, ``latency_ms``: those any file has), ``size_bytes`` (the
packed file at the allocation), ``bops_ratio``, ``sensitivity_s`` (the scoring's seconds), then
one column per allocated layer with its weight width. Rows are sorted by budget, then source.
Reads the files ``scripts/allocate.py`` writes (``lowbit.mixed.allocation``); nothing else.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from lowbit.errors import ConfigError
from lowbit.mixed.allocation import read_allocation


def row_of(path: Path) -> dict:
    allocation = read_allocation(path)
    details = allocation.details
    source = Path(str(details.get("source", ""))).parent
    if source.name == "checkpoints":  # a run folder's checkpoint: name the run
        source = source.parent
    row = {"source": source.name, "method": details.get("method")}
    row.update({f"budget_{k}": v for k, v in (details.get("budget") or {}).items()})
    row.update(
        {
            "size_bytes": details.get("size_bytes"),
            "bops_ratio": round(float(details.get("bops_ratio", float("nan"))), 4),
            "sensitivity_s": details.get("sensitivity_seconds"),
        }
    )
    row.update(allocation.widths)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="allocation files")
    args = parser.parse_args(argv)
    try:
        rows = [row_of(path) for path in args.files]
    except ConfigError as error:
        print(f"allocations_table: {error}", file=sys.stderr)
        return 2
    budgets = sorted({key for row in rows for key in row if key.startswith("budget_")})
    rows.sort(key=lambda r: (*(float(r.get(b) or 0) for b in budgets), r["source"]))
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
