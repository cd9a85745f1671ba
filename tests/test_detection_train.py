"""Detection end to end: the real configs through lowbit.train.run, results.json, PNGs and W&B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wandb_offline import read_media, read_offline_run

from lowbit.cli import objective_values
from lowbit.train import RESULTS_FILE, run

TINY_SCENES = [
    "experiment=yolov3_tiny_shapes",
    "dataset.image_size=64",
    "dataset.train_size=32",
    "dataset.val_size=8",
    "dataset.test_size=8",
    "dataset.batch_size=8",
]


def test_detection_run_logs_map_costs_and_drawn_predictions(make_cfg):
    cfg = make_cfg(
        *TINY_SCENES,
        "quantizer=dorefa",
        "quant.wbits=4",
        "quant.abits=4",
        "detection.num_drawn=3",
        "detection.draw_score_threshold=0.0",
    )
    results = run(cfg)
    output_dir = Path(cfg.paths.output_dir)
    assert results["status"] == "ok" and results["task"] == "detection"
    metrics = results["metrics"]
    for key in (
        "val/map50",
        "val/map",
        "val/map50_best",
        "test/map50",
        "test/map",
        "val/box_loss",
        "val/obj_loss",
        "val/cls_loss",
        "model/size_bytes",
        "model/bops",
        "latency/ms",
    ):
        assert key in metrics, key
    # The detector is deployed too: its int8 heads decoded as the task decodes them.
    assert (output_dir / "model_int8.onnx").is_file() and metrics["latency/int8_ms"] > 0
    assert 0.0 <= metrics["export/map50_int8"] <= 1.0
    assert metrics["export/map50_fake_quant"] == pytest.approx(metrics["val/map50"], abs=1e-6)
    assert 0.0 <= metrics["val/map"] <= metrics["val/map50"] <= 1.0
    written = json.loads((output_dir / RESULTS_FILE).read_text())
    assert written["metrics"]["val/map50_best"] == metrics["val/map50_best"]
    # The sweep objective val/map50_best (the experiment's) and the default's val/acc_best
    # both read the detection metric.
    assert objective_values(cfg, metrics) == metrics["val/map50_best"]

    drawings = sorted((output_dir / "predictions").glob("val_*.png"))
    assert [p.name for p in drawings] == ["val_0.png", "val_1.png", "val_2.png"]
    picture = np.asarray(Image.open(drawings[0]))
    assert picture.shape == (384, 384, 3)  # enlarged 6x for readable labels
    # Boxes are drawn: with every prediction shown (threshold 0) the drawing has pixels of the
    # class colours that a grey-ish generated scene does not have.
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 10

    offline = read_offline_run(Path(results["wandb"]["dir"]))
    assert offline.summary["val/map50_best"] == pytest.approx(metrics["val/map50_best"])
    images = [row for row in offline.history if "val/predictions/count" in row]
    assert images and images[-1]["val/predictions/count"] == 3
    assert images[-1]["val/predictions/_type"] == "images/separated"
    # W&B's own boxes on the images as the model saw them (64 pixels, not the enlarged
    # drawing): every prediction with its score (threshold 0 here), and the ground truth.
    assert images[-1]["val/predictions/width"] == cfg.dataset.image_size
    all_boxes = images[-1]["val/predictions/all_boxes"]
    assert len(all_boxes) == 3
    truths = [read_media(offline, boxes["ground_truth"]["path"]) for boxes in all_boxes]
    predictions = [read_media(offline, boxes["predictions"]["path"]) for boxes in all_boxes]
    assert sum(len(truth["box_data"]) for truth in truths) > 0
    assert all(
        0.0 <= box["scores"]["score"] <= 1.0 and box["domain"] == "pixel"
        for found in predictions
        for box in found["box_data"]
    )
    assert predictions[0]["class_labels"] == truths[0]["class_labels"] != {}


def test_the_checkpoint_monitor_follows_the_detection_metric(make_cfg):
    """callbacks=default monitors val/acc; a detection run keeps its best val/map50 instead."""
    cfg = make_cfg(
        *TINY_SCENES, "logger=none", "trainer.limit_train_batches=1", "trainer.max_epochs=2"
    )
    results = run(cfg)
    assert results["status"] == "ok"
    checkpoints = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("*"))
    assert "last.ckpt" in checkpoints and any(n.startswith("epoch") for n in checkpoints)
