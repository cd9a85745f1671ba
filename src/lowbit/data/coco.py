"""COCO-format detection: a JSON annotation file and an image folder per split, letterboxed.

Reads the JSON with the standard library (pycocotools is not needed); any set in the COCO
format works, COCO 2017 itself by default (``annotations/instances_{train,val}2017.json`` and
``{train,val}2017/`` under ``data_dir``, from https://cocodataset.org/#download; not
downloaded automatically). The val split is also the test split (COCO's test labels are not
public).

Choices:
- Category ids (COCO's run 1..90 with gaps) become labels 0..C-1 in sorted id order, and
  ``class_names`` are the categories' names in that order. Train and val must list the same
  categories. ``num_classes`` is a constructor argument because the model is built before any
  file is read; ``check()`` compares it with the file.
- Boxes: COCO's ``[x, y, width, height]`` (pixel-edge coordinates) become ``x, y, x + w,
  y + h``, clipped to the image; crowd annotations (``iscrowd: 1``) and boxes without area are
  dropped. Images without any box are kept, with empty targets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lowbit.data.base import check_int
from lowbit.data.detection import DetectionData, ImageFileDetections, flatten
from lowbit.errors import ConfigError, one_line

COCO_DOWNLOAD = "https://cocodataset.org/#download"


class BadAnnotations(Exception):
    """The JSON is not in the COCO format; the reason ends up in a ConfigError naming it."""


def read_coco_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, ValueError) as error:
        raise BadAnnotations(f"{type(error).__name__}: {error}") from None
    if not isinstance(content, dict) or not all(
        isinstance(content.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise BadAnnotations("no 'images', 'annotations' and 'categories' lists")
    return content


def coco_categories(content: dict) -> tuple[list[int], list[str]]:
    """Category ids in sorted order and their names."""
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in content["categories"])
    except (KeyError, TypeError, ValueError):
        raise BadAnnotations("a category without an integer 'id' and a 'name'") from None
    if not categories:
        raise BadAnnotations("no categories")
    return [id_ for id_, _ in categories], [name for _, name in categories]


def coco_targets(
    content: dict,
    category_ids: list[int],
) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """File names and per-image (boxes xyxy float32 [n, 4], labels int64 [n]), in file order."""
    label_of = {id_: label for label, id_ in enumerate(category_ids)}
    try:
        images = [
            (int(image["id"]), str(image["file_name"]), image.get("width"), image.get("height"))
            for image in content["images"]
        ]
    except (KeyError, TypeError, ValueError):
        raise BadAnnotations("an image without an integer 'id' and a 'file_name'") from None
    index_of = {id_: index for index, (id_, *_) in enumerate(images)}
    boxes: list[list[list[float]]] = [[] for _ in images]
    labels: list[list[int]] = [[] for _ in images]
    for annotation in content["annotations"]:
        try:
            if annotation.get("iscrowd", 0):
                continue
            index = index_of[int(annotation["image_id"])]
            label = label_of[int(annotation["category_id"])]
            x, y, width, height = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError):
            raise BadAnnotations(
                f"annotation {annotation.get('id')!r} names an unknown image "
                f"or category, or has no [x, y, w, h] bbox"
            ) from None
        _, _, image_width, image_height = images[index]
        x0, y0, x1, y1 = x, y, x + width, y + height
        if image_width and image_height:
            x0, x1 = (min(max(v, 0.0), float(image_width)) for v in (x0, x1))
            y0, y1 = (min(max(v, 0.0), float(image_height)) for v in (y0, y1))
        if x1 > x0 and y1 > y0:
            boxes[index].append([x0, y0, x1, y1])
            labels[index].append(label)
    per_image = [
        (np.asarray(b, dtype=np.float32).reshape(-1, 4), np.asarray(lab, dtype=np.int64))
        for b, lab in zip(boxes, labels)
    ]
    return [name for _, name, *_ in images], per_image


class COCOData(DetectionData):
    """COCO-format detection (80 classes for COCO 2017), letterboxed to ``image_size``.

    Args:
        num_classes: the number of categories in the annotation files (80 for COCO); given
            here because the model is built first, checked against the files by ``check()``.
        train_annotation_file, train_image_dir, val_annotation_file, val_image_dir: the JSON
            file and the image folder of each split, relative to ``data_dir`` (or absolute).
        data_dir, batch_size, num_workers, seed, image_size, flip: see ``DetectionData``
            (``seed`` is unused: the files fix the splits).
    """

    name = "coco"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 416,
        flip: float = 0.5,
        num_classes: int = 80,
        train_annotation_file: str = "annotations/instances_train2017.json",
        train_image_dir: str = "train2017",
        val_annotation_file: str = "annotations/instances_val2017.json",
        val_image_dir: str = "val2017",
    ):
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            image_size=image_size,
            flip=flip,
        )
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.class_names: list[str] = []
        self.files = {
            "train": (self.data_dir / train_annotation_file, self.data_dir / train_image_dir),
            "val": (self.data_dir / val_annotation_file, self.data_dir / val_image_dir),
        }
        self._records: dict[str, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = {}

    def _missing_error(self, path: Path) -> ConfigError:
        return ConfigError(
            f"coco: {path} is missing; get the COCO images and annotations from "
            f"{COCO_DOWNLOAD} and unpack them under {self.data_dir}, or set "
            f"dataset.data_dir and the dataset.*_annotation_file/*_image_dir paths"
        )

    def _read(self, split: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Image paths and flat boxes, labels, offsets of a split; validates it on first use."""
        if split in self._records:
            return self._records[split]
        annotation_file, image_dir = self.files[split]
        if not annotation_file.is_file():
            raise self._missing_error(annotation_file)
        if not image_dir.is_dir():
            raise self._missing_error(image_dir)
        try:
            content = read_coco_json(annotation_file)
            category_ids, names = coco_categories(content)
            file_names, per_image = coco_targets(content, category_ids)
        except BadAnnotations as error:
            raise ConfigError(
                f"coco: {annotation_file} is not a COCO annotation file "
                f"({one_line(error)}); replace it with the official one"
            ) from None
        if len(names) != self.num_classes:
            raise ConfigError(
                f"coco: {annotation_file} has {len(names)} categories but dataset.num_classes="
                f"{self.num_classes}; set dataset.num_classes={len(names)}"
            )
        if self.class_names and names != self.class_names:
            raise ConfigError(
                f"coco: {annotation_file} lists other categories than the "
                f"{'train' if split == 'val' else 'val'} annotations; both splits "
                f"must share one category list"
            )
        self.class_names = names
        present = set(os.listdir(image_dir))
        absent = [
            name for name in file_names if name not in present and not (image_dir / name).is_file()
        ]
        if absent:
            raise ConfigError(
                f"coco: {len(absent)} images named in {annotation_file} are not in "
                f"{image_dir} (e.g. {absent[0]}); unpack the split's images there"
            )
        paths = [str(image_dir / name) for name in file_names]
        self._records[split] = (paths, *flatten(per_image))
        return self._records[split]

    def check(self) -> None:
        """Both splits' files present, the JSON valid, its categories = num_classes."""
        for split in self.files:
            self._read(split)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set = ImageFileDetections(
            *self._read("train"), size=self.image_size, flip=self.flip
        )
        self.val_set = ImageFileDetections(*self._read("val"), size=self.image_size)
        self.test_set = self.val_set
