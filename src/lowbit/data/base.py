"""The common shape of every lowbit image classification data set.

Training code only ever sees a ``ClassificationData``: it reads ``num_classes`` and
``image_shape`` right after construction (to build the model and count its MACs before any data
is touched), calls ``check()`` as a pre-flight test before training starts, and then hands the
module to Lightning, which calls ``prepare_data``/``setup`` and the three ``*_dataloader``
methods. Batches are always ``(float32 [B, C, H, W] normalised images, int64 [B] labels)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from lowbit.errors import ConfigError


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused), else a one-line ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"dataset.{name} must be an integer >= {minimum}, got {value!r}")
    return value


class SplitLoaders:
    """The train/val/test data loaders, the pre-flight ``check`` and the repr of a data module
    with ``train_set``/``val_set``/``test_set``, ``batch_size`` and ``num_workers``: every set,
    classification or detection, batches, shuffles and spawns workers the same way.
    ``collate_fn`` is the DataLoader's (None: torch's default)."""

    collate_fn: Callable | None = None
    train_set: Dataset | None
    val_set: Dataset | None
    test_set: Dataset | None
    batch_size: int
    num_workers: int

    def _loader(
        self, dataset: Dataset | None, shuffle: bool, collate_fn: Callable | None = None
    ) -> DataLoader:
        """``collate_fn`` overrides the class's (digits' training split: random shifts)."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before its data loaders")
        # No explicit generator: the shuffling order (and the workers' seeds, hence random
        # flips) follow torch's global RNG, which the run seed fixes (Lightning's
        # seed_everything), so the run seed - not the data seed - decides the order of batches.
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_start_method(self.num_workers),
            collate_fn=collate_fn or type(self).collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def check(self) -> None:
        """Raise ConfigError when the data cannot be had; cheap, runs before training starts."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
            f"image_shape={self.image_shape}, batch_size={self.batch_size})"
        )


def worker_start_method(num_workers: int) -> str | None:
    """How data loader workers start: the platform's default (fork on Linux), or "forkserver"
    once OpenVINO is loaded in this process. OpenVINO's runtime threads do not survive a fork:
    a worker forked after an export's OpenVINO measurement crashed the training process with
    SIGSEGV (the second job of a multirun, a notebook that trains after exporting). Workers of
    a fork server start from a fresh process instead; they live for the whole fit
    (``persistent_workers``), so their start is paid once per loader."""
    if num_workers > 0 and "openvino" in sys.modules:
        return "forkserver"
    return None


class BuiltInMemory:
    """A set that ``setup`` draws or unpacks in memory, once: nothing to fetch, so building it
    (kept for ``setup``) is the whole pre-flight check."""

    def check(self) -> None:
        self.setup()


class ClassificationData(SplitLoaders, pl.LightningDataModule):
    """Base class of all image classification sets: one train, one val and one test split.

    Subclasses set the class attributes ``name``/``num_classes``/``image_shape`` (or the
    instance attributes, when they depend on arguments) and fill ``train_set``, ``val_set`` and
    ``test_set`` in ``setup``; the data loaders are built here so that every set batches,
    shuffles and spawns workers the same way.

    Args:
        data_dir: where the set's files live (ignored by the sets generated in memory).
        batch_size: images per batch, for all three loaders.
        num_workers: DataLoader worker processes; 0 loads in the training process.
        seed: fixes the set's own splits and generation. It is deliberately not the run seed:
            runs with different run seeds must still see the same validation images.
    """

    name: str = "base"
    task: str = "classification"  # detection sets say "detection"; train.py picks the task by it
    num_classes: int = 0
    image_shape: tuple[int, int, int] = (3, 32, 32)
    class_names: list[str] = []

    def __init__(
        self, data_dir: str = "", batch_size: int = 128, num_workers: int = 0, seed: int = 0
    ):
        super().__init__()
        self.data_dir = Path(str(data_dir)).expanduser() if data_dir else Path(".")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
