"""Detections as W&B's native boxes, the form ``WandbLogger.log_image(boxes=...)`` takes.

Logged instead of boxes drawn into the pixels, so that W&B's viewer hides classes and filters by
score. Plain dictionaries, no W&B import: the detection task builds them without reaching the
rest of the W&B code (which imports the export).
"""

from __future__ import annotations

from typing import Any

import torch


def box_entry(
    box: torch.Tensor, label: int, caption: str, score: float | None = None
) -> dict[str, Any]:
    x0, y0, x1, y1 = (float(v) for v in box)
    entry: dict[str, Any] = {
        "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
        "domain": "pixel",
        "class_id": int(label),
        "box_caption": caption,
    }
    if score is not None:
        entry["scores"] = {"score": float(score)}
    return entry


def detection_boxes(
    found: dict[str, torch.Tensor],
    truth: dict[str, torch.Tensor] | None,
    class_names: list[str],
    min_score: float,
) -> dict[str, Any]:
    """W&B's native boxes for one image (``wandb.Image(..., boxes=...)``): ``predictions``
    scoring at least ``min_score`` with their scores, and the ``ground_truth``; xyxy pixel
    coordinates of the image as the model saw it."""
    class_labels = {index: name for index, name in enumerate(class_names)}

    def name(label: int) -> str:
        return class_names[label] if label < len(class_names) else str(label)

    keep = found["scores"] >= min_score
    predictions = [
        box_entry(box, label, f"{name(label)} {score:.2f}", score)
        for box, label, score in zip(
            found["boxes"][keep].tolist(),
            found["labels"][keep].tolist(),
            found["scores"][keep].tolist(),
        )
    ]
    groups = {"predictions": {"box_data": predictions, "class_labels": class_labels}}
    if truth is not None:
        groups["ground_truth"] = {
            "box_data": [
                box_entry(box, label, name(label))
                for box, label in zip(truth["boxes"].tolist(), truth["labels"].tolist())
            ],
            "class_labels": class_labels,
        }
    return groups
