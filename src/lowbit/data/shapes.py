"""Procedurally drawn coloured shapes: a 10-class 32x32 RGB set, harder than digits, offline.

Each image is one filled shape in a random colour on a random background colour, at a random
size, position and slight rotation, plus Gaussian pixel noise. Colour carries no information
about the class, so a model has to learn the outline. Everything is drawn at once from
coordinate grids with numpy (no per-image loop), so the default 7,000 images take well under a
second, and the same ``seed`` gives bit-identical tensors on every machine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lowbit.data.base import BuiltInMemory, ClassificationData, check_int

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Each shape as a test on the shape's own coordinates (u right, v down), in units of its size,
# so that |u|, |v| <= 1 is the bounding box. Rotation stays within +-15 degrees, so no class can
# turn into another: the square, the diamond (its 45-degree turn), the plus and the x stay
# 30 degrees apart, and the bars stay horizontal or vertical.
SHAPES: dict[str, Mask] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    # Apex at the top (v = -0.9), flat base at v = 0.6.
    "triangle": lambda u, v: (v <= 0.6) & (np.abs(u) <= 0.6 * (v + 0.9)),
    "plus": lambda u, v: (
        ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    ),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "horizontal_bar": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3),
    "vertical_bar": lambda u, v: (np.abs(u) <= 0.3) & (np.abs(v) <= 1.0),
    "x": lambda u, v: SHAPES["plus"]((u + v) / np.sqrt(2.0), (u - v) / np.sqrt(2.0)),
    "frame": lambda u, v: (
        (np.maximum(np.abs(u), np.abs(v)) <= 0.9) & (np.maximum(np.abs(u), np.abs(v)) >= 0.5)
    ),
}

MIN_RADIUS, MAX_RADIUS = 6.0, 13.0  # half the shape's box, in pixels
MAX_ROTATION = np.deg2rad(15.0)
MIN_COLOUR_DISTANCE = 0.5  # RGB distance between shape and background, so the shape is visible
NOISE_STD = 0.06


def draw_shapes(
    count: int,
    seed: np.random.SeedSequence,
    size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images float32 [N, 3, size, size] in [0, 1] and their int64 labels.

    Classes are exactly balanced (N mod 10 aside) and shuffled.
    """
    rng = np.random.default_rng(seed)
    num_classes = len(SHAPES)
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int64)
    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS, count).astype(np.float32)
    # Centres keep the whole box (radius, plus a pixel of margin) inside the image.
    free = (size - 1) - 2 * (radius + 1)
    centre_x = radius + 1 + rng.random(count, dtype=np.float32) * free
    centre_y = radius + 1 + rng.random(count, dtype=np.float32) * free
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION, count).astype(np.float32)
    background = rng.random((count, 3), dtype=np.float32)
    foreground = rng.random((count, 3), dtype=np.float32)
    while True:  # redraw shape colours too close to their background; a few rounds at most
        too_close = np.linalg.norm(foreground - background, axis=1) < MIN_COLOUR_DISTANCE
        if not too_close.any():
            break
        foreground[too_close] = rng.random((int(too_close.sum()), 3), dtype=np.float32)

    # Pixel centres relative to each shape's centre, turned by its angle, in units of radius.
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = cols[None] - centre_x[:, None, None]
    dy = rows[None] - centre_y[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / radius[:, None, None]
    v = (-sin * dx + cos * dy) / radius[:, None, None]
    mask = np.zeros((count, size, size), dtype=bool)
    for label, inside in enumerate(SHAPES.values()):
        chosen = labels == label
        mask[chosen] = inside(u[chosen], v[chosen])

    images = np.where(mask[:, None], foreground[:, :, None, None], background[:, :, None, None])
    images += NOISE_STD * rng.standard_normal(images.shape, dtype=np.float32)
    return np.clip(images, 0.0, 1.0).astype(np.float32), labels


class ShapesData(BuiltInMemory, ClassificationData):
    """Ten generated shape classes, 32x32x3, normalised with the train split's channel stats.

    The three splits are drawn from independent child seeds of ``seed`` (numpy's SeedSequence
    spawning), so they never share an image, and changing one split's size does not redraw
    the others (their normalisation follows the train split, though).

    Args:
        train_size, val_size, test_size: images per split.
        data_dir, batch_size, num_workers, seed: see ``ClassificationData``.
    """

    name = "shapes"
    num_classes = len(SHAPES)
    image_shape = (3, 32, 32)
    class_names = list(SHAPES)

    def __init__(
        self,
        data_dir: str = "",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        train_size: int = 5000,
        val_size: int = 1000,
        test_size: int = 1000,
    ):
        super().__init__(
            data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed
        )
        self.train_size = check_int("train_size", train_size, 1)
        self.val_size = check_int("val_size", val_size, 1)
        self.test_size = check_int("test_size", test_size, 1)
        self.mean = self.std = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        seeds = np.random.SeedSequence(self.seed).spawn(3)
        sizes = (self.train_size, self.val_size, self.test_size)
        splits = [
            draw_shapes(size, split_seed, self.image_shape[1])
            for size, split_seed in zip(sizes, seeds)
        ]
        train_images = torch.from_numpy(splits[0][0])
        self.mean = train_images.mean(dim=(0, 2, 3), keepdim=True)[0]
        self.std = train_images.std(dim=(0, 2, 3), keepdim=True)[0]
        train, val, test = (
            TensorDataset(
                (torch.from_numpy(images) - self.mean) / self.std, torch.from_numpy(labels)
            )
            for images, labels in splits
        )
        self.train_set, self.val_set, self.test_set = train, val, test
