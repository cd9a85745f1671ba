"""results.json, the record every run leaves: its name, its statuses, and how to find them.

``lowbit.train`` and the export write it (``write_json_atomically``); the sweep's outcome, the
report, the notebook and scripts/results_table.py read it. This module imports nothing heavy
(no torch), so that readers never load training code. The names of the run folder's files that
other tools read back, and the check that a run folder can be written at all, are here too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lowbit.errors import ConfigError
from lowbit.storage import write_bytes_atomically

RESULTS_FILE = "results.json"
# The packed weights (lowbit.export.packing): measured as model/size_bytes, exported to ONNX.
PACKED_FILE = "model_packed.safetensors"

STATUS_OK, STATUS_FAILED, STATUS_DIVERGED = "ok", "failed", "diverged"
STATUS_INTERRUPTED = "interrupted"  # SIGTERM or Ctrl-C; last.ckpt saved, resume=RUN_DIR goes on
STATUS_UNREADABLE = "unreadable"  # a results.json that cannot be read or parsed


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
        return {
            "status": STATUS_UNREADABLE,
            "error": f"{type(error).__name__}: {error}",
            "run_dir": str(Path(path).parent),
            "quant": {},
            "metrics": {},
        }
    payload.setdefault("run_dir", str(Path(path).parent))
    return payload


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` as JSON into ``path``, whole or not at all (``lowbit.storage``): readers
    never see half a file; StorageFault when the storage refuses it."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes_atomically(path, text.encode())


def check_writable(folder: Path, keep: bool = True) -> None:
    """ConfigError unless ``folder`` can be created and written into. ``keep=False`` removes
    what the probe created (the CLI's check before Hydra makes the run dir); the probe file
    itself is always removed."""
    created: list[Path] = []
    missing = Path(folder)
    while not missing.exists() and missing != missing.parent:
        created.append(missing)  # deepest first: removed in this order afterwards
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lowbit_write_test.{os.getpid()}"  # DDP ranks probe at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write to the output dir {folder}: {error.strerror}; choose "
            f"another with hydra.run.dir=PATH (or paths.log_dir=PATH)"
        ) from None
    finally:
        for path in [] if keep else created:
            try:
                path.rmdir()
            except OSError:
                pass
