"""The data modules: split sizes and determinism, and each real set read from tiny files written
in its own on-disk format, with every missing/corrupt/offline case ending in one ConfigError."""

from __future__ import annotations

import pickle
import struct
import time
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import assert_config_mirrors_the_constructor, assert_one_line_naming, dataset_option
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import Subset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T
from torchvision.datasets.utils import calculate_md5

from lowbit.data import (
    CIFAR10Data,
    CIFAR100Data,
    DigitsData,
    FashionMNISTData,
    ImageFolderData,
    MNISTData,
    ShapesData,
    SVHNData,
)
from lowbit.data.digits import RandomTranslate
from lowbit.data.vision import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, SVHN_MEAN, SVHN_STD
from lowbit.errors import ConfigError

PER_FILE = 20  # images per tiny file


def assert_batch(batch, image_shape, num_classes):
    images, labels = batch
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.shape[1:] == image_shape and images.shape[0] == labels.shape[0]
    assert 0 <= labels.min() and labels.max() < num_classes


# --- digits ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    data = DigitsData(batch_size=64)
    data.setup()
    return data


def test_digits_splits_add_up_and_are_stratified(digits):
    sets = {"train": digits.train_set, "val": digits.val_set, "test": digits.test_set}
    assert sum(len(s) for s in sets.values()) == 1797
    labels = {name: s.tensors[1] for name, s in sets.items()}
    totals = Counter(torch.cat(list(labels.values())).tolist())
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    for name, split_labels in labels.items():
        counts = Counter(split_labels.tolist())
        for digit in range(10):
            assert abs(counts[digit] - fractions[name] * totals[digit]) <= 2, (name, digit)


def test_digits_split_depends_on_the_seed_only(digits):
    again = DigitsData(batch_size=64)
    again.setup()
    for split in ("train_set", "val_set", "test_set"):
        for mine, theirs in zip(getattr(digits, split).tensors, getattr(again, split).tensors):
            assert torch.equal(mine, theirs)
    other = DigitsData(seed=1)
    other.setup()
    assert not torch.equal(other.val_set.tensors[1], digits.val_set.tensors[1])


def test_digits_batches_are_normalised_rgb32(digits):
    assert digits.num_classes == 10 and digits.image_shape == (3, 32, 32)
    assert_batch(next(iter(digits.train_dataloader())), (3, 32, 32), 10)
    assert_batch(next(iter(digits.val_dataloader())), (3, 32, 32), 10)
    train_images = digits.train_set.tensors[0]
    assert abs(train_images.mean().item()) < 1e-3
    assert abs(train_images.std().item() - 1) < 1e-3
    assert torch.equal(train_images[:, 0], train_images[:, 2])  # gray copied to 3 channels
    assert set(digits.train_set.tensors[1].tolist()) == set(range(10))


def test_digits_loaders_shuffle_train_only(digits):
    first = next(iter(digits.val_dataloader()))[1]
    assert torch.equal(first, digits.val_set.tensors[1][:64])
    torch.manual_seed(0)
    shuffled = next(iter(digits.train_dataloader()))[1]
    assert not torch.equal(shuffled, digits.train_set.tensors[1][:64])
    assert len(digits.train_dataloader()) == -(-len(digits.train_set) // 64)  # drops nothing


def test_random_translate_shifts_by_at_most_two_pixels():
    images = torch.randn(64, 3, 32, 32)
    labels = torch.arange(64)
    shifted, out_labels = RandomTranslate(2, fill=-9.0)(list(zip(images, labels)))
    assert torch.equal(out_labels, labels) and shifted.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2), value=-9.0)
    moved = 0
    for image, original in zip(shifted, padded):
        offsets = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(original[:, dy : dy + 32, dx : dx + 32], image)
        ]
        assert len(offsets) == 1  # a translation, never a flip
        moved += offsets[0] != (2, 2)
    assert moved > 32


def test_digits_augment_changes_only_train(digits):
    augmented = DigitsData(batch_size=64, augment=True)
    augmented.setup()
    torch.manual_seed(0)
    images, _ = next(iter(augmented.train_dataloader()))
    torch.manual_seed(0)
    plain, _ = next(iter(digits.train_dataloader()))
    assert images.shape == plain.shape and not torch.equal(images, plain)
    assert torch.equal(
        next(iter(augmented.val_dataloader()))[0], next(iter(digits.val_dataloader()))[0]
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": 0},
        {"test_fraction": 1.5},
        {"val_fraction": 0.5, "test_fraction": 0.5},
        {"batch_size": 0},
        {"seed": -1},
    ],
)
def test_digits_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        DigitsData(**kwargs)


