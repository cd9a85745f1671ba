"""The real image sets (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST, an ImageNet-style folder).

Files sit under ``data_dir`` exactly where torchvision's own dataset classes put them, and
downloads go through torchvision's download helpers with the URLs and archive checksums its
classes record, so a ``data_dir`` is interchangeable with one torchvision filled.

Why lowbit reads the files itself instead of instantiating ``torchvision.datasets.CIFAR10`` and
friends: in torchvision 0.29 those classes (CIFAR, SVHN) accept a file only if its md5 equals
the official one, so a copy that is merely re-pickled - or the tiny files the tests write in the
official format - is refused with "Dataset not found or corrupted", and telling a missing file
from a damaged one is impossible from the outside. Reading the formats takes a few lines each,
gives one-line ``ConfigError`` messages naming the file, and lets the train and the held-out
val views share one array in memory instead of loading the split twice. The official md5s are
still used, as a fast path: a file whose md5 matches is trusted without being parsed in
``check()``, any other file is parsed and validated in full.
"""

from __future__ import annotations

import os
import pickle
import socket
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive, download_url

from lowbit.data.base import ClassificationData, check_int
from lowbit.data.faults import load_image
from lowbit.errors import ConfigError, one_line

# Normalisation constants, per RGB channel.
# CIFAR-10: the values of the widely used pytorch-cifar training scripts (kuangliu); the std is
# the mean per-image std, smaller than the pixel std (~0.247, 0.243, 0.261), kept so that
# results compare with the literature that used them.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
# CIFAR-100: its own train-set pixel statistics (as in weiaicunzai/pytorch-cifar100).
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)
# MNIST as in the PyTorch examples' MNIST script; Fashion-MNIST's train-set statistics. Both are
# the 28x28 statistics, used unchanged on the zero-padded 32x32 images.
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,) * 3, (0.3530,) * 3
# ImageNet, as torchvision's pretrained models expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

# A stalled connection must fail the pre-flight check, not hang it: urllib has no timeout of
# its own, so one is set for the duration of a download.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0
# What a failed download can raise: URLError/HTTPError/timeouts are OSErrors, torchvision
# raises RuntimeError on a checksum mismatch, and a truncated archive fails to extract with
# EOFError, a tarfile or a zlib error.
DOWNLOAD_ERRORS = (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError, zlib.error)


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class ArrayImages(Dataset):
    """uint8 images [N, H, W, C] (or [N, H, W] grayscale) and labels, served through ``transform``.

    Each item goes through PIL so that torchvision's usual PIL transforms apply unchanged. Two
    instances over the same arrays with different transforms share the memory.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class CorruptFile(Exception):
    """A file is present but not in the expected format; the reason ends up in a ConfigError."""

    def __init__(self, reason: str, path: Path | None = None):
        super().__init__(reason)
        self.path = path


def check_labels(labels: np.ndarray, count: int, low: int, high: int) -> np.ndarray:
    """``labels`` as int64 if there are ``count`` of them, all in [low, high]."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != count:
        raise CorruptFile(f"{count} images but {len(labels)} labels")
    if len(labels) and (labels.min() < low or labels.max() > high):
        raise CorruptFile(f"labels outside {low}..{high}")
    return labels.astype(np.int64)


