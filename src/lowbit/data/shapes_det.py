"""Procedurally drawn scenes of coloured shapes with their boxes: the offline detection set.

Each image holds ``min_objects``..``max_objects`` filled shapes (the masks of
``lowbit.data.shapes.SHAPES``: circle, square, triangle, plus, ring, ...) at random sizes,
positions, colours and slight rotations, on a background of one random colour with a random
linear brightness ramp and uniform pixel noise. Kept clean enough for YOLOv3-tiny at 128 x 128:

- every object's colour is at least ``MIN_COLOUR_DISTANCE`` (RGB) from its image's background
  colour, and the ramp and the noise are much smaller than that;
- objects never share a pixel, and the intersection of two boxes stays below ``MAX_OVERLAP``
  of the smaller one (so the IoU does too, and no object sits in another's box, such as a
  ring's hole): an object that breaks either rule is redrawn (class, size, place, colour), so
  every object is fully visible. Redraws shrink the largest size allowed, so that crowded
  images still find room; the sizes are uniform otherwise;
- each box is the tight box of the object's drawn mask, so it is exact, and the whole shape
  stays inside the image.

Everything is drawn with numpy, a chunk of images at a time, looping only over the object
slots of an image (and the redraws); each shape is computed only inside the window that holds
it. The default 2,400 images at 128 x 128 take about 1-2 s on one core; the same ``seed`` gives
the same uint8 pixels on every machine. Nothing is cached on disk.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lowbit.data.base import BuiltInMemory, check_int
from lowbit.data.detection import DetectionData, Target, coin, flip_boxes, make_target
from lowbit.data.shapes import SHAPES
from lowbit.errors import ConfigError

MAX_ROTATION = np.deg2rad(15.0)  # as in shapes.py: no shape turns into another
# How far the rotated shapes reach from their centre, in units of the radius (the frame's
# corner, 0.9 * sqrt(2) * cos(30 deg) ~ 1.10, is the farthest): centres keep it inside.
MAX_EXTENT = 1.15
MIN_COLOUR_DISTANCE = 0.5  # RGB distance between an object and its background colour
RAMP = 0.2  # background ramp: brightness changes by up to RAMP per image side along it
NOISE_STD = 0.04  # of the uniform pixel noise
MAX_OVERLAP = 0.3  # intersection over the smaller box; objects overlapping more are redrawn
MAX_REDRAWS = 100  # per object slot; reached only when the objects cannot fit the image
SHRINK_AFTER = 50  # redraws after which a redrawn object gets the smallest size
CHUNK = 256  # images drawn at once: bounds the memory of the float canvases
MIN_DIAMETER_PX = 8  # smaller shapes lose their outline


def box_overlap(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over the smaller box's area, of boxes [m, 4] with boxes [m, k, 4] (xyxy).

    An upper bound of the IoU that also catches a small box nested in a big one (a circle in a
    ring's hole), which the IoU would let through.
    """
    x0 = np.maximum(box[:, None, 0], others[..., 0])
    y0 = np.maximum(box[:, None, 1], others[..., 1])
    x1 = np.minimum(box[:, None, 2], others[..., 2])
    y1 = np.minimum(box[:, None, 3], others[..., 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    others_area = (others[..., 2] - others[..., 0]) * (others[..., 3] - others[..., 1])
    return inter / np.minimum(area[:, None], others_area)


def mask_boxes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes [m, 4] of masks [m, H, W] (pixel edges), and which masks are non-empty."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    y0, x0 = rows.argmax(axis=1), cols.argmax(axis=1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(axis=1)
    x1 = masks.shape[2] - cols[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32), rows.any(axis=1)


def windows(array: np.ndarray, side: int) -> np.ndarray:
    """A writable view [N, H - side + 1, W - side + 1, ..., side, side] of ``array`` [N, ..., H, W]:
    item [i, top, left] is the side x side window of image i at (top, left)."""
    *lead, height, width = array.shape
    strides = array.strides
    return np.lib.stride_tricks.as_strided(
        array,
        shape=(lead[0], height - side + 1, width - side + 1, *lead[1:], side, side),
        strides=(strides[0], strides[-2], strides[-1], *strides[1:-2], strides[-2], strides[-1]),
    )


class Objects(NamedTuple):
    """Shapes drawn in windows: masks bool [m, w, w] whose top-left pixel is (top, left)."""

    masks: np.ndarray
    top: np.ndarray
    left: np.ndarray
    labels: np.ndarray

    def rows(self) -> np.ndarray:
        return self.top[:, None] + np.arange(self.masks.shape[1])

    def cols(self) -> np.ndarray:
        return self.left[:, None] + np.arange(self.masks.shape[2])

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """Tight boxes in image pixels, and which masks are non-empty."""
        boxes, non_empty = mask_boxes(self.masks)
        return boxes + np.stack([self.left, self.top] * 2, axis=1), non_empty


def draw_objects(
    rng: np.random.Generator,
    count: int,
    size: int,
    num_classes: int,
    radius_range: tuple[float, float],
) -> Objects:
    """``count`` random shapes, each in the square window of the image that holds it.

    Only the window (side 2.3 x the largest radius) is computed, not the whole image: the masks
    are the bulk of the generation time.
    """
    labels = rng.integers(0, num_classes, count)
    radius = rng.uniform(*radius_range, count).astype(np.float32)
    margin = MAX_EXTENT * radius + 1
    centre_x = margin + rng.random(count, dtype=np.float32) * (size - 2 * margin)
    centre_y = margin + rng.random(count, dtype=np.float32) * (size - 2 * margin)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION, count).astype(np.float32)
    window = min(size, 2 * int(np.ceil(MAX_EXTENT * radius_range[1])) + 2)
    top = np.clip(np.floor(centre_y - window / 2), 0, size - window).astype(np.int64)
    left = np.clip(np.floor(centre_x - window / 2), 0, size - window).astype(np.int64)
    # Pixel centres relative to the shape's centre, turned by its angle, in units of radius.
    offsets = np.arange(window, dtype=np.float32) + 0.5
    dx = (left[:, None] + offsets - centre_x[:, None])[:, None, :]
    dy = (top[:, None] + offsets - centre_y[:, None])[:, :, None]
    cos, sin = (np.cos(angle) / radius)[:, None, None], (np.sin(angle) / radius)[:, None, None]
    u = cos * dx + sin * dy  # [m, 1, w] + [m, w, 1]: one pass over the windows
    v = cos * dy - sin * dx
    masks = np.zeros((count, window, window), dtype=bool)
    for label, inside in enumerate(list(SHAPES.values())[:num_classes]):
        chosen = labels == label
        if chosen.any():
            masks[chosen] = inside(u[chosen], v[chosen])
    return Objects(masks, top, left, labels)


def contrasting_colours(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """Random RGB colours [m, 3], each at least MIN_COLOUR_DISTANCE from its background row."""
    colours = rng.random(background.shape, dtype=np.float32)
    while True:  # a few rounds at most: about 3/4 of random colours are far enough
        too_close = np.linalg.norm(colours - background, axis=1) < MIN_COLOUR_DISTANCE
        if not too_close.any():
            return colours
        colours[too_close] = rng.random((int(too_close.sum()), 3), dtype=np.float32)


def draw_scenes(
    count: int,
    seed: np.random.SeedSequence,
    size: int = 128,
    num_classes: int = 5,
    min_objects: int = 1,
    max_objects: int = 4,
    min_object_size: float = 0.125,
    max_object_size: float = 0.5,
    ramp: float = RAMP,
    noise_std: float = NOISE_STD,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``count`` scenes: uint8 images [N, 3, S, S], and per image its boxes and labels.

    Boxes are float32 [n, 4] xyxy (pixel edges, see ``lowbit.data.detection``), the tight boxes
    of the drawn masks; labels int64 [n] index the first ``num_classes`` shapes of ``SHAPES``.
    Object sizes are diameters (twice the shape's radius) as fractions of ``size``. ``ramp``
    and ``noise_std`` exist so that tests can draw flat, noise-free scenes.
    """
    rng = np.random.default_rng(seed)
    radius_range = (min_object_size * size / 2, max_object_size * size / 2)
    position = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5  # -0.5..0.5 across
    noise_levels = round(noise_std * np.sqrt(3.0) * 255)  # uniform noise of that std, in 1/255
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    all_boxes: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        objects = rng.integers(min_objects, max_objects + 1, n)
        base = rng.random((n, 3), dtype=np.float32)
        direction = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        strength = rng.uniform(-ramp, ramp, n).astype(np.float32)
        # The background: its colour plus a linear brightness ramp (a sum of a row and a
        # column term), the same for the three channels.
        ramp_x = (strength * np.cos(direction))[:, None] * position
        ramp_y = (strength * np.sin(direction))[:, None] * position
        # Kept as 255 x value + 0.5 - noise_levels: adding the noise, clipping to 0..255 and
        # truncating to uint8 then round the pixels (see the end of the loop).
        offset = 0.5 - noise_levels
        canvas = (
            (255 * base[:, :, None, None] + offset)
            + 255 * ramp_y[:, None, :, None]
            + 255 * ramp_x[:, None, None, :]
        )
        occupied = np.zeros((n, size, size), dtype=bool)
        boxes = np.full((n, max_objects, 4), np.nan, dtype=np.float32)
        labels = np.full((n, max_objects), -1, dtype=np.int64)
        for slot in range(max_objects):
            pending = np.flatnonzero(objects > slot)
            for attempt in range(MAX_REDRAWS):
                if not len(pending):
                    break
                # Redraws shrink the largest allowed size, so that an object finds room in a
                # crowded image (at SHRINK_AFTER redraws only the smallest size is drawn).
                shrink = min(1.0, attempt / SHRINK_AFTER)
                upper = radius_range[1] - shrink * (radius_range[1] - radius_range[0])
                drawn = draw_objects(rng, len(pending), size, num_classes, (radius_range[0], upper))
                drawn_boxes, non_empty = drawn.boxes()
                overlap = box_overlap(drawn_boxes, boxes[pending, :slot]) >= MAX_OVERLAP
                # Windows as strided views (one image per window, so no two alias): plain
                # slicing per item, several times faster than fancy-indexing every pixel.
                side = drawn.masks.shape[1]
                occupied_windows = windows(occupied, side)
                fits = (
                    non_empty
                    & ~overlap.any(axis=1)
                    & ~(drawn.masks & occupied_windows[pending, drawn.top, drawn.left]).any(
                        axis=(1, 2)
                    )
                )
                placed, masks = pending[fits], drawn.masks[fits]
                where = (placed, drawn.top[fits], drawn.left[fits])
                occupied_windows[where] |= masks
                canvas_windows = windows(canvas, side)  # [n, ..., 3, w, w]
                colours = contrasting_colours(rng, base[placed])
                canvas_windows[where] = np.where(
                    masks[:, None], 255 * colours[:, :, None, None] + offset, canvas_windows[where]
                )
                boxes[placed, slot] = drawn_boxes[fits]
                labels[placed, slot] = drawn.labels[fits]
                pending = pending[~fits]
            if len(pending):
                raise ConfigError(
                    f"shapes_det: cannot fit {max_objects} objects of up to "
                    f"{max_object_size:g} x image_size without overlap into {size} x {size} "
                    f"images; lower dataset.max_objects or dataset.max_object_size, or raise "
                    f"dataset.image_size"
                )
        # Uniform noise of -noise_levels..noise_levels (the offset above), then to uint8.
        if noise_levels:
            canvas += rng.integers(0, 2 * noise_levels + 1, canvas.shape, dtype=np.uint8)
        np.clip(canvas, 0.0, 255.0, out=canvas)
        images[start : start + n] = canvas  # truncating x + 0.5 rounds x
        for image in range(n):
            kept = labels[image] >= 0
            all_boxes.append(boxes[image, kept])
            all_labels.append(labels[image, kept])
    return images, all_boxes, all_labels


class SceneSet(Dataset):
    """uint8 images [N, 3, S, S] with their boxes, served as [0, 1] floats, flipped at random."""

    def __init__(
        self,
        images: torch.Tensor,
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        flip: float = 0.0,
    ):
        self.images = images
        self.boxes = boxes
        self.labels = labels
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        # The pixels go through numpy: torch's threaded kernels cost more than they save on one
        # small image, and far more when the cores are busy (the loader runs in the training
        # process by default).
        pixels = self.images[index].numpy()
        boxes = self.boxes[index].clone()
        if coin(self.flip):
            pixels, boxes = pixels[:, :, ::-1], flip_boxes(boxes, pixels.shape[-1])
        image = torch.from_numpy(pixels.astype(np.float32) / 255)
        return image, make_target(boxes, self.labels[index].clone())


def check_fraction(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ConfigError(f"dataset.{name} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


class ShapesDetData(BuiltInMemory, DetectionData):
    """Generated scenes of 1..4 shapes (5 classes by default), boxes exact, fully offline.

    The three splits are drawn from independent child seeds of ``seed`` (numpy's SeedSequence
    spawning, as in ``ShapesData``), so they never share an image and changing one split's size
    does not redraw the others. Stored as uint8 in memory (about 100 MB for the defaults).

    Args:
        image_size: side of the square images, a multiple of 32; object sizes scale with it.
        num_classes: how many of the shapes of ``lowbit.data.shapes.SHAPES`` to use, in its
            order (circle, square, triangle, plus, ring, diamond, bars, x, frame); 1..10.
        min_objects, max_objects: objects per image, drawn uniformly in this range.
        min_object_size, max_object_size: range of the shapes' diameters (twice their radius,
            about their box side) as fractions of ``image_size``; 0.125..0.5 is 16..64 px at 128.
        train_size, val_size, test_size: images per split.
        data_dir, batch_size, num_workers, seed, flip: see ``DetectionData``.
    """

    name = "shapes_det"

    def __init__(
        self,
        data_dir: str = "",
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 128,
        flip: float = 0.5,
        num_classes: int = 5,
        min_objects: int = 1,
        max_objects: int = 4,
        min_object_size: float = 0.125,
        max_object_size: float = 0.5,
        train_size: int = 2000,
        val_size: int = 200,
        test_size: int = 200,
    ):
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            image_size=image_size,
            flip=flip,
        )
        if (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, int)
            or not 1 <= num_classes <= len(SHAPES)
        ):
            raise ConfigError(
                f"dataset.num_classes must be 1..{len(SHAPES)} (the shapes in "
                f"lowbit.data.shapes.SHAPES), got {num_classes!r}"
            )
        self.num_classes = num_classes
        self.class_names = list(SHAPES)[:num_classes]
        self.min_objects = check_int("min_objects", min_objects, 0)
        self.max_objects = check_int("max_objects", max_objects, 1)
        if self.min_objects > self.max_objects:
            raise ConfigError(
                f"dataset.min_objects={min_objects} exceeds dataset.max_objects={max_objects}"
            )
        # Up to 0.8: a shape reaches 1.15 radii from its centre, and must fit with a margin.
        self.max_object_size = check_fraction("max_object_size", max_object_size, 0.0, 0.8)
        self.min_object_size = check_fraction(
            "min_object_size", min_object_size, 0.0, self.max_object_size
        )
        smallest = self.min_object_size * self.image_size
        if smallest < MIN_DIAMETER_PX:
            raise ConfigError(
                f"dataset.min_object_size={min_object_size} is {smallest:g} px at "
                f"image_size={self.image_size}; shapes need at least "
                f"{MIN_DIAMETER_PX} px"
            )
        self.train_size = check_int("train_size", train_size, 1)
        self.val_size = check_int("val_size", val_size, 1)
        self.test_size = check_int("test_size", test_size, 1)

    def draw(self, split: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The scenes of split 0 (train), 1 (val) or 2 (test)."""
        seeds = np.random.SeedSequence(self.seed).spawn(3)
        size = (self.train_size, self.val_size, self.test_size)[split]
        return draw_scenes(
            size,
            seeds[split],
            self.image_size,
            self.num_classes,
            self.min_objects,
            self.max_objects,
            self.min_object_size,
            self.max_object_size,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        splits = []
        for split in range(3):
            images, boxes, labels = self.draw(split)
            splits.append(
                SceneSet(
                    torch.from_numpy(images),
                    [torch.from_numpy(b) for b in boxes],
                    [torch.from_numpy(lab) for lab in labels],
                    flip=self.flip if split == 0 else 0.0,
                )
            )
        self.train_set, self.val_set, self.test_set = splits
