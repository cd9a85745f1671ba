"""The run's files on disk: written whole or not at all, the space they need, and the faults of
the folder they go to.

A long sweep on a shared cluster meets a quota that fills, a scratch folder that turns
read-only, a disk that fails. Three rules hold for every file a run writes (checkpoints,
``results.json``, the packed checkpoint, the ONNX models):

- ``write_atomically`` writes into a temporary file in the target's own folder, flushes it to
  the disk (``fsync``) and renames it over the target (``os.replace``, atomic within one
  filesystem). A fault or a SIGKILL mid-write leaves the previous file as it was, never half a
  file that a later step (``resume=``, the report) would read as whole. Lightning's own
  checkpoint writer goes through fsspec, which writes into the system's temporary folder and
  then *copies* across filesystems (not atomic), so runs save through ``AtomicCheckpointIO``
  (``lowbit.checkpoints``).
- A write that fails for a reason of the storage (``FAULT_KINDS``: a full disk, an exceeded
  quota, a read-only folder, a refused permission, an I/O error) raises ``StorageFault``, which
  names the fault and the file; the run records it in results.json and the command line exits
  with ``lowbit.cli.EXIT_STORAGE_FAULT`` after one line that says what to do.
- ``space_needed`` estimates, from the built model, what a run writes; the command line refuses
  a run whose output filesystem has less free (``check_free_space``), before any work.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lowbit.resume import how_to_continue

# errno -> the fault in the user's words. Any other OSError is a bug or a crash, not a fault of
# the storage, and keeps its traceback.
FAULT_KINDS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the output folder is read-only",
    errno.EACCES: "writing is not permitted",
    errno.EPERM: "writing is not permitted",
    errno.EIO: "the disk reported an I/O error",
}
SPACE_FAULTS = (errno.ENOSPC, errno.EDQUOT)
FAULT_KIND = "storage"  # results.json's faults[].kind (a lost W&B service is "tracker")

MB = 1e6


class StorageFault(Exception):
    """A file of the run could not be written for a reason of the storage (``FAULT_KINDS``)."""

    def __init__(self, code: int, path: Path | str | None, detail: str = ""):
        self.advice: str | None = None  # the run's one line on it (``fault_advice``)
        self.code = code
        self.path = Path(path) if path is not None else None
        self.kind = FAULT_KINDS[code]
        where = f" writing {self.path}" if self.path is not None else ""
        super().__init__(f"{self.kind}{where}" + (f" ({detail})" if detail else ""))

    @property
    def needs_space(self) -> bool:
        return self.code in SPACE_FAULTS

    def record(self) -> dict[str, Any]:
        """What results.json keeps of it in its ``faults`` list."""
        return {
            "kind": FAULT_KIND,
            "error": self.kind,
            "errno": errno.errorcode.get(self.code, str(self.code)),
            "path": None if self.path is None else str(self.path),
        }


def has_storage_fault(results: dict[str, Any]) -> bool:
    """Whether a run's results record a fault of the storage (its ``faults`` list)."""
    return any(fault.get("kind") == FAULT_KIND for fault in results.get("faults") or ())


def fault_errors(error: BaseException | None) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def storage_fault_of(error: BaseException) -> StorageFault | None:
    """The storage fault behind ``error`` (itself, or an OSError it came from whose errno is
    in ``FAULT_KINDS``, as Lightning or a library wraps it), or None."""
    for cause in fault_errors(error):
        if isinstance(cause, StorageFault):
            return cause
        if isinstance(cause, OSError) and cause.errno in FAULT_KINDS:
            return StorageFault(cause.errno, cause.filename, cause.strerror or "")
    return None


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """``write(file)`` into a temporary file beside ``path``, then renamed over it: ``path`` is
    the old file or the whole new one, whatever happens. StorageFault (naming ``path``) when
    the storage refuses; the temporary file is removed on any failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        if error.errno in FAULT_KINDS:
            raise StorageFault(error.errno, path, error.strerror or "") from error
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # on the disk before the rename makes it the file
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError raised from the OSError
        fault = storage_fault_of(error)
        if fault is not None:
            raise StorageFault(fault.code, path, fault_detail(error)) from error
        raise
    return path


def fault_detail(error: BaseException) -> str:
    """The operating system's words for the fault behind ``error``."""
    for cause in fault_errors(error):
        if isinstance(cause, OSError) and cause.errno in FAULT_KINDS:
            return cause.strerror or ""
    return ""


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    return write_atomically(path, lambda handle: handle.write(data))


# -- the space a run needs ---------------------------------------------------------------------

# Optimizer state kept in a checkpoint, in copies of the weights (Adam: two moments; SGD with
# momentum: one buffer); an optimizer not named here counts as two, to be safe.
OPTIMIZER_COPIES = {"Adam": 2, "AdamW": 2, "SGD": 1, "RMSprop": 2}
# The logs, results.json, the config and W&B's offline files: a margin, not a measurement.
LOG_MARGIN_BYTES = 5_000_000


@dataclass(frozen=True)
class SpaceNeeded:
    """What one run writes at most at one time, in bytes, by kind of file."""

    checkpoint_bytes: int  # one checkpoint file
    checkpoints_kept: int  # files of it that exist at once (one more while one is replaced)
    packed_bytes: int
    onnx_bytes: int

    @property
    def total(self) -> int:
        return (
            self.checkpoint_bytes * self.checkpoints_kept
            + self.packed_bytes
            + self.onnx_bytes
            + LOG_MARGIN_BYTES
        )

    def describe(self) -> str:
        return (
            f"about {self.total / MB:.1f} MB (checkpoints {self.checkpoints_kept} x "
            f"{self.checkpoint_bytes / MB:.1f} MB, packed {self.packed_bytes / MB:.1f} MB, ONNX "
            f"{self.onnx_bytes / MB:.1f} MB, logs {LOG_MARGIN_BYTES / MB:.0f} MB)"
        )


def state_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def space_needed(
    model, optimizer: str, checkpoints_kept: int, export_onnx: bool, pack: bool = True
) -> SpaceNeeded:
    """The space a run of ``model`` (float, as built) writes: each checkpoint holds the weights
    and the optimizer's copies of them; the packed checkpoint is at most the float weights; the
    ONNX export writes the float model and the integer one (at most half the float size: 8-bit
    weights plus their scales). docs/reliability.md compares it with the files of a run."""
    weights = state_bytes(model)
    copies = OPTIMIZER_COPIES.get(optimizer, 2)
    return SpaceNeeded(
        checkpoint_bytes=weights * (1 + copies),
        checkpoints_kept=checkpoints_kept,
        packed_bytes=weights if pack else 0,
        onnx_bytes=weights + weights // 2 if export_onnx else 0,
    )


def fault_advice(fault: StorageFault, run_dir: Path, space: SpaceNeeded | None) -> str:
    """One line: the fault, the file, and what to do (for a full disk, the space the run needs
    and the space there is), then how to continue: ``resume=`` where a checkpoint was written."""
    message = str(fault)
    if fault.needs_space:
        needed = f"this run needs {space.describe()}, " if space is not None else ""
        message += f"; {needed}{free_bytes(run_dir) / MB:.1f} MB are free there: free some space"
    elif fault.code == errno.EROFS:
        message += "; make the folder writable again (or mount it read-write)"
    else:
        message += "; make the folder writable for this user"
    return f"{message}, {how_to_continue(run_dir)}"


def existing_folder(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where its filesystem can be asked."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(existing_folder(folder)).free
