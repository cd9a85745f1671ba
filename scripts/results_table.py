"""Print a Markdown table of finished runs from their results.json files.

    python scripts/results_table.py outputs/runs/*/        # or any results.json paths

One row per run: name, status, W/A/G bits, accuracies, size, compression and latency, read
from results.json only (no training code is imported), so the table is what the runs recorded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = [
    ("run", lambda r: r.get("run_name") or Path(r["run_dir"]).name),
    ("status", lambda r: r.get("status", "?")),
    ("W/A/G", lambda r: "{wbits}/{abits}/{gbits}".format(**r["quant"])),
    ("val acc best", lambda r: fmt(r["metrics"].get("val/acc_best"), "{:.4f}")),
    ("test acc", lambda r: fmt(r["metrics"].get("test/acc"), "{:.4f}")),
    ("size (bytes)", lambda r: fmt(r["metrics"].get("model/size_bytes"), "{:,.0f}")),
    ("compression", lambda r: fmt(r["metrics"].get("model/compression"), "{:.2f}x")),
    ("latency (ms)", lambda r: fmt(r["metrics"].get("latency/ms"), "{:.2f}")),
    ("duration (s)", lambda r: fmt(r.get("duration_s"), "{:.0f}")),
]


def fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def find_results(paths: list[str]) -> list[Path]:
    found = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(path.rglob("results.json"))
        elif path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"results_table: error: {path} is neither a run dir nor a file")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run dirs, sweep dirs or results.json files")
    args = parser.parse_args(argv)
    files = find_results(args.paths)
    if not files:
        print("results_table: error: no results.json under the given paths", file=sys.stderr)
        return 2
    rows = [json.loads(f.read_text()) for f in files]
    print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(get(row) for _, get in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