# --- shapes ---------------------------------------------------------------------------------

SMALL_SHAPES = {"train_size": 1000, "val_size": 300, "test_size": 300}


@pytest.fixture(scope="module")
def shapes():
    data = ShapesData(**SMALL_SHAPES)
    data.setup()
    return data


def test_shapes_are_deterministic_per_seed(shapes):
    again = ShapesData(**SMALL_SHAPES)
    again.setup()
    other = ShapesData(seed=1, **SMALL_SHAPES)
    other.setup()
    for split in ("train_set", "val_set", "test_set"):
        assert torch.equal(getattr(shapes, split).tensors[0], getattr(again, split).tensors[0])
        assert torch.equal(getattr(shapes, split).tensors[1], getattr(again, split).tensors[1])
        assert not torch.equal(getattr(shapes, split).tensors[0], getattr(other, split).tensors[0])


def test_shapes_sizes_balance_and_batches(shapes):
    assert [len(shapes.train_set), len(shapes.val_set), len(shapes.test_set)] == [1000, 300, 300]
    assert shapes.num_classes == 10 and len(shapes.class_names) == 10
    for split, size in (("train_set", 1000), ("test_set", 300)):
        counts = Counter(getattr(shapes, split).tensors[1].tolist())
        assert set(counts) == set(range(10))
        assert all(abs(n - size / 10) <= size / 50 for n in counts.values())
    assert_batch(next(iter(shapes.train_dataloader())), (3, 32, 32), 10)
    train = shapes.train_set.tensors[0]
    assert train.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert (train.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


def test_shapes_splits_share_no_image(shapes):
    def keys(dataset):
        return {image.numpy().tobytes() for image in dataset.tensors[0]}

    train, val, test = keys(shapes.train_set), keys(shapes.val_set), keys(shapes.test_set)
    assert len(train) == 1000 and len(test) == 300  # no duplicates within a split either
    assert not train & test and not train & val and not val & test


def test_shapes_split_sizes_do_not_change_other_splits(shapes):
    bigger = ShapesData(train_size=1200, val_size=300, test_size=300)
    bigger.setup()
    assert torch.equal(bigger.test_set.tensors[1], shapes.test_set.tensors[1])
    raw = [data.test_set.tensors[0] * data.std + data.mean for data in (bigger, shapes)]
    assert torch.allclose(*raw, atol=1e-5)  # same drawings; only the train stats differ


def test_shapes_default_sizes_are_quick():
    start = time.perf_counter()
    data = ShapesData()
    data.setup()
    assert time.perf_counter() - start < 15
    assert [len(data.train_set), len(data.val_set), len(data.test_set)] == [5000, 1000, 1000]


# --- tiny files in each set's own on-disk format ---------------------------------------------


def random_images(rng, count, *shape):
    return rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR files were written.

    Python 3 has no such type, so the standard pickler writes bytes differently; files made
    with this one load exactly like the real ones: keys (and the arrays' raw data) come back
    as str with ``encoding="latin1"``, which is what torchvision and lowbit use.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def write_cifar10(root: Path) -> dict[str, np.ndarray]:
    """cifar-10-batches-py/ as the official archive unpacks: Python 2 pickles of dicts."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = random_images(rng, PER_FILE, 3072)
        labels = [int(x) for x in rng.integers(0, 10, PER_FILE)]
        with open(folder / name, "wb") as file:
            Python2Pickler(file, protocol=2).dump(
                {
                    b"batch_label": name.encode(),
                    b"labels": labels,
                    b"data": data,
                    b"filenames": [b"x.png"] * PER_FILE,
                }
            )
        written[name] = data
    with open(folder / "batches.meta", "wb") as file:
        names = [
            n.encode()
            for n in (
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
            )
        ]
        Python2Pickler(file, protocol=2).dump({b"label_names": names, b"num_vis": 3072})
    return written


def write_cifar100(root: Path) -> None:
    """cifar-100-python/ re-pickled by Python 3 (bytes keys, protocol 5): also accepted."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, count in (("train", 5 * PER_FILE), ("test", PER_FILE)):
        with open(folder / name, "wb") as file:
            pickle.dump(
                {
                    b"data": random_images(rng, count, 3072),
                    b"fine_labels": [int(x) for x in rng.integers(0, 100, count)],
                    b"coarse_labels": [int(x) for x in rng.integers(0, 20, count)],
                },
                file,
                protocol=pickle.HIGHEST_PROTOCOL,
            )
    with open(folder / "meta", "wb") as file:
        pickle.dump(
            {
                b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
            },
            file,
        )


def write_svhn(root: Path) -> None:
    """train_32x32.mat / test_32x32.mat: X [32, 32, 3, N] uint8, y [N, 1] with 10 for 0."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for name, count in (("train_32x32.mat", 5 * PER_FILE), ("test_32x32.mat", PER_FILE)):
        labels = np.arange(count) % 10 + 1  # every label 1..10 present
        scipy.io.savemat(
            root / name,
            {
                "X": rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8),
                "y": labels.reshape(-1, 1).astype(np.uint8),
            },
        )


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's idx format: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, folder_name: str = "MNIST") -> None:
    """<folder_name>/raw/ with the four uncompressed idx files torchvision 0.29 reads."""
    raw = root / folder_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for prefix, count in (("train", 5 * PER_FILE), ("t10k", PER_FILE)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes(random_images(rng, count, 28, 28))
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(count) % 10))


def write_image_folder(root: Path, classes=("cat", "dog", "fox"), per_class=(3, 1)) -> None:
    rng = np.random.default_rng(4)
    for split, count in zip(("train", "val"), per_class):
        for class_name in classes:
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def writer_for(cls):
    return {
        CIFAR10Data: write_cifar10,
        CIFAR100Data: write_cifar100,
        SVHNData: write_svhn,
        MNISTData: write_mnist,
        FashionMNISTData: lambda root: write_mnist(root, "FashionMNIST"),
    }[cls]


REAL_SETS = [CIFAR10Data, CIFAR100Data, SVHNData, MNISTData, FashionMNISTData]


@pytest.mark.parametrize("cls", REAL_SETS)
def test_real_set_reads_its_own_format(tmp_path, cls):
    writer_for(cls)(tmp_path)
    data = cls(data_dir=str(tmp_path), batch_size=8, download=False, val_size=10)
    data.check()
    data.setup()
    assert len(data.train_set) == 5 * PER_FILE - 10
    assert len(data.val_set) == 10 and len(data.test_set) == PER_FILE
    assert_batch(next(iter(data.train_dataloader())), (3, 32, 32), data.num_classes)
    assert_batch(next(iter(data.val_dataloader())), (3, 32, 32), data.num_classes)
    assert_batch(next(iter(data.test_dataloader())), (3, 32, 32), data.num_classes)
    assert data.image_shape == (3, 32, 32)
    assert len(data.class_names) == data.num_classes


@pytest.mark.parametrize("cls", REAL_SETS)
def test_val_is_held_out_of_train_without_augmentation(tmp_path, cls):
    writer_for(cls)(tmp_path)
    data = cls(data_dir=str(tmp_path), download=False, val_size=30, seed=5)
    data.setup()
    assert isinstance(data.train_set, Subset) and isinstance(data.val_set, Subset)
    train, val = set(data.train_set.indices), set(data.val_set.indices)
    assert not train & val and len(train | val) == 5 * PER_FILE and len(val) == 30
    assert data.train_set.dataset.images is data.val_set.dataset.images  # one copy in memory
    eval_steps = data.val_set.dataset.transform.transforms
    assert not any(type(step).__name__.startswith("Random") for step in eval_steps)
    again = cls(data_dir=str(tmp_path), download=False, val_size=30, seed=5)
    again.setup()
    assert again.val_set.indices == data.val_set.indices
    other = cls(data_dir=str(tmp_path), download=False, val_size=30, seed=6)
    other.setup()
    assert other.val_set.indices != data.val_set.indices
    assert torch.equal(data.val_set[0][0], data.val_set[0][0])  # deterministic


@pytest.mark.parametrize("cls", REAL_SETS)
def test_val_size_zero_validates_on_test(tmp_path, cls):
    writer_for(cls)(tmp_path)
    data = cls(data_dir=str(tmp_path), download=False, val_size=0)
    data.setup()
    assert len(data.train_set) == 5 * PER_FILE and data.val_set is data.test_set


@pytest.mark.parametrize("cls", REAL_SETS)
def test_val_size_larger_than_train_is_a_config_error(tmp_path, cls):
    writer_for(cls)(tmp_path)
    with pytest.raises(ConfigError, match="val_size") as error:
        cls(data_dir=str(tmp_path), download=False, val_size=5000).check()
    assert_one_line_naming(error, tmp_path)


def test_cifar10_pixels_match_torchvision(tmp_path, monkeypatch):
    """Our reader and torchvision's agree on the layout (channel planes, row order)."""
    written = write_cifar10(tmp_path)
    data = CIFAR10Data(data_dir=str(tmp_path), download=False, val_size=10)
    data.setup()
    # Only the md5 gate is lifted, so that torchvision's own reader accepts the tiny files.
    monkeypatch.setattr(tv_datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = tv_datasets.CIFAR10(str(tmp_path), train=False, download=False)
    assert np.array_equal(data.test_set.images, reference.data)
    assert list(data.test_set.labels) == reference.targets
    image, label = data.test_set[3]
    plane = written["test_batch"][3].reshape(3, 32, 32).astype(np.float32) / 255
    expected = (torch.from_numpy(plane) - torch.tensor(CIFAR10_MEAN)[:, None, None]) / torch.tensor(
        CIFAR10_STD
    )[:, None, None]
    assert torch.allclose(image, expected, atol=1e-6) and label == reference.targets[3]


def test_cifar100_uses_fine_labels_and_meta_names(tmp_path):
    write_cifar100(tmp_path)
    data = CIFAR100Data(data_dir=str(tmp_path), download=False, val_size=10)
    data.setup()
    assert data.num_classes == 100 and data.class_names[7] == "class7"
    assert max(data.test_set.labels) > 20  # fine (0..99), not coarse (0..19)


def test_svhn_labels_and_pixels_match_torchvision(tmp_path, monkeypatch):
    write_svhn(tmp_path)
    data = SVHNData(data_dir=str(tmp_path), download=False, val_size=10)
    data.setup()
    monkeypatch.setattr(tv_datasets.SVHN, "_check_integrity", lambda self: True)
    reference = tv_datasets.SVHN(str(tmp_path), split="test", download=False)
    assert list(data.test_set.labels) == list(reference.labels)
    assert sorted(set(data.test_set.labels)) == list(range(10))  # 10 became 0
    assert np.array_equal(data.test_set.images, reference.data.transpose(0, 2, 3, 1))
    expected = T.Compose([T.ToTensor(), T.Normalize(SVHN_MEAN, SVHN_STD)])(reference[5][0])
    assert torch.equal(data.test_set[5][0], expected)


def test_svhn_train_transform_never_flips():
    steps = SVHNData(data_dir="unused").train_transform().transforms
    assert not any(isinstance(step, T.RandomHorizontalFlip) for step in steps)


@pytest.mark.parametrize("cls", [MNISTData, FashionMNISTData])
def test_mnist_is_padded_to_rgb32_like_torchvision_reads_it(tmp_path, cls):
    writer_for(cls)(tmp_path)
    data = cls(data_dir=str(tmp_path), download=False, val_size=10)
    data.setup()
    reference = getattr(tv_datasets, cls.torchvision_class.__name__)(
        str(tmp_path), train=False, download=False
    )
    assert np.array_equal(data.test_set.images, reference.data.numpy())
    image, label = data.test_set[2]
    assert label == int(reference.targets[2]) and image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    zero = (0 - data.mean[0]) / data.std[0]
    assert torch.allclose(image[:, :2, :], torch.tensor(zero))  # the 2-pixel zero border
    inner = (torch.from_numpy(reference.data[2].numpy()).float() / 255 - data.mean[0]) / data.std[0]
    assert torch.allclose(image[0, 2:30, 2:30], inner, atol=1e-6)
    if cls is MNISTData:
        assert data.mean == MNIST_MEAN and data.std == MNIST_STD


# --- missing, offline and corrupt files ---------------------------------------------------------


@pytest.mark.parametrize("cls", REAL_SETS)
def test_missing_files_without_download(tmp_path, cls):
    data = cls(data_dir=str(tmp_path / "empty"), download=False)
    with pytest.raises(ConfigError, match="download") as error:
        data.check()
    assert_one_line_naming(error, tmp_path / "empty")
    with pytest.raises(ConfigError):
        data.setup()


@pytest.mark.parametrize("cls", REAL_SETS)
def test_failed_download_is_a_quick_config_error(tmp_path, cls, offline):
    data = cls(data_dir=str(tmp_path / "fresh"), download=True)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="download") as error:
        data.check()
    assert time.perf_counter() - start < 10
    assert offline, "check() never tried to download"
    assert_one_line_naming(error, tmp_path / "fresh")


def test_download_is_tried_in_check_and_then_validated(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append(url)
        write_cifar10(Path(download_root))

    monkeypatch.setattr("lowbit.data.vision.download_and_extract_archive", fake_download)
    data = CIFAR10Data(data_dir=str(tmp_path), download=True, val_size=10)
    data.check()
    data.check()  # files present now: no second download
    assert calls == [tv_datasets.CIFAR10.url]


def test_official_cifar_files_are_trusted_by_md5_without_parsing(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    data = CIFAR10Data(data_dir=str(tmp_path), download=False)
    data.official_md5 = {name: calculate_md5(tmp_path / name) for name in data.files}

    def must_not_parse(*args, **kwargs):
        raise AssertionError("an official file was parsed in check()")

    monkeypatch.setattr("lowbit.data.vision.read_cifar_batch", must_not_parse)
    monkeypatch.setattr("lowbit.data.vision.read_cifar_names", must_not_parse)
    data.check()  # and val_size=5000 fits the official 50,000 train images


def test_corrupt_cifar_batch(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"\x00garbage, not a pickle" * 10)
    data = CIFAR10Data(data_dir=str(tmp_path), download=False, val_size=10)
    with pytest.raises(ConfigError) as error:
        data.check()
    assert_one_line_naming(error, bad)
    with pytest.raises(ConfigError):
        data.setup()


def test_cifar_batch_with_wrong_content(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(bad, "wb") as file:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, file)
    with pytest.raises(ConfigError, match="3072") as error:
        CIFAR10Data(data_dir=str(tmp_path), download=False, val_size=10).check()
    assert_one_line_naming(error, bad)


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(bad, "wb") as file:  # any class other than numpy's arrays is refused
        pickle.dump(OrderedDict(data=np.zeros((2, 3072), np.uint8), labels=[0, 1]), file)
    with pytest.raises(ConfigError, match="OrderedDict"):
        CIFAR10Data(data_dir=str(tmp_path), download=False, val_size=10).check()


def test_truncated_mnist_file(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(ConfigError, match="bytes") as error:
        MNISTData(data_dir=str(tmp_path), download=False, val_size=10).check()
    assert_one_line_naming(error, bad)


def test_mnist_labels_not_matching_images(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(PER_FILE - 1, np.uint8)))
    with pytest.raises(ConfigError, match="labels"):
        MNISTData(data_dir=str(tmp_path), download=False, val_size=10).check()


def test_corrupt_svhn_file(tmp_path):
    write_svhn(tmp_path)
    bad = tmp_path / "test_32x32.mat"
    bad.write_bytes(b"MATLAB? no" * 50)
    with pytest.raises(ConfigError) as error:
        SVHNData(data_dir=str(tmp_path), download=False, val_size=10).check()
    assert_one_line_naming(error, bad)


# --- ImageNet-style folders -------------------------------------------------------------------


def test_image_folder_reads_train_and_val(tmp_path):
    write_image_folder(tmp_path)
    data = ImageFolderData(data_dir=str(tmp_path), batch_size=4, num_classes=3, image_size=32)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 3
    data.check()
    data.setup()
    assert len(data.train_set) == 9 and len(data.val_set) == 3 and data.test_set is data.val_set
    assert data.class_names == ["cat", "dog", "fox"]
    assert_batch(next(iter(data.train_dataloader())), (3, 32, 32), 3)
    images, labels = next(iter(data.val_dataloader()))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [0, 1, 2]


def test_image_folder_defaults_to_imagenet_shape():
    data = ImageFolderData(data_dir="nowhere")
    assert data.num_classes == 1000 and data.image_shape == (3, 224, 224)


def test_image_folder_wrong_num_classes(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(ConfigError, match="num_classes=3") as error:
        ImageFolderData(data_dir=str(tmp_path), num_classes=1000).check()
    assert_one_line_naming(error, tmp_path / "train")


@pytest.mark.parametrize("damage", ["no_root", "no_val", "empty_class", "val_class_differs"])
def test_image_folder_layout_errors(tmp_path, damage):
    root = tmp_path / "images"
    if damage != "no_root":
        write_image_folder(root)
    if damage == "no_val":
        for path in sorted((root / "val").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "val").rmdir()
    if damage == "empty_class":
        for image in (root / "train" / "dog").iterdir():
            image.unlink()
    if damage == "val_class_differs":
        (root / "val" / "fox").rename(root / "val" / "wolf")
    with pytest.raises(ConfigError) as error:
        ImageFolderData(data_dir=str(root), num_classes=3, image_size=32).check()
    assert_one_line_naming(error, root)


# --- configs --------------------------------------------------------------------------------

CONFIGS = [
    "digits",
    "shapes",
    "cifar10",
    "cifar100",
    "svhn",
    "mnist",
    "fashion_mnist",
    "imagefolder",
]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_mirrors_the_constructor(tmp_path, name):
    node = dataset_option(name)
    assert_config_mirrors_the_constructor(node)
    if name not in ("digits", "shapes"):
        assert OmegaConf.to_container(node)["data_dir"].startswith("${paths.data_dir}/")
    node.data_dir = str(tmp_path)
    data = instantiate(node)
    assert data.name == name
    assert data.image_shape[0] == 3 and data.num_classes >= 10