class TrainTestData(ClassificationData):
    """A set published as a train and a test split: val is held out of train.

    ``val_size`` images of the official train split (chosen by ``seed``) become the validation
    split and are served with the evaluation transform; the official test split is the test
    split. ``val_size=0`` keeps all of train for training and validates on the test split
    (the val and test numbers are then the same thing).

    Subclasses say which files they need (``files``, relative to ``data_dir``), how to fetch
    them (``fetch``), how to validate them cheaply (``validate``, returning the number of train
    images) and how to read a split (``read``).

    Args:
        download: fetch missing files (in ``check``/``prepare_data``); false: missing files
            are an error.
        val_size: train images held out for validation; 0: validate on the test split.
        data_dir, batch_size, num_workers, seed: see ``ClassificationData``.
    """

    files: tuple[str, ...] = ()
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = True,
        val_size: int = 5000,
    ):
        super().__init__(
            data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed
        )
        self.download = bool(download)
        self.val_size = check_int("val_size", val_size, 0)

    # --- what each set provides ------------------------------------------------------------

    def fetch(self) -> None:
        """Download the missing files into ``data_dir`` (may raise any of DOWNLOAD_ERRORS)."""
        raise NotImplementedError

    def validate(self) -> int:
        """Raise CorruptFile (with ``path`` set) if a file is unreadable; else the train size."""
        raise NotImplementedError

    def read(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, H, W(, C)] and int64 labels of the train or the test split."""
        raise NotImplementedError

    def train_transform(self) -> Callable:
        return self.eval_transform()

    def eval_transform(self) -> Callable:
        return T.Compose([T.ToTensor(), T.Normalize(self.mean, self.std)])

    # --- shared machinery ------------------------------------------------------------------

    def missing_files(self) -> list[str]:
        return [name for name in self.files if not (self.data_dir / name).is_file()]

    def _missing_error(self, missing: list[str]) -> ConfigError:
        hint = "" if self.download else ", or set dataset.download=true"
        return ConfigError(
            f"{self.name}: {len(missing)} of its files missing under {self.data_dir} "
            f"(expected {', '.join(self.files)}); put them there{hint}"
        )

    def _corrupt_error(self, path: Path, reason: object) -> ConfigError:
        return ConfigError(
            f"{self.name}: {path} is unreadable or not in the {self.name} format "
            f"({one_line(reason)}); delete it and run with dataset.download=true, "
            f"or replace it with the official file"
        )

    def _fetch_missing(self) -> None:
        missing = self.missing_files()
        if not missing:
            return
        if not self.download:
            raise self._missing_error(missing)
        try:
            with socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
                self.fetch()
        except DOWNLOAD_ERRORS as error:
            raise ConfigError(
                f"{self.name}: download into {self.data_dir} failed "
                f"({type(error).__name__}: {one_line(error)}); put {', '.join(self.files)} "
                f"there by hand, or fix the network and run again"
            ) from None
        missing = self.missing_files()
        if missing:
            raise self._missing_error(missing)

    def _check_val_size(self, train_count: int) -> None:
        if self.val_size >= train_count:
            raise ConfigError(
                f"dataset.val_size={self.val_size} leaves no training images: the {self.name} "
                f"train split under {self.data_dir} has {train_count}; choose a smaller val_size"
            )

    def prepare_data(self) -> None:
        self._fetch_missing()

    def check(self) -> None:
        """Files present (downloading them if allowed), readable, and val_size fits."""
        self._fetch_missing()
        try:
            train_count = self.validate()
        except CorruptFile as error:
            raise self._corrupt_error(error.path or self.data_dir, error) from None
        self._check_val_size(train_count)

    def _read(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.read(train)
        except CorruptFile as error:
            raise self._corrupt_error(error.path or self.data_dir, error) from None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        missing = self.missing_files()
        if missing:
            raise self._missing_error(missing)
        train_images, train_labels = self._read(train=True)
        test_images, test_labels = self._read(train=False)
        self._check_val_size(len(train_labels))
        train_view = ArrayImages(train_images, train_labels, self.train_transform())
        eval_view = ArrayImages(train_images, train_labels, self.eval_transform())
        self.test_set = ArrayImages(test_images, test_labels, self.eval_transform())
        if self.val_size == 0:
            self.train_set, self.val_set = train_view, self.test_set
            return
        order = torch.randperm(
            len(train_labels), generator=torch.Generator().manual_seed(self.seed)
        )
        val_indices = order[: self.val_size].sort().values.tolist()
        train_indices = order[self.val_size :].sort().values.tolist()
        self.train_set = Subset(train_view, train_indices)
        self.val_set = Subset(eval_view, val_indices)


def parse_file(path: Path, parse: Callable[[Path], object]):
    """``parse(path)``, any failure of it turned into CorruptFile carrying ``path``.

    The files come from outside (a download, a copy, a user), so every exception of the parser
    - unpickling, .mat or header errors of any type - means "this file is not what it should
    be", which the caller reports as one ConfigError naming the file.
    """
    try:
        return parse(path)
    except Exception as error:  # noqa: BLE001 - see the docstring
        if isinstance(error, CorruptFile):
            raise CorruptFile(str(error), error.path or path) from None
        raise CorruptFile(f"{type(error).__name__}: {error}", path) from None


def is_official(path: Path, md5: str | None) -> bool:
    """True if ``path`` is byte-for-byte the published file (streamed, constant memory)."""
    return md5 is not None and calculate_md5(path) == md5


# --- CIFAR ----------------------------------------------------------------------------------


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays, nothing else.

    The CIFAR batches are pickles, and a pickle can run arbitrary code when loaded; a data
    directory is outside input, so only the globals a numpy array needs are allowed.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        # pickle protocol 5 rebuilds arrays from out-of-band-capable buffers
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        # Python 3 writes bytes under protocols 0-2 as _codecs.encode(str, "latin1")
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in the pickle")
        return super().find_class(module, name)


def load_cifar_pickle(path: Path) -> dict[str, object]:
    """One CIFAR python-version file as a dict with str keys.

    The official files are Python 2 pickles (latin1 keeps their numpy arrays intact); keys come
    out as str or bytes depending on who wrote the file, so both are accepted.
    """
    with open(path, "rb") as file:
        entry = NumpyOnlyUnpickler(file, encoding="latin1").load()
    if not isinstance(entry, dict):
        raise CorruptFile(f"expected a dict, found {type(entry).__name__}")
    return {
        (key.decode("latin1") if isinstance(key, bytes) else key): value
        for key, value in entry.items()
    }


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] and labels of one batch: rows are 1024 R, 1024 G, 1024 B."""
    entry = load_cifar_pickle(path)
    if "data" not in entry or label_key not in entry:
        raise CorruptFile(f"no 'data' or '{label_key}' entry")
    data = np.asarray(entry["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptFile(f"'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
    labels = check_labels(np.asarray(entry[label_key]), len(data), 0, num_classes - 1)
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_names(path: Path, key: str, num_classes: int) -> list[str]:
    entry = load_cifar_pickle(path)
    names = entry.get(key)
    if not isinstance(names, list) or len(names) != num_classes:
        raise CorruptFile(f"no list of {num_classes} names under '{key}'")
    return [name.decode("latin1") if isinstance(name, bytes) else str(name) for name in names]


class CIFAR10Data(TrainTestData):
    """CIFAR-10 (50,000 train, 10,000 test 32x32 colour images), in the python-pickle format.

    Files under ``data_dir/cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``, ``batches.meta`` (what the official archive unpacks to). Train images get
    the usual random 32-crop of the 4-pixel-padded image and a horizontal flip.
    """

    name = "cifar10"
    num_classes = 10
    image_shape = (3, 32, 32)
    class_names = CIFAR10_CLASSES
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    torchvision_class = tv_datasets.CIFAR10
    label_key = "labels"
    names_key = "label_names"
    train_count = 50_000  # of the official train files, for the md5 fast path

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = True,
        val_size: int = 5000,
    ):
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            download=download,
            val_size=val_size,
        )
        tv = self.torchvision_class
        folder = tv.base_folder
        self.train_files = [f"{folder}/{name}" for name, _ in tv.train_list]
        self.test_files = [f"{folder}/{name}" for name, _ in tv.test_list]
        self.meta_file = f"{folder}/{tv.meta['filename']}"
        self.files = (*self.train_files, *self.test_files, self.meta_file)
        self.official_md5 = {f"{folder}/{name}": md5 for name, md5 in tv.train_list + tv.test_list}
        self.official_md5[self.meta_file] = tv.meta["md5"]

    def fetch(self) -> None:
        tv = self.torchvision_class
        download_and_extract_archive(
            tv.url, str(self.data_dir), filename=tv.filename, md5=tv.tgz_md5
        )

    def validate(self) -> int:
        meta = self.data_dir / self.meta_file
        if not is_official(meta, self.official_md5[self.meta_file]):
            parse_file(meta, lambda path: read_cifar_names(path, self.names_key, self.num_classes))
        train_count = 0
        for name in (*self.train_files, *self.test_files):
            path = self.data_dir / name
            if is_official(path, self.official_md5[name]):
                count = self.train_count // len(self.train_files)
            else:
                count = len(
                    parse_file(
                        path, lambda path: read_cifar_batch(path, self.label_key, self.num_classes)
                    )[1]
                )
            train_count += count if name in self.train_files else 0
        return train_count

    def read(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        batches = [
            parse_file(
                self.data_dir / name,
                lambda path: read_cifar_batch(path, self.label_key, self.num_classes),
            )
            for name in (self.train_files if train else self.test_files)
        ]
        if train:
            self.class_names = parse_file(
                self.data_dir / self.meta_file,
                lambda path: read_cifar_names(path, self.names_key, self.num_classes),
            )
        return (
            np.concatenate([images for images, _ in batches]),
            np.concatenate([labels for _, labels in batches]),
        )

    def train_transform(self) -> Callable:
        return T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )


