"""scikit-learn's bundled handwritten digits as a 32x32 RGB classification set.

The default data set of lowbit: 1,797 real 8x8 digits (UCI "Optical Recognition of Handwritten
Digits", shipped inside scikit-learn as ``sklearn.datasets.load_digits``), so a first run needs
no download and trains a NIN in about two minutes on a laptop CPU. The images are upsampled to
32x32 and given three channels so that every CIFAR-shaped model runs on them unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from lowbit.data.base import BuiltInMemory, ClassificationData
from lowbit.errors import ConfigError

# load_digits pixels are counts of set pixels in 4x4 blocks of a 32x32 bitmap: 0..16.
DIGITS_MAX_VALUE = 16.0


class RandomTranslate:
    """Collate function that shifts every image of a batch by up to ``max_shift`` pixels.

    Works on the already-normalised batch tensor (no per-sample PIL round trip, so the default
    data set stays fast); the uncovered border is filled with ``fill``, the normalised value of
    an empty pixel. No flips: a mirrored digit is not the same digit.
    """

    def __init__(self, max_shift: int, fill: float):
        self.max_shift = max_shift
        self.fill = fill

    def __call__(self, samples: list[tuple[torch.Tensor, torch.Tensor]]):
        images = torch.stack([image for image, _ in samples])
        labels = torch.stack([label for _, label in samples])
        shift = self.max_shift
        padded = F.pad(images, (shift, shift, shift, shift), value=self.fill)
        height, width = images.shape[-2:]
        offsets = torch.randint(0, 2 * shift + 1, (len(samples), 2))
        shifted = torch.stack(
            [
                padded[i, :, dy : dy + height, dx : dx + width]
                for i, (dy, dx) in enumerate(offsets.tolist())
            ]
        )
        return shifted, labels


def stratified_split(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of train/val/test with every class in each split in proportion to its size.

    Two stratified cuts (test off the whole, then val off the rest) with scikit-learn, whose
    result depends only on ``seed``.
    """
    indices = torch.arange(len(labels)).numpy()
    rest, test = train_test_split(
        indices, test_size=test_fraction, stratify=labels.numpy(), random_state=seed
    )
    val_of_rest = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_of_rest, stratify=labels[rest].numpy(), random_state=seed
    )
    return tuple(torch.as_tensor(split).sort().values for split in (train, val, test))


class DigitsData(BuiltInMemory, ClassificationData):
    """The 1,797 scikit-learn digits, 32x32x3, fixed stratified train/val/test split.

    Pixels are scaled to [0, 1], upsampled bilinearly from 8x8 to 32x32, copied to three
    channels and normalised with the mean and std of the train split (so nothing about val/test
    leaks into the inputs). Everything lives in memory as tensors.

    Args:
        val_fraction, test_fraction: shares of the 1,797 images held out, per class.
        augment: random translation by up to 2 pixels of the train images.
        data_dir, batch_size, num_workers, seed: see ``ClassificationData``; ``seed`` alone
            decides the split.
    """

    name = "digits"
    num_classes = 10
    image_shape = (3, 32, 32)
    class_names = [str(digit) for digit in range(10)]
    max_shift = 2

    def __init__(
        self,
        data_dir: str = "",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        augment: bool = False,
    ):
        super().__init__(
            data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed
        )
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ConfigError(f"dataset.{key} must be a number between 0 and 1, got {value!r}")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"dataset.val_fraction + dataset.test_fraction must be below 1, "
                f"got {val_fraction} + {test_fraction}"
            )
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.augment = bool(augment)
        self.mean = self.std = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        bunch = load_digits()
        raw = torch.as_tensor(bunch.images, dtype=torch.float32) / DIGITS_MAX_VALUE
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
        images = (
            F.interpolate(
                raw.unsqueeze(1), size=self.image_shape[1:], mode="bilinear", align_corners=False
            )
            .expand(-1, 3, -1, -1)
            .contiguous()
        )
        train, val, test = stratified_split(
            labels, self.val_fraction, self.test_fraction, self.seed
        )
        self.mean = images[train].mean().item()
        self.std = images[train].std().item()
        images = (images - self.mean) / self.std
        self.train_set = TensorDataset(images[train], labels[train])
        self.val_set = TensorDataset(images[val], labels[val])
        self.test_set = TensorDataset(images[test], labels[test])

    def train_dataloader(self) -> DataLoader:
        collate_fn = None
        if self.augment and self.mean is not None:
            # The value an empty (0) pixel has after normalisation fills the uncovered border.
            collate_fn = RandomTranslate(self.max_shift, fill=-self.mean / self.std)
        return self._loader(self.train_set, shuffle=True, collate_fn=collate_fn)
