"""From YOLO head maps to boxes: decoding (YOLOv3, arXiv 1804.02767, Sec. 2.1) and NMS.

For the prediction of anchor a in grid cell (cx, cy) of a head with stride s:
box centre ((sigmoid(tx) + cx) s, (sigmoid(ty) + cy) s), size (p_w exp(tw), p_h exp(th)) with
(p_w, p_h) the anchor in input pixels; objectness sigmoid(to), class probabilities sigmoid of
the class logits (independent logistic classifiers, as YOLOv3 uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

# exp(tw) is clamped: an untrained or badly quantized head can output tw of 50+, whose exp
# overflows float32 and turns the box loss into NaN. exp(6) = 403 anchor widths is no limit.
MAX_LOG_SCALE = 6.0


@dataclass
class HeadPredictions:
    """One head's predictions, flattened per image over (anchor, row, column)."""

    boxes: torch.Tensor  # [B, N, 4] xyxy in input pixels
    objectness: torch.Tensor  # [B, N] logits
    class_logits: torch.Tensor  # [B, N, C]


def split_head(output: torch.Tensor, num_anchors: int) -> torch.Tensor:
    """``[B, A (5 + C), H, W]`` -> ``[B, A, H, W, 5 + C]``."""
    batch, channels, height, width = output.shape
    return output.view(batch, num_anchors, channels // num_anchors, height, width).permute(
        0, 1, 3, 4, 2
    )


def decode_head(raw: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """Boxes ``[B, A, H, W, 4]`` (xyxy, pixels) from a split head ``[B, A, H, W, 5 + C]``."""
    _, _, height, width, _ = raw.shape
    rows = torch.arange(height, device=raw.device, dtype=raw.dtype).view(1, 1, height, 1)
    cols = torch.arange(width, device=raw.device, dtype=raw.dtype).view(1, 1, 1, width)
    centre_x = (raw[..., 0].sigmoid() + cols) * stride
    centre_y = (raw[..., 1].sigmoid() + rows) * stride
    anchors = anchors.to(raw.dtype).view(1, -1, 1, 1, 2)
    half_w = anchors[..., 0] * raw[..., 2].clamp(max=MAX_LOG_SCALE).exp() / 2
    half_h = anchors[..., 1] * raw[..., 3].clamp(max=MAX_LOG_SCALE).exp() / 2
    return torch.stack(
        [centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=-1
    )


def decode_heads(
    outputs: list[torch.Tensor] | tuple[torch.Tensor, ...],
    head_anchors: list[torch.Tensor],
    strides: tuple[int, ...],
) -> HeadPredictions:
    """All heads' predictions, concatenated per image."""
    boxes, objectness, classes = [], [], []
    for output, anchors, stride in zip(outputs, head_anchors, strides):
        raw = split_head(output, len(anchors))
        batch = raw.shape[0]
        boxes.append(decode_head(raw, anchors, stride).reshape(batch, -1, 4))
        objectness.append(raw[..., 4].reshape(batch, -1))
        classes.append(raw[..., 5:].reshape(batch, -1, raw.shape[-1] - 5))
    return HeadPredictions(torch.cat(boxes, 1), torch.cat(objectness, 1), torch.cat(classes, 1))


@torch.no_grad()
def postprocess(
    predictions: HeadPredictions,
    score_threshold: float = 0.001,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
    image_size: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Per image ``{"boxes" [n, 4] xyxy, "scores" [n], "labels" [n]}`` after per-class NMS.

    A prediction's score is objectness x its best class probability (one label per box);
    boxes under ``score_threshold`` are dropped, the rest go through
    ``torchvision.ops.batched_nms`` (per class) and the ``max_detections`` best are kept. The
    low default threshold is the one for mAP, which needs the whole precision-recall curve;
    drawings use a higher one. ``image_size`` clips the boxes to the image.
    """
    results = []
    class_scores, labels = predictions.class_logits.sigmoid().max(dim=-1)
    scores = predictions.objectness.sigmoid() * class_scores
    for boxes, image_scores, image_labels in zip(predictions.boxes, scores, labels):
        keep = image_scores > score_threshold
        boxes, image_scores, image_labels = boxes[keep], image_scores[keep], image_labels[keep]
        if image_size is not None:
            boxes = boxes.clamp(0, image_size)
        kept = batched_nms(boxes.float(), image_scores.float(), image_labels, iou_threshold)
        kept = kept[:max_detections]  # batched_nms returns them by decreasing score
        results.append(
            {
                "boxes": boxes[kept].float(),
                "scores": image_scores[kept].float(),
                "labels": image_labels[kept],
            }
        )
    return results
