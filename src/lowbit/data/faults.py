"""A data file that goes bad while the run reads it: named, on one line, with what to do.

The sets lowbit downloads (CIFAR, MNIST, SVHN, ...) are read whole into memory when a run starts
(``setup``), and checked before it starts (``check``), so a file damaged later cannot reach
them. An image folder is read file by file as training goes: a file truncated, corrupted or
removed after the run started surfaces only when its batch comes up, as an error of PIL's
without the file's name, re-raised from inside a DataLoader worker. ``load_image`` names the
file (``DataFault``); the run records the fault with every metric measured so far and the
command line exits with ``lowbit.cli.EXIT_DATA_FAULT``; ``resume=`` continues from the last
checkpoint once the file is restored.
"""

from __future__ import annotations

from PIL import Image

from lowbit.errors import one_line

FAULT_KIND = "data"  # results.json's faults[].kind


class DataFault(Exception):
    """A data file could not be read during the run. One argument (the message), so that a
    DataLoader worker can re-raise it in the training process."""

    @classmethod
    def of_file(cls, path: str, error: BaseException) -> DataFault:
        return cls(f"the data file {path} cannot be read ({one_line(error)})")

    def line(self) -> str:
        """The message alone: one re-raised from a worker holds the worker's traceback too,
        whose last line is ``lowbit.data.faults.DataFault: <message>``."""
        text = str(self).strip()
        marker = f"{DataFault.__module__}.{DataFault.__qualname__}: "
        last = text.splitlines()[-1] if text else ""
        return last.split(marker, 1)[1] if marker in last else last

    def record(self) -> dict[str, str]:
        return {"kind": FAULT_KIND, "error": self.line()}


def data_fault_of(error: BaseException) -> DataFault | None:
    """The DataFault behind ``error`` (itself, or one it was raised from or during), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, DataFault):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def load_image(path: str) -> Image.Image:
    """An image file as RGB, decoded now (PIL decodes lazily, so a truncated file would fail
    later, without its name); DataFault naming the file when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataFault.of_file(path, error) from error
