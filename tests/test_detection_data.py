"""Detection data: box-aware transforms, the generated shapes_det scenes, and VOC and COCO read
from tiny files written in their own formats, every bad input ending in one ConfigError."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CONF_DATASET,
    assert_config_mirrors_the_constructor,
    assert_one_line_naming,
    dataset_option,
)
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from lowbit.data import COCOData, DetectionData, ShapesDetData, VOCData, collate_detection
from lowbit.data.detection import PAD_GREY, horizontal_flip, letterbox
from lowbit.data.shapes_det import draw_scenes
from lowbit.data.voc import VOC_CLASSES
from lowbit.errors import ConfigError

SMALL = {"train_size": 120, "val_size": 40, "test_size": 40}


def tight_box(mask: torch.Tensor) -> list[float]:
    """The pixel-edge xyxy box of a bool mask [H, W]."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return [cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1]


def assert_detection_batch(batch, size: int, num_classes: int, batch_size: int):
    images, targets = batch
    assert images.dtype == torch.float32 and images.shape == (batch_size, 3, size, size)
    assert 0 <= images.min() and images.max() <= 1
    assert isinstance(targets, list) and len(targets) == batch_size
    for target in targets:
        assert set(target) == {"boxes", "labels"}
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert boxes.shape == (len(labels), 4)
        assert ((0 <= labels) & (labels < num_classes)).all()
        assert ((boxes >= 0) & (boxes <= size)).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# --- transforms ------------------------------------------------------------------------------


