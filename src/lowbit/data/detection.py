"""The common shape of every lowbit object detection data set, and the box-aware transforms.

Training code sees a ``DetectionData``: like ``ClassificationData`` it reads ``num_classes`` and
``image_shape`` right after construction, calls ``check()`` before training starts, and hands
the module to Lightning. Batches are ``(images, targets)``:

- ``images``: float32 [B, 3, S, S] in [0, 1], the letterboxed network input. Not normalised by
  a mean/std: YOLO-family detectors take [0, 1] pixels, and the 0.5 grey padding then means
  "no image" the same way for every set.
- ``targets``: a list of B dicts ``{"boxes": float32 [n, 4], "labels": int64 [n]}`` (n may be
  0), the format of torchmetrics' MeanAveragePrecision.

Box convention, everywhere in lowbit: ``x0, y0, x1, y1`` in continuous pixel coordinates of the
S x S input, where pixel (row r, column c) covers [c, c + 1) x [r, r + 1). A box around pixel
columns 3..7 is therefore x0 = 3, x1 = 8; with this convention resizing is a plain scale and a
horizontal flip maps x to S - x, both exact (COCO's boxes use it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from lowbit.data.base import SplitLoaders, check_int
from lowbit.errors import ConfigError

Target = dict[str, torch.Tensor]

PAD_GREY = 0.5  # letterbox padding, the middle of the [0, 1] pixel range
STRIDE = 32  # the largest stride of the YOLO heads: the input side must be a multiple of it


def letterbox(
    image: torch.Tensor,
    boxes: torch.Tensor,
    size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` float [3, H, W] resized to fit a ``size`` x ``size`` square, aspect kept.

    The image is scaled by min(size/H, size/W) (bilinear, antialiased when shrinking), centred,
    and the rest is filled with 0.5 grey; ``boxes`` float [n, 4] xyxy in the pixels of ``image``
    come back scaled and shifted onto the same pixels of the square (per axis, with the scale of
    the rounded new side, so they stay exact) and clipped to it.
    """
    _, height, width = image.shape
    scale = min(size / height, size / width)
    new_height = min(size, max(1, round(height * scale)))
    new_width = min(size, max(1, round(width * scale)))
    if (new_height, new_width) != (height, width):
        image = F.interpolate(
            image[None],
            size=(new_height, new_width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )[0].clamp(0.0, 1.0)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    square = image.new_full((image.shape[0], size, size), PAD_GREY)
    square[:, top : top + new_height, left : left + new_width] = image
    factor = boxes.new_tensor([new_width / width, new_height / height] * 2)
    shift = boxes.new_tensor([left, top] * 2)
    return square, (boxes * factor + shift).clamp(0.0, float(size))


def horizontal_flip(
    image: torch.Tensor,
    boxes: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` [C, H, W] mirrored left-right, and ``boxes`` xyxy onto the same pixels.

    x maps to W - x, so the new x0 is W - x1 and the new x1 is W - x0.
    """
    return image.flip(-1), flip_boxes(boxes, image.shape[-1])


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """xyxy ``boxes`` of an image ``width`` pixels wide, mirrored left-right with it."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, Target]],
) -> tuple[torch.Tensor, list[Target]]:
    """DataLoader ``collate_fn``: images stacked to [B, 3, S, S], targets kept as a list.

    Images carry different numbers of boxes, so the targets cannot be stacked. The images are
    stacked by numpy (one copy, single-threaded): torch.stack's threads only add overhead here.
    """
    images, targets = zip(*batch)
    return torch.from_numpy(np.stack([image.numpy() for image in images])), list(targets)


def make_target(boxes: torch.Tensor, labels: torch.Tensor) -> Target:
    return {
        "boxes": boxes.to(torch.float32).reshape(-1, 4),
        "labels": labels.to(torch.int64).reshape(-1),
    }


def coin(probability: float) -> bool:
    """True with ``probability``, drawn from torch's global generator.

    In a DataLoader worker that generator is seeded by the loader from the main process's torch
    generator, which the run seed fixes, so the run seed decides every random flip.
    """
    return probability > 0 and bool(torch.rand(()) < probability)


def random_flip(
    image: torch.Tensor,
    boxes: torch.Tensor,
    probability: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``horizontal_flip`` with ``probability`` (see ``coin``)."""
    return horizontal_flip(image, boxes) if coin(probability) else (image, boxes)


class ImageFileDetections(Dataset):
    """Image files and their boxes, served letterboxed to ``size`` (VOC, COCO).

    The annotations are held flat (all boxes of all images in one array, ``offsets`` marking
    where each image's start), so the set pickles quickly into DataLoader workers; images are
    read from disk per item. ``boxes`` are xyxy in the pixels of the files, ``flip`` the
    probability of a random horizontal flip (0 for evaluation).
    """

    def __init__(
        self,
        paths: list[str],
        boxes: np.ndarray,
        labels: np.ndarray,
        offsets: np.ndarray,
        size: int,
        flip: float = 0.0,
    ):
        self.paths = paths
        self.boxes = boxes.astype(np.float32).reshape(-1, 4)
        self.labels = labels.astype(np.int64).reshape(-1)
        self.offsets = offsets.astype(np.int64)
        self.size = size
        self.flip = flip

    def __len__(self) -> int:
        return len(self.paths)

    def annotations(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes (xyxy, file pixels) and labels of image ``index``, untransformed."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        return (
            torch.from_numpy(self.boxes[start:stop].copy()),
            torch.from_numpy(self.labels[start:stop].copy()),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        with Image.open(self.paths[index]) as file:
            pixels = np.asarray(file.convert("RGB"))  # [H, W, 3] uint8
        image = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255)
        boxes, labels = self.annotations(index)
        image, boxes = letterbox(image, boxes, self.size)
        image, boxes = random_flip(image, boxes, self.flip)
        return image, make_target(boxes, labels)


def flatten(
    per_image: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (boxes [n, 4], labels [n]) as the flat arrays ``ImageFileDetections`` holds."""
    counts = [len(labels) for _, labels in per_image]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    boxes = np.concatenate([b.reshape(-1, 4) for b, _ in per_image] or [np.zeros((0, 4))])
    labels = np.concatenate([lab.reshape(-1) for _, lab in per_image] or [np.zeros(0)])
    return boxes.astype(np.float32), labels.astype(np.int64), offsets


class DetectionData(SplitLoaders, pl.LightningDataModule):
    """Base class of all detection sets: one train, one val and one test split.

    Subclasses set ``name``, ``num_classes`` and ``class_names`` and fill ``train_set``,
    ``val_set`` and ``test_set`` (datasets of ``(image, target)`` items) in ``setup``; the data
    loaders are built here with ``collate_detection``. Training items are flipped left-right at
    random with probability ``flip``; validation and test items are never augmented.

    Args:
        data_dir: where the set's files live (ignored by the sets generated in memory).
        batch_size: images per batch, for all three loaders.
        num_workers: DataLoader worker processes; 0 loads in the training process.
        seed: fixes the set's own splits and generation (not the run seed, which decides the
            shuffling and the flips).
        image_size: side S of the square network input, a multiple of 32 (YOLO's largest
            stride); every image is letterboxed to S x S.
        flip: probability of a random horizontal flip of a training image; 0 disables it.
    """

    name: str = "base"
    task: str = "detection"
    collate_fn = staticmethod(collate_detection)  # targets stay a list: boxes per image differ
    num_classes: int = 0
    image_shape: tuple[int, int, int] = (3, 416, 416)  # set from image_size per instance
    class_names: list[str] = []

    def __init__(
        self,
        data_dir: str = "",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 416,
        flip: float = 0.5,
    ):
        super().__init__()
        self.data_dir = Path(str(data_dir)).expanduser() if data_dir else Path(".")
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = check_int("seed", seed, 0)
        self.image_size = check_int("image_size", image_size, STRIDE)
        if self.image_size % STRIDE:
            raise ConfigError(
                f"dataset.image_size must be a multiple of {STRIDE} (the "
                f"detector's largest stride), got {image_size}"
            )
        self.image_shape = (3, self.image_size, self.image_size)
        if isinstance(flip, bool) or not isinstance(flip, (int, float)) or not 0 <= flip <= 1:
            raise ConfigError(f"dataset.flip must be a probability in [0, 1], got {flip!r}")
        self.flip = float(flip)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
