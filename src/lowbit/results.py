"""results.json, the record every run leaves: its name, its statuses, and how to find them.

``lowbit.train`` writes it; the sweep's outcome, the report, the notebook and
scripts/results_table.py read it. This module imports nothing heavy (no torch), so that readers
never load training code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

RESULTS_FILE = "results.json"
STATUS_OK, STATUS_FAILED, STATUS_DIVERGED = "ok", "failed", "diverged"


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """Every results.json under the given run dirs or sweep dirs, or the given files themselves.

    Raises FileNotFoundError naming a path that is neither.
    """
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(path.rglob(RESULTS_FILE))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} is neither a run dir nor a file")
    return found


def read_results(path: Path) -> dict[str, Any]:
    """One results.json; a file that cannot be read or parsed becomes a record saying so."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        return {"status": "unreadable", "error": f"{type(error).__name__}: {error}",
                "run_dir": str(Path(path).parent), "quant": {}, "metrics": {}}
    payload.setdefault("run_dir", str(Path(path).parent))
    return payload