def rectangle_image(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A black [3, H, W] image with a white rectangle on the pixels of the xyxy ``box``."""
    image = torch.zeros(3, height, width)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return image


@pytest.mark.parametrize(
    "shape, box",
    [
        ((60, 100), (40, 10, 70, 30)),  # wide: pad top/bottom
        ((90, 45), (5, 50, 25, 88)),  # tall: pad left/right
        ((32, 32), (3, 4, 20, 9)),
    ],
)  # square, upscaled
def test_letterbox_keeps_boxes_on_their_pixels(shape, box):
    image = rectangle_image(*shape, box)
    square, boxes = letterbox(image, torch.tensor([box], dtype=torch.float32), 64)
    assert square.shape == (3, 64, 64)
    # The box covers the (resampled) rectangle to within a pixel, on every side.
    drawn = tight_box(square[0] > 0.5)
    assert np.allclose(boxes[0].tolist(), drawn, atol=1.0), (boxes[0].tolist(), drawn)
    # The aspect ratio is kept, and the padding is grey.
    height, width = shape
    scale = 64 / max(height, width)
    image_rows = (square[0] != PAD_GREY).any(dim=1).sum().item()
    image_cols = (square[0] != PAD_GREY).any(dim=0).sum().item()
    assert abs(image_rows - height * scale) <= 1 and abs(image_cols - width * scale) <= 1
    if height != width:
        assert (square[:, 0] == PAD_GREY).all() or (square[:, :, 0] == PAD_GREY).all()


def test_letterbox_of_an_exact_size_image_is_the_identity():
    image = torch.rand(3, 64, 64)
    boxes = torch.tensor([[1.5, 2.0, 30.0, 40.0]])
    square, same = letterbox(image, boxes, 64)
    assert torch.equal(square, image) and torch.equal(same, boxes)


def test_horizontal_flip_moves_boxes_with_the_pixels():
    box = (5, 10, 18, 30)
    image = rectangle_image(40, 50, box)
    flipped, boxes = horizontal_flip(image, torch.tensor([box], dtype=torch.float32))
    assert boxes[0].tolist() == tight_box(flipped[0] > 0.5) == [32, 10, 45, 30]
    back, again = horizontal_flip(flipped, boxes)
    assert torch.equal(back, image) and again[0].tolist() == list(box)


def test_collate_stacks_images_and_lists_targets():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    one = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([2])}
    images, targets = collate_detection(
        [(torch.zeros(3, 32, 32), empty), (torch.ones(3, 32, 32), one)]
    )
    assert images.shape == (2, 3, 32, 32) and targets == [empty, one]


# --- shapes_det ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes():
    data = ShapesDetData(batch_size=8, **SMALL)
    data.check()  # draws the scenes, kept for setup
    data.setup()
    return data


def split_tensors(dataset):
    return dataset.images, dataset.boxes, dataset.labels


def test_shapes_det_is_deterministic_per_seed(scenes):
    again = ShapesDetData(**SMALL)
    again.setup()
    other = ShapesDetData(seed=1, **SMALL)
    other.setup()
    for split in ("train_set", "val_set", "test_set"):
        mine, theirs = split_tensors(getattr(scenes, split)), split_tensors(getattr(again, split))
        assert torch.equal(mine[0], theirs[0])
        assert all(torch.equal(a, b) for a, b in zip(mine[1], theirs[1]))
        assert all(torch.equal(a, b) for a, b in zip(mine[2], theirs[2]))
        assert not torch.equal(mine[0], getattr(other, split).images)


def test_shapes_det_splits_share_no_image(scenes):
    def keys(dataset):
        return {image.numpy().tobytes() for image in dataset.images}

    train, val, test = (keys(getattr(scenes, s)) for s in ("train_set", "val_set", "test_set"))
    assert len(train) == SMALL["train_size"] and len(val) == SMALL["val_size"]
    assert not train & val and not train & test and not val & test


def test_shapes_det_split_sizes_do_not_redraw_other_splits(scenes):
    bigger = ShapesDetData(train_size=150, val_size=40, test_size=40)
    bigger.setup()
    assert torch.equal(bigger.test_set.images, scenes.test_set.images)


def test_shapes_det_counts_labels_and_boxes_in_range(scenes):
    assert scenes.num_classes == 5 and scenes.image_shape == (3, 128, 128)
    assert scenes.class_names == ["circle", "square", "triangle", "plus", "ring"]
    assert scenes.task == "detection" and isinstance(scenes, DetectionData)
    counts = [len(labels) for labels in scenes.train_set.labels]
    assert min(counts) >= 1 and max(counts) <= 4 and set(counts) == {1, 2, 3, 4}
    labels = torch.cat(scenes.train_set.labels)
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(5))
    boxes = torch.cat(scenes.train_set.boxes)
    assert ((boxes >= 0) & (boxes <= 128)).all()
    sides = torch.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() >= 4 and (boxes[:, 2:] - boxes[:, :2]).max() <= 64 + 1


def test_shapes_det_object_counts_follow_the_arguments():
    data = ShapesDetData(
        min_objects=3, max_objects=6, num_classes=10, train_size=60, val_size=1, test_size=1
    )
    data.setup()
    counts = {len(labels) for labels in data.train_set.labels}
    assert counts <= set(range(3, 7)) and 6 in counts
    assert max(torch.cat(data.train_set.labels).tolist()) > 4  # classes beyond the default 5
    empty = ShapesDetData(min_objects=0, max_objects=1, train_size=60, val_size=1, test_size=1)
    empty.setup()
    assert {len(labels) for labels in empty.train_set.labels} == {0, 1}


def test_shapes_det_boxes_are_tight_around_the_drawn_objects():
    """On flat, noise-free scenes every non-background pixel lies in a box, each box touches its
    object on all four sides (no slack, no off-by-one), and boxes overlap little."""
    images, boxes, labels = draw_scenes(
        40, np.random.SeedSequence(7), size=96, max_objects=5, ramp=0.0, noise_std=0.0
    )
    for image, image_boxes in zip(torch.from_numpy(images), boxes):
        background = image[:, 0, 0]
        for corner in (image[:, 0, -1], image[:, -1, 0], image[:, -1, -1]):
            if torch.equal(corner, image[:, 0, 0]):
                break
        else:  # three corners covered by objects: take the most common colour instead
            colours, counts = image.reshape(3, -1).unique(dim=1, return_counts=True)
            background = colours[:, counts.argmax()]
        foreground = (image != background[:, None, None]).any(dim=0)
        covered = torch.zeros_like(foreground)
        for x0, y0, x1, y1 in image_boxes.astype(int).tolist():
            inside = foreground[y0:y1, x0:x1]
            assert inside[0].any() and inside[-1].any()  # top and bottom rows
            assert inside[:, 0].any() and inside[:, -1].any()  # left and right columns
            covered[y0:y1, x0:x1] = True
        assert not (foreground & ~covered).any()  # no drawn pixel outside every box
        for i, first in enumerate(image_boxes):  # boxes overlap by less than 30%
            for second in image_boxes[i + 1 :]:
                width = min(first[2], second[2]) - max(first[0], second[0])
                height = min(first[3], second[3]) - max(first[1], second[1])
                smaller = min((b[2] - b[0]) * (b[3] - b[1]) for b in (first, second))
                assert max(width, 0) * max(height, 0) < 0.3 * smaller


def test_shapes_det_objects_stand_out_of_the_noisy_background(scenes):
    for image, boxes in zip(scenes.val_set.images[:20].float() / 255, scenes.val_set.boxes):
        outside = torch.ones(image.shape[1:], dtype=torch.bool)
        for x0, y0, x1, y1 in boxes.int().tolist():
            outside[y0:y1, x0:x1] = False
        background = image[:, outside].median(dim=1).values
        differs = (image - background[:, None, None]).norm(dim=0) > 0.3
        assert differs[outside].float().mean() < 0.05
        for x0, y0, x1, y1 in boxes.int().tolist():
            assert differs[y0:y1, x0:x1].float().mean() > 0.3


def test_shapes_det_batches_through_the_data_loader(scenes):
    train = next(iter(scenes.train_dataloader()))
    assert_detection_batch(train, 128, 5, 8)
    images, targets = next(iter(scenes.val_dataloader()))
    assert torch.equal(images[3], scenes.val_set.images[3].float() / 255)
    assert torch.equal(targets[3]["boxes"], scenes.val_set.boxes[3])
    assert len(scenes.val_dataloader()) == -(-SMALL["val_size"] // 8)


def test_train_flips_follow_the_torch_seed_and_eval_never_flips(scenes):
    def items(dataset):
        return [dataset[i] for i in range(20)]

    def was_flipped(dataset, index, item):
        raw = dataset.images[index].float() / 255
        if torch.equal(item[0], raw):
            assert torch.equal(item[1]["boxes"], dataset.boxes[index])
            return False
        image, boxes = horizontal_flip(raw, dataset.boxes[index])
        assert torch.equal(item[0], image) and torch.equal(item[1]["boxes"], boxes)
        return True

    torch.manual_seed(3)
    first = items(scenes.train_set)
    torch.manual_seed(3)
    second = items(scenes.train_set)
    flips = [was_flipped(scenes.train_set, i, item) for i, item in enumerate(first)]
    assert 3 <= sum(flips) <= 17
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    assert not any(
        was_flipped(scenes.val_set, i, item) for i, item in enumerate(items(scenes.val_set))
    )
    never = ShapesDetData(flip=0, **SMALL)
    never.setup()
    assert not any(
        was_flipped(never.train_set, i, item) for i, item in enumerate(items(never.train_set))
    )


def test_shapes_det_default_generation_is_quick():
    start = time.perf_counter()
    data = ShapesDetData()
    data.setup()
    assert time.perf_counter() - start < 15
    assert [len(data.train_set), len(data.val_set), len(data.test_set)] == [2000, 200, 200]


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"image_size": 100}, "multiple of 32"),
        ({"image_size": 0}, "image_size"),
        ({"min_objects": 5, "max_objects": 4}, "min_objects"),
        ({"max_objects": 0}, "max_objects"),
        ({"num_classes": 11}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"train_size": 0}, "train_size"),
        ({"val_size": -1}, "val_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": -1}, "seed"),
        ({"flip": 1.5}, "flip"),
        ({"max_object_size": 0.9}, "max_object_size"),
        ({"min_object_size": 0.6}, "min_object_size"),
        ({"image_size": 32, "min_object_size": 0.125}, "min_object_size"),
    ],
)
def test_shapes_det_bad_arguments(kwargs, key):
    with pytest.raises(ConfigError, match=key) as error:
        ShapesDetData(**kwargs)
    assert "\n" not in str(error.value)


def test_shapes_det_too_many_objects_is_a_config_error():
    data = ShapesDetData(
        image_size=32,
        min_objects=30,
        max_objects=30,
        min_object_size=0.3,
        max_object_size=0.3,
        train_size=2,
        val_size=1,
        test_size=1,
    )
    with pytest.raises(ConfigError, match="max_objects"):
        data.check()


# --- VOC -----------------------------------------------------------------------------------

# id -> (width, height, objects as (class, xmin, ymin, xmax, ymax, difficult), 1-based inclusive)
VOC_IMAGES = {
    "000001": (200, 100, [("dog", 21, 11, 80, 60, 0), ("person", 121, 31, 180, 90, 1)]),
    "000002": (100, 150, [("tvmonitor", 11, 41, 60, 120, 0), ("cat", 61, 1, 100, 30, 0)]),
    "000003": (160, 160, []),
}


def write_voc(root: Path, year: str = "2007", sets=None) -> Path:
    """VOCdevkit/VOC<year>/ with JPEGImages, Annotations and ImageSets/Main, as the tars unpack."""
    sets = sets or {"trainval": ["000001", "000002"], "test": ["000003", "000002"]}
    base = root / "VOCdevkit" / f"VOC{year}"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for id_, (width, height, objects) in VOC_IMAGES.items():
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        xml = [
            f"<annotation><folder>VOC{year}</folder><filename>{id_}.jpg</filename>",
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
        ]
        for name, x0, y0, x1, y1, difficult in objects:
            pixels[y0 - 1 : y1, x0 - 1 : x1] = 255  # the inclusive 1-based box, filled white
            xml.append(
                f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
                f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin>"
                f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            )
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{id_}.jpg", quality=95)
        (base / "Annotations" / f"{id_}.xml").write_text("".join(xml) + "</annotation>")
    for image_set, ids in sets.items():
        (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
    return base


def test_voc_reads_its_own_format_and_drops_difficult(tmp_path):
    write_voc(tmp_path)
    data = VOCData(data_dir=str(tmp_path), batch_size=2, download=False, image_size=64)
    assert data.num_classes == 20 and data.class_names == VOC_CLASSES
    assert data.image_shape == (3, 64, 64) and data.task == "detection"
    data.check()
    data.setup()
    assert len(data.train_set) == 2 and len(data.val_set) == 2 and len(data.test_set) == 2
    image, target = data.val_set[1]  # 000002: 100 x 150, scaled by 64/150 and centred
    assert target["labels"].tolist() == [VOC_CLASSES.index("tvmonitor"), VOC_CLASSES.index("cat")]
    scale, new_width = 64 / 150, round(100 * 64 / 150)
    left = (64 - new_width) // 2
    expected = torch.tensor([[10, 40, 60, 120], [60, 0, 100, 30]]) * torch.tensor(
        [new_width / 100, scale, new_width / 100, scale]
    ) + torch.tensor([left, 0, left, 0])
    assert torch.allclose(target["boxes"], expected.float(), atol=1e-4)
    for box in target["boxes"]:  # the white rectangles sit on the boxes after the letterbox
        x0, y0, x1, y1 = box.round().int().tolist()
        assert image[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].min() > 0.8
    _, empty = data.val_set[0]
    assert empty["boxes"].shape == (0, 4) and empty["labels"].shape == (0,)
    _, first = data.train_set[0]
    assert first["labels"].tolist() == [VOC_CLASSES.index("dog")]  # the difficult person dropped
    assert_detection_batch(next(iter(data.train_dataloader())), 64, 20, 2)
    assert_detection_batch(next(iter(data.test_dataloader())), 64, 20, 2)


def test_voc_2012_image_sets(tmp_path):
    write_voc(tmp_path, year="2012", sets={"train": ["000001"], "val": ["000002", "000003"]})
    data = VOCData(
        data_dir=str(tmp_path),
        download=False,
        year=2012,
        train_image_set="train",
        val_image_set="val",
        test_image_set="val",
        image_size=64,
    )
    data.check()
    data.setup()
    assert len(data.train_set) == 1 and len(data.test_set) == 2
    with pytest.raises(ConfigError, match="test_image_set"):
        VOCData(data_dir=str(tmp_path), year="2012", val_image_set="val")  # no 2012 test set


@pytest.mark.parametrize(
    "kwargs", [{"year": "2010"}, {"train_image_set": "all"}, {"image_size": 400}]
)
def test_voc_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        VOCData(data_dir="nowhere", **kwargs)


@pytest.mark.parametrize("damage", ["no_tree", "no_list", "no_image", "no_annotation"])
def test_voc_missing_files_without_download(tmp_path, damage):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    if damage != "no_tree":
        write_voc(tmp_path)
    if damage == "no_list":
        (base / "ImageSets" / "Main" / "test.txt").unlink()
    if damage == "no_image":
        (base / "JPEGImages" / "000002.jpg").unlink()
    if damage == "no_annotation":
        (base / "Annotations" / "000001.xml").unlink()
    data = VOCData(data_dir=str(tmp_path), download=False)
    with pytest.raises(ConfigError, match="download=true") as error:
        data.check()
    assert_one_line_naming(error, tmp_path)
    with pytest.raises(ConfigError):
        data.setup()


def test_voc_unknown_class_names_the_file(tmp_path):
    base = write_voc(tmp_path)
    bad = base / "Annotations" / "000002.xml"
    bad.write_text(bad.read_text().replace("<name>cat</name>", "<name>unicorn</name>"))
    with pytest.raises(ConfigError, match="unicorn") as error:
        VOCData(data_dir=str(tmp_path), download=False).check()
    assert_one_line_naming(error, bad)


def test_voc_download_fetches_only_missing_splits(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append(filename)
        write_voc(Path(download_root))

    monkeypatch.setattr("torchvision.datasets.voc.download_and_extract_archive", fake_download)
    data = VOCData(data_dir=str(tmp_path), download=True)
    data.check()
    data.check()  # all there now: nothing downloaded again
    assert calls == ["VOCtrainval_06-Nov-2007.tar"]


def test_voc_failed_download_is_a_quick_config_error(tmp_path, offline):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="download") as error:
        VOCData(data_dir=str(tmp_path / "fresh"), download=True).check()
    assert time.perf_counter() - start < 10 and offline
    assert_one_line_naming(error, tmp_path / "fresh")


# --- COCO ----------------------------------------------------------------------------------


def write_coco(root: Path) -> dict:
    """annotations/instances_{train,val}.json and train/, val/ image folders, COCO-style:
    unsorted, non-contiguous category ids, a crowd annotation, an image without boxes."""
    categories = [
        {"id": 7, "name": "kite", "supercategory": "x"},
        {"id": 2, "name": "bicycle", "supercategory": "x"},
        {"id": 11, "name": "zebra", "supercategory": "x"},
    ]
    images = [
        {"id": 10, "file_name": "a.jpg", "width": 80, "height": 40},
        {"id": 20, "file_name": "b.png", "width": 50, "height": 50},
        {"id": 30, "file_name": "c.png", "width": 64, "height": 96},
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 5, 30, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 2, "bbox": [50, 10, 20, 25], "iscrowd": 0},
        {"id": 3, "image_id": 10, "category_id": 11, "bbox": [0, 0, 80, 40], "iscrowd": 1},
        {"id": 4, "image_id": 30, "category_id": 11, "bbox": [4, 8, 40, 60], "iscrowd": 0},
    ]
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        folder = root / split
        folder.mkdir()
        for image in images:
            pixels = np.full((image["height"], image["width"], 3), 20, dtype=np.uint8)
            for annotation in annotations:
                if annotation["image_id"] == image["id"] and not annotation["iscrowd"]:
                    x, y, w, h = annotation["bbox"]
                    pixels[y : y + h, x : x + w] = 240
            Image.fromarray(pixels).save(folder / image["file_name"])
        content = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    return content


COCO_FILES = {
    "train_annotation_file": "annotations/instances_train.json",
    "train_image_dir": "train",
    "val_annotation_file": "annotations/instances_val.json",
    "val_image_dir": "val",
}


def test_coco_reads_its_own_format(tmp_path):
    write_coco(tmp_path)
    data = COCOData(
        data_dir=str(tmp_path), batch_size=3, num_classes=3, image_size=64, **COCO_FILES
    )
    assert data.num_classes == 3 and data.image_shape == (3, 64, 64)
    data.check()
    assert data.class_names == ["bicycle", "kite", "zebra"]  # sorted by id: 2, 7, 11
    data.setup()
    assert len(data.train_set) == 3 and data.test_set is data.val_set
    image, target = data.val_set[0]  # a.jpg, 80 x 40: scale 0.8, 16 px of grey above
    assert target["labels"].tolist() == [1, 0]  # kite, bicycle; the crowd zebra dropped
    expected = torch.tensor([[10, 5, 40, 25], [50, 10, 70, 35]]) * 0.8 + torch.tensor(
        [0, 16, 0, 16]
    )
    assert torch.allclose(target["boxes"], expected.float(), atol=1e-4)
    for box in target["boxes"]:
        x0, y0, x1, y1 = box.round().int().tolist()
        assert image[:, y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].min() > 0.8
    _, empty = data.val_set[1]  # b.png has no annotation: kept, with no boxes
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    _, tall = data.val_set[2]  # c.png, 64 x 96: 43 x 64 after the resize, 10 px grey left
    assert tall["labels"].tolist() == [2]
    sx, sy = 43 / 64, 64 / 96
    assert torch.allclose(
        tall["boxes"], torch.tensor([[4 * sx + 10, 8 * sy, 44 * sx + 10, 68 * sy]]), atol=1e-4
    )
    assert_detection_batch(next(iter(data.train_dataloader())), 64, 3, 3)


def test_coco_num_classes_must_match_the_file(tmp_path):
    write_coco(tmp_path)
    with pytest.raises(ConfigError, match="num_classes=3") as error:
        COCOData(data_dir=str(tmp_path), **COCO_FILES).check()  # default 80
    assert_one_line_naming(error, tmp_path / "annotations")


@pytest.mark.parametrize(
    "damage",
    ["no_json", "no_image_dir", "no_image", "not_json", "unknown_category", "other_categories"],
)
def test_coco_bad_files(tmp_path, damage):
    content = write_coco(tmp_path)
    val_json = tmp_path / "annotations" / "instances_val.json"
    if damage == "no_json":
        val_json.unlink()
    if damage == "no_image_dir":
        for image in (tmp_path / "val").iterdir():
            image.unlink()
        (tmp_path / "val").rmdir()
    if damage == "no_image":
        (tmp_path / "train" / "b.png").unlink()
    if damage == "not_json":
        val_json.write_text("{not json")
    if damage == "unknown_category":
        content["annotations"][0]["category_id"] = 99
        val_json.write_text(json.dumps(content))
    if damage == "other_categories":
        content["categories"][0]["name"] = "plane"
        val_json.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as error:
        COCOData(data_dir=str(tmp_path), num_classes=3, **COCO_FILES).check()
    assert_one_line_naming(error, tmp_path)


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shapes_det", "voc", "coco"])
def test_config_mirrors_the_constructor(tmp_path, name):
    text = (CONF_DATASET / f"{name}.yaml").read_text().splitlines()
    # Every key but _target_ (which the file's first line describes, above its defaults list).
    keys_lines = [
        i for i, line in enumerate(text) if line and not line.startswith(("#", " ", "_target_:"))
    ]
    node = dataset_option(name)
    assert_config_mirrors_the_constructor(node)
    for index in keys_lines:  # every key is explained by a comment line right above it
        assert text[index - 1].startswith("#"), text[index]
    if name != "shapes_det":
        assert OmegaConf.to_container(node)["data_dir"].startswith("${paths.data_dir}/")
    node.data_dir = str(tmp_path)
    data = instantiate(node)
    assert data.name == name and data.task == "detection"
    assert data.image_shape[0] == 3 and data.image_shape[1] % 32 == 0 and data.num_classes >= 5
