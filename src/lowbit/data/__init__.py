"""Image classification data sets as Lightning data modules, all sharing ``ClassificationData``.

``digits`` and ``shapes`` live in memory and need no files (the offline defaults); the sets in
``vision`` read the official files of CIFAR-10/100, SVHN, (Fashion-)MNIST or an ImageNet-style
folder under ``data_dir``.

Object detection sets share ``DetectionData`` (``lowbit.data.detection``): ``shapes_det`` is
generated in memory (the offline default), ``voc`` and ``coco`` read the official files.
"""

from __future__ import annotations

from lowbit.data.base import ClassificationData
from lowbit.data.coco import COCOData
from lowbit.data.detection import DetectionData, collate_detection
from lowbit.data.digits import DigitsData
from lowbit.data.shapes import ShapesData
from lowbit.data.shapes_det import ShapesDetData
from lowbit.data.vision import (
    CIFAR10Data,
    CIFAR100Data,
    FashionMNISTData,
    ImageFolderData,
    MNISTData,
    SVHNData,
)
from lowbit.data.voc import VOCData

__all__ = [
    "ClassificationData",
    "DigitsData",
    "ShapesData",
    "CIFAR10Data",
    "CIFAR100Data",
    "SVHNData",
    "MNISTData",
    "FashionMNISTData",
    "ImageFolderData",
    "DetectionData",
    "collate_detection",
    "ShapesDetData",
    "VOCData",
    "COCOData",
]
