"""Detections drawn on their images: what people look at to judge a detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes

# Ground truth in white, predictions in one colour per class (matplotlib's tab10 order).
CLASS_COLOURS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
GROUND_TRUTH_COLOUR = "#ffffff"
# Small network inputs (128 x 128) are enlarged by a whole factor (nearest neighbour) before
# drawing, so that the labels stay readable; boxes are scaled with them.
MIN_DRAWN_SIDE = 384


def draw_detections(
    image: torch.Tensor,
    detections: dict[str, torch.Tensor],
    class_names: list[str],
    ground_truth: dict[str, torch.Tensor] | None = None,
    min_score: float = 0.25,
) -> np.ndarray:
    """``image`` ([3, H, W] float in [0, 1]) with its boxes drawn, as uint8 [kH, kW, 3].

    Predictions scoring at least ``min_score`` are drawn in their class colour and labelled
    "class score"; the ground truth, if given, is drawn first as thin white boxes. Images
    smaller than ``MIN_DRAWN_SIDE`` are enlarged k times first.
    """
    factor = max(1, -(-MIN_DRAWN_SIDE // min(image.shape[-2:])))
    canvas = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    canvas = canvas.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    if ground_truth is not None and len(ground_truth["boxes"]):
        canvas = draw_bounding_boxes(
            canvas,
            ground_truth["boxes"].cpu().float() * factor,
            colors=GROUND_TRUTH_COLOUR,
            width=1,
        )
    keep = detections["scores"] >= min_score
    boxes = detections["boxes"][keep].cpu().float() * factor
    if len(boxes):
        labels = detections["labels"][keep].tolist()
        scores = detections["scores"][keep].tolist()
        names = [class_names[label] if label < len(class_names) else str(label) for label in labels]
        canvas = draw_bounding_boxes(
            canvas,
            boxes,
            labels=[f"{name} {score:.2f}" for name, score in zip(names, scores)],
            colors=[CLASS_COLOURS[label % len(CLASS_COLOURS)] for label in labels],
            width=2,
        )
    return canvas.permute(1, 2, 0).numpy()


def save_png(picture: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return path
