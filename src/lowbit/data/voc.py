"""PASCAL VOC 2007 / 2012 detection (20 classes), letterboxed to the network input.

Files sit where torchvision's ``VOCDetection`` puts them: ``data_dir/VOCdevkit/VOC<year>/``
with ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and ``ImageSets/Main/<image_set>.txt``;
a missing split is downloaded through ``VOCDetection(download=True)`` (the official tar and its
md5 as torchvision records them). Annotations are parsed once in ``check``/``setup`` and kept
in memory; images are read per item.

Choices:
- The default protocol is VOC2007's usual one: train on ``trainval`` (5,011 images), validate
  and test on ``test`` (4,952); VOC2012 has no public test annotations, so it uses ``val``.
- Objects marked ``difficult`` are dropped from the targets of every split (as YOLO's VOC
  conversions do). The official devkit instead ignores detections matched to them, so the
  mAP computed here on these targets is slightly lower than the devkit's.
- VOC's boxes are 1-based inclusive pixel indices; ``xmin - 1, ymin - 1, xmax, ymax`` are the
  pixel-edge coordinates of ``lowbit.data.detection``.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import numpy as np
from torchvision.datasets import VOCDetection

from lowbit.data.detection import DetectionData, ImageFileDetections, flatten
from lowbit.data.vision import DOWNLOAD_ERRORS, DOWNLOAD_SOCKET_TIMEOUT_S, socket_timeout
from lowbit.errors import ConfigError, one_line

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]
YEARS = ("2007", "2012")


class BadAnnotation(Exception):
    """An annotation file is not VOC XML; the reason ends up in a ConfigError naming it."""


def read_voc_xml(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Boxes float32 [n, 4] (pixel edges) and labels of the non-difficult objects of a file."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise BadAnnotation(f"{type(error).__name__}: {error}") from None
    boxes, labels = [], []
    for item in root.iter("object"):
        name = (item.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise BadAnnotation(f"unknown class {name!r}")
        if (item.findtext("difficult") or "0").strip() == "1":
            continue
        box = item.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise BadAnnotation(f"an object {name!r} without a numeric bndbox") from None
        boxes.append([x0 - 1, y0 - 1, x1, y1])
        labels.append(VOC_CLASSES.index(name))
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))


class VOCData(DetectionData):
    """PASCAL VOC detection, 20 classes, letterboxed to ``image_size`` (default 416).

    Args:
        download: fetch a missing split's archive in ``check``/``prepare_data``; false:
            missing files are an error.
        year: "2007" or "2012".
        train_image_set, val_image_set, test_image_set: the ImageSets/Main list of each split:
            "train", "val", "trainval", or "test" (2007 only).
        data_dir, batch_size, num_workers, seed, image_size, flip: see ``DetectionData``
            (``seed`` is unused: the image sets fix the splits).
    """

    name = "voc"
    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        image_size: int = 416,
        flip: float = 0.5,
        download: bool = True,
        year: str = "2007",
        train_image_set: str = "trainval",
        val_image_set: str = "test",
        test_image_set: str = "test",
    ):
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            image_size=image_size,
            flip=flip,
        )
        self.download = bool(download)
        self.year = str(year)
        if self.year not in YEARS:
            raise ConfigError(f"dataset.year must be one of {', '.join(YEARS)}, got {year!r}")
        allowed = ("train", "val", "trainval") + (("test",) if self.year == "2007" else ())
        self.image_sets = (train_image_set, val_image_set, test_image_set)
        for key, image_set in zip(("train", "val", "test"), self.image_sets):
            if image_set not in allowed:
                raise ConfigError(
                    f"dataset.{key}_image_set must be one of {', '.join(allowed)}"
                    f" for VOC{self.year}, got {image_set!r}"
                )
        self.root = self.data_dir / "VOCdevkit" / f"VOC{self.year}"
        self._records: dict[str, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = {}

    def _ids(self, image_set: str) -> list[str] | None:
        """The image ids the set's list names, or None if the list is missing."""
        path = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
        if not path.is_file():
            return None
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]

    def _missing(self, image_set: str) -> str | None:
        """What is missing of an image set (a file, or a count of them), or None."""
        ids = self._ids(image_set)
        if ids is None:
            return str(self.root / "ImageSets" / "Main" / f"{image_set}.txt")
        missing = [
            path
            for id_ in ids
            for path in (
                self.root / "JPEGImages" / f"{id_}.jpg",
                self.root / "Annotations" / f"{id_}.xml",
            )
            if not path.is_file()
        ]
        if missing:
            return f"{len(missing)} files listed in {image_set}.txt, e.g. {missing[0]}"
        return None

    def _missing_error(self, what: str) -> ConfigError:
        hint = (
            f"delete {self.root} to download it again"
            if self.download
            else "set dataset.download=true"
        )
        return ConfigError(
            f"voc: {what} missing (VOC{self.year} under {self.data_dir}); "
            f"{hint}, or point dataset.data_dir at the folder holding VOCdevkit/"
        )

    def _fetch_missing(self) -> None:
        for image_set in dict.fromkeys(self.image_sets):
            missing = self._missing(image_set)
            if missing is None:
                continue
            if not self.download or self._ids(image_set) is not None:
                # A list that names absent files is a damaged tree, not a missing archive.
                raise self._missing_error(missing)
            try:
                with socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
                    VOCDetection(
                        str(self.data_dir), year=self.year, image_set=image_set, download=True
                    )
            except DOWNLOAD_ERRORS as error:
                raise ConfigError(
                    f"voc: download of VOC{self.year} {image_set} into {self.data_dir} failed "
                    f"({type(error).__name__}: {one_line(error)}); unpack the VOC{self.year} "
                    f"archives there by hand (VOCdevkit/VOC{self.year}/...), or fix the network "
                    f"and run again"
                ) from None
            missing = self._missing(image_set)
            if missing is not None:
                raise self._missing_error(missing)

    def _read(self, image_set: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Image paths and the flat boxes, labels, offsets of an image set (parsed once)."""
        if image_set not in self._records:
            ids = self._ids(image_set)
            if ids is None:
                raise self._missing_error(
                    str(self.root / "ImageSets" / "Main" / f"{image_set}.txt")
                )
            per_image = []
            for id_ in ids:
                path = self.root / "Annotations" / f"{id_}.xml"
                try:
                    per_image.append(read_voc_xml(path))
                except BadAnnotation as error:
                    raise ConfigError(
                        f"voc: {path} is not a VOC annotation ({one_line(error)});"
                        f" replace it with the official file"
                    ) from None
            paths = [str(self.root / "JPEGImages" / f"{id_}.jpg") for id_ in ids]
            self._records[image_set] = (paths, *flatten(per_image))
        return self._records[image_set]

    def prepare_data(self) -> None:
        self._fetch_missing()

    def check(self) -> None:
        """Every listed image and annotation present (downloading if allowed), all parsed."""
        self._fetch_missing()
        for image_set in dict.fromkeys(self.image_sets):
            self._read(image_set)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for image_set in dict.fromkeys(self.image_sets):
            missing = self._missing(image_set)
            if missing is not None:
                raise self._missing_error(missing)
        train, val, test = (
            ImageFileDetections(
                *self._read(image_set), size=self.image_size, flip=self.flip if split == 0 else 0.0
            )
            for split, image_set in enumerate(self.image_sets)
        )
        self.train_set, self.val_set, self.test_set = train, val, test
