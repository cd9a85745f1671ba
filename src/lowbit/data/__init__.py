"""Image classification data sets as Lightning data modules, all sharing ``ClassificationData``.

``digits`` and ``shapes`` live in memory and need no files (the offline defaults); the sets in
``vision`` read the official files of CIFAR-10/100, SVHN, (Fashion-)MNIST or an ImageNet-style
folder under ``data_dir``.
"""

from __future__ import annotations

from lowbit.data.base import ClassificationData
from lowbit.data.digits import DigitsData
from lowbit.data.shapes import ShapesData
from lowbit.data.vision import (CIFAR10Data, CIFAR100Data, FashionMNISTData, ImageFolderData,
                                MNISTData, SVHNData)

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
]