class CIFAR100Data(CIFAR10Data):
    """CIFAR-100 (100 fine classes; 50,000 train, 10,000 test), in the python-pickle format.

    Files under ``data_dir/cifar-100-python/``: ``train``, ``test``, ``meta``; labels are the
    ``fine_labels``. Same augmentation as CIFAR-10, but CIFAR-100's own mean/std.
    """

    name = "cifar100"
    num_classes = 100
    class_names: list[str] = []  # read from the meta file in setup
    mean, std = CIFAR100_MEAN, CIFAR100_STD
    torchvision_class = tv_datasets.CIFAR100
    label_key = "fine_labels"
    names_key = "fine_label_names"


# --- SVHN -----------------------------------------------------------------------------------


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] and labels 0..9 of a cropped-digits .mat file.

    The file stores X as [32, 32, 3, N] and y as [N, 1] with 10 standing for the digit 0.
    """
    import scipy.io  # scipy is only needed for SVHN

    content = scipy.io.loadmat(str(path))
    if "X" not in content or "y" not in content:
        raise CorruptFile("no 'X' or 'y' variable")
    data = content["X"]
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[:3] != (32, 32, 3):
        raise CorruptFile(f"X is {data.dtype} {data.shape}, expected uint8 [32, 32, 3, N]")
    labels = check_labels(content["y"], data.shape[3], 1, 10)
    return np.ascontiguousarray(data.transpose(3, 0, 1, 2)), labels % 10


class SVHNData(TrainTestData):
    """SVHN cropped digits (73,257 train, 26,032 test 32x32 colour images; no 'extra').

    Files directly under ``data_dir``: ``train_32x32.mat``, ``test_32x32.mat``. Labels are the
    digits 0..9 (the files' 10 becomes 0). Train images get a random 32-crop of the 4-pixel-
    padded image but no flip: a mirrored digit is not the same digit.
    """

    name = "svhn"
    num_classes = 10
    image_shape = (3, 32, 32)
    class_names = [str(digit) for digit in range(10)]
    mean, std = SVHN_MEAN, SVHN_STD
    files = ("train_32x32.mat", "test_32x32.mat")
    train_count = 73_257

    def _split_record(self, train: bool) -> tuple[str, str, str]:
        return tuple(tv_datasets.SVHN.split_list["train" if train else "test"])

    def fetch(self) -> None:
        for train in (True, False):
            url, filename, md5 = self._split_record(train)
            if not (self.data_dir / filename).is_file():
                download_url(url, str(self.data_dir), filename, md5)

    def validate(self) -> int:
        counts = []
        for train in (True, False):
            _, filename, md5 = self._split_record(train)
            path = self.data_dir / filename
            if is_official(path, md5):
                counts.append(self.train_count if train else 0)
            else:
                counts.append(len(parse_file(path, read_svhn_mat)[1]))
        return counts[0]

    def read(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        return parse_file(self.data_dir / self._split_record(train)[1], read_svhn_mat)

    def train_transform(self) -> Callable:
        return T.Compose(
            [T.RandomCrop(32, padding=4), T.ToTensor(), T.Normalize(self.mean, self.std)]
        )


# --- MNIST and Fashion-MNIST -----------------------------------------------------------------

IDX_UBYTE = 0x08  # the only element type of the (Fashion-)MNIST idx files


def read_idx_header(path: Path, dims: int) -> tuple[int, ...]:
    """The shape an idx file declares, after checking it holds exactly that many bytes.

    idx format (LeCun's MNIST page): 2 zero bytes, the element type, the number of dimensions,
    then each dimension as a big-endian uint32, then the data.
    """
    with open(path, "rb") as file:
        header = file.read(4 + 4 * dims)
    if len(header) < 4 + 4 * dims:
        raise CorruptFile("shorter than its header")
    if header[0] != 0 or header[1] != 0 or header[2] != IDX_UBYTE or header[3] != dims:
        raise CorruptFile(f"not an unsigned-byte idx file of {dims} dimensions")
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = len(header) + int(np.prod(shape))
    actual = path.stat().st_size
    if actual != expected:
        raise CorruptFile(f"{actual} bytes where its header declares {expected}")
    return shape


def read_idx(path: Path, dims: int) -> np.ndarray:
    shape = read_idx_header(path, dims)
    return np.fromfile(path, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


class MNISTData(TrainTestData):
    """MNIST handwritten digits (60,000 train, 10,000 test), shaped for 32x32 RGB models.

    The 28x28 grayscale images are zero-padded by 2 pixels to 32x32 and copied to three
    channels, so every model built for 3x32x32 inputs (CIFAR-sized) runs on them unchanged;
    the usual MNIST mean/std normalise every channel. No augmentation.

    Files: the uncompressed idx files under ``data_dir/MNIST/raw/`` (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), where
    torchvision's download puts them.
    """

    name = "mnist"
    num_classes = 10
    image_shape = (3, 32, 32)
    class_names = [str(digit) for digit in range(10)]
    mean, std = MNIST_MEAN, MNIST_STD
    torchvision_class = tv_datasets.MNIST

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = True,
        val_size: int = 5000,
    ):
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            download=download,
            val_size=val_size,
        )
        self.raw_dir = f"{self.torchvision_class.__name__}/raw"
        self.files = tuple(
            f"{self.raw_dir}/{self._raw_name(archive)}"
            for archive, _ in self.torchvision_class.resources
        )

    @staticmethod
    def _raw_name(archive: str) -> str:
        return archive.removesuffix(".gz")

    def _split_files(self, train: bool) -> tuple[Path, Path]:
        prefix = "train" if train else "t10k"
        raw = self.data_dir / self.raw_dir
        return raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"

    def fetch(self) -> None:
        """Each missing file from the first mirror that serves it (torchvision's mirrors)."""
        tv = self.torchvision_class
        raw = self.data_dir / self.raw_dir
        for archive, md5 in tv.resources:
            if (raw / self._raw_name(archive)).is_file():
                continue
            for index, mirror in enumerate(tv.mirrors):
                try:
                    download_and_extract_archive(
                        f"{mirror}{archive}", str(raw), filename=archive, md5=md5
                    )
                    break
                except DOWNLOAD_ERRORS:
                    if index == len(tv.mirrors) - 1:
                        raise

    def validate(self) -> int:
        counts = []
        for train in (True, False):
            images, labels = self._split_files(train)
            shape = parse_file(images, lambda path: read_idx_header(path, 3))
            (count,) = parse_file(labels, lambda path: read_idx_header(path, 1))
            if shape[0] != count or shape[1:] != (28, 28):
                raise CorruptFile(f"{shape[0]} images of {shape[1:]} but {count} labels", images)
            counts.append(count)
        return counts[0]

    def read(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
        images_path, labels_path = self._split_files(train)
        images = parse_file(images_path, lambda path: read_idx(path, 3))
        labels = parse_file(
            labels_path,
            lambda path: check_labels(read_idx(path, 1), len(images), 0, self.num_classes - 1),
        )
        return images, labels

    def _to_rgb32(self) -> list[Callable]:
        return [
            T.Pad(2, fill=0),
            T.Grayscale(num_output_channels=3),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ]

    def eval_transform(self) -> Callable:
        return T.Compose(self._to_rgb32())


class FashionMNISTData(MNISTData):
    """Fashion-MNIST (60,000 train, 10,000 test 28x28 clothing images), shaped for 32x32 RGB.

    Same layout and the same 28x28 -> zero-padded 3x32x32 conversion as ``MNISTData``, with
    Fashion-MNIST's mean/std; files under ``data_dir/FashionMNIST/raw/``. Train images are
    flipped horizontally at random (a mirrored garment is the same garment).
    """

    name = "fashion_mnist"
    class_names = list(tv_datasets.FashionMNIST.classes)
    mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    torchvision_class = tv_datasets.FashionMNIST

    def train_transform(self) -> Callable:
        return T.Compose([T.RandomHorizontalFlip(), *self._to_rgb32()])


# --- ImageNet-style folders ----------------------------------------------------------------


def first_image(folder: Path) -> Path | None:
    """Some image file under ``folder`` (recursively, as ImageFolder looks), or None."""
    for directory, _, names in os.walk(folder, followlinks=True):
        for name in sorted(names):
            if name.lower().endswith(IMG_EXTENSIONS):
                return Path(directory) / name
    return None


def class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


class ImageFolderData(ClassificationData):
    """Any set laid out like ImageNet: ``data_dir/train/<class>/*.jpg`` and ``data_dir/val/...``.

    Class indices follow the sorted class folder names, so ``val/`` must hold the same class
    folders as ``train/``. ``val/`` is also the test split (ImageNet's test labels are not
    public). Train: RandomResizedCrop(image_size) and a horizontal flip; val/test: resize the
    short side to image_size*256/224 and center-crop image_size (the standard ImageNet
    evaluation); ImageNet mean/std. Nothing is downloaded.

    Args:
        num_classes: the number of class folders; given here because the model is built before
            any folder is scanned, and ``check()`` verifies it against ``train/``.
        image_size: side of the square input images.
        data_dir, batch_size, num_workers, seed: see ``ClassificationData`` (``seed`` is unused:
            the folders fix the splits).
    """

    name = "imagefolder"

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        num_classes: int = 1000,
        image_size: int = 224,
    ):
        super().__init__(
            data_dir=data_dir, batch_size=batch_size, num_workers=num_workers, seed=seed
        )
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.image_size = check_int("image_size", image_size, 1)
        self.image_shape = (3, self.image_size, self.image_size)
        self.class_names: list[str] = []

    def _layout_hint(self) -> str:
        return (
            f"lay out {self.data_dir}/train/<class>/<image> and "
            f"{self.data_dir}/val/<class>/<image> (the ImageNet layout)"
        )

    def check(self) -> None:
        """Both folders there, the same ``num_classes`` class folders, each with an image."""
        if not self.data_dir.is_dir():
            raise ConfigError(f"imagefolder: {self.data_dir} does not exist; {self._layout_hint()}")
        for split in ("train", "val"):
            if not (self.data_dir / split).is_dir():
                raise ConfigError(
                    f"imagefolder: no {split}/ folder in {self.data_dir}; {self._layout_hint()}"
                )
        train_classes = class_folders(self.data_dir / "train")
        if len(train_classes) != self.num_classes:
            raise ConfigError(
                f"imagefolder: {self.data_dir / 'train'} has {len(train_classes)} class folders "
                f"but dataset.num_classes={self.num_classes}; set dataset.num_classes="
                f"{len(train_classes)} or fix the folders"
            )
        val_classes = class_folders(self.data_dir / "val")
        if val_classes != train_classes:
            differing = sorted(set(train_classes) ^ set(val_classes))
            raise ConfigError(
                f"imagefolder: {self.data_dir / 'val'} and {self.data_dir / 'train'} must hold "
                f"the same class folders; differing: {', '.join(differing[:5])}"
                f"{' ...' if len(differing) > 5 else ''}"
            )
        for split in ("train", "val"):
            for class_name in train_classes:
                folder = self.data_dir / split / class_name
                if first_image(folder) is None:
                    raise ConfigError(
                        f"imagefolder: no images in {folder}; put image files "
                        f"({', '.join(IMG_EXTENSIONS[:3])}, ...) there or remove the folder"
                    )
        sample = first_image(self.data_dir / "train" / train_classes[0])
        try:
            with Image.open(sample) as image:
                image.verify()
        except Exception as error:  # noqa: BLE001 - any PIL failure means a bad file
            raise ConfigError(
                f"imagefolder: cannot read the image {sample} "
                f"({one_line(error)}); replace or remove it"
            ) from None

    def train_transform(self) -> Callable:
        return T.Compose(
            [
                T.RandomResizedCrop(self.image_size),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def eval_transform(self) -> Callable:
        return T.Compose(
            [
                T.Resize(int(self.image_size * 256 / 224)),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        try:
            # load_image: a file damaged after the run started is named (lowbit.data.faults)
            train = tv_datasets.ImageFolder(
                str(self.data_dir / "train"), transform=self.train_transform(), loader=load_image
            )
            val = tv_datasets.ImageFolder(
                str(self.data_dir / "val"), transform=self.eval_transform(), loader=load_image
            )
        except (FileNotFoundError, OSError) as error:
            raise ConfigError(
                f"imagefolder: cannot read {self.data_dir} ({one_line(error)}); "
                f"{self._layout_hint()}"
            ) from None
        if len(train.classes) != self.num_classes or val.classes != train.classes:
            raise ConfigError(
                f"imagefolder: {self.data_dir} has {len(train.classes)} train classes and "
                f"{len(val.classes)} val classes, dataset.num_classes={self.num_classes}; "
                f"run check() for details"
            )
        self.class_names = list(train.classes)
        self.train_set, self.val_set, self.test_set = train, val, val
