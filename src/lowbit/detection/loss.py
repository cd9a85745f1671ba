"""The YOLOv3 training loss: best-anchor target assignment, GIoU box loss, objectness and class BCE.

Assignment (YOLOv3, arXiv 1804.02767, Sec. 2.1): each ground-truth box goes to the one anchor,
over all heads, whose shape has the highest IoU with its own (both centred at the origin), in
the grid cell of that head that contains the box's centre. That prediction learns the box, the
object and the class; every other prediction learns "no object", except predictions whose
decoded box already overlaps some ground truth by more than ``ignore_iou`` (0.5 in the paper):
they are left out of the objectness loss, neither pushed up nor down.

Box loss: GIoU (Rezatofighi et al., arXiv 1902.09630) between the decoded box and the ground
truth, instead of the paper's squared error on (tx, ty, tw, th): one term, scale invariant, no
per-size weighting to tune. Objectness and classes: binary cross-entropy with logits (YOLOv3's
independent logistic classifiers). Every term is summed over an image's predictions and averaged
over the batch, as darknet does; the weights multiply the three terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss

from lowbit.detection.decode import decode_head, split_head


def shape_iou(sizes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """IoU ``[N, A]`` of boxes ``[N, 2]`` (w, h) with anchors ``[A, 2]``, all centred together."""
    inter = torch.minimum(sizes[:, None], anchors[None]).prod(-1)
    return inter / (sizes.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)


@dataclass
class LossTerms:
    total: torch.Tensor
    box: torch.Tensor
    objectness: torch.Tensor
    classes: torch.Tensor
    assigned: int  # ground-truth boxes that reached a prediction (all of them)


class YOLOLoss:
    """YOLOv3's loss for heads of ``strides`` with ``head_anchors`` (see the module docstring).

    ``__call__(outputs, targets)`` takes the model's raw head maps and the targets of a batch
    (a list of ``{"boxes": [n, 4] xyxy pixels, "labels": [n]}``) and returns ``LossTerms``.
    """

    def __init__(
        self,
        head_anchors: list[torch.Tensor],
        strides: tuple[int, ...],
        num_classes: int,
        box_weight: float = 1.0,
        objectness_weight: float = 1.0,
        class_weight: float = 1.0,
        ignore_iou: float = 0.5,
    ):
        self.head_anchors = [anchors.detach().float() for anchors in head_anchors]
        self.strides = tuple(strides)
        self.num_classes = num_classes
        self.box_weight = box_weight
        self.objectness_weight = objectness_weight
        self.class_weight = class_weight
        self.ignore_iou = ignore_iou

    def __call__(self, outputs, targets: list[dict[str, torch.Tensor]]) -> LossTerms:
        device = outputs[0].device
        batch = outputs[0].shape[0]
        image_index = torch.cat(
            [torch.full((len(t["labels"]),), i, dtype=torch.long) for i, t in enumerate(targets)]
        ).to(device)
        gt_boxes = torch.cat([t["boxes"] for t in targets]).to(device).float().reshape(-1, 4)
        gt_labels = torch.cat([t["labels"] for t in targets]).to(device).long()
        gt_sizes = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=1e-6)
        gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2

        # Best anchor over all heads; heads' anchors laid end to end in head order.
        all_anchors = torch.cat(self.head_anchors).to(device)
        best = shape_iou(gt_sizes, all_anchors).argmax(dim=1) if len(gt_boxes) else gt_labels
        first_anchor = 0
        box_loss = outputs[0].new_zeros(())
        objectness_loss = outputs[0].new_zeros(())
        class_loss = outputs[0].new_zeros(())
        assigned = 0
        for output, anchors, stride in zip(outputs, self.head_anchors, self.strides):
            anchors = anchors.to(device)
            raw = split_head(output, len(anchors)).float()
            _, _, height, width, _ = raw.shape
            boxes = decode_head(raw, anchors, stride)  # [B, A, H, W, 4]

            mine = (best >= first_anchor) & (best < first_anchor + len(anchors))
            first_anchor += len(anchors)
            b, anchor = image_index[mine], best[mine] - (first_anchor - len(anchors))
            col = (gt_centres[mine, 0] / stride).long().clamp(0, width - 1)
            row = (gt_centres[mine, 1] / stride).long().clamp(0, height - 1)
            assigned += int(mine.sum())

            objectness_target = torch.zeros_like(raw[..., 4])
            objectness_target[b, anchor, row, col] = 1.0
            considered = ~self.ignored(boxes.detach(), image_index, gt_boxes, batch)
            considered[b, anchor, row, col] = True
            objectness_loss = objectness_loss + F.binary_cross_entropy_with_logits(
                raw[..., 4][considered], objectness_target[considered], reduction="sum"
            )
            if mine.any():
                box_loss = box_loss + generalized_box_iou_loss(
                    boxes[b, anchor, row, col], gt_boxes[mine], reduction="sum"
                )
                class_target = F.one_hot(gt_labels[mine], self.num_classes).to(raw.dtype)
                class_loss = class_loss + F.binary_cross_entropy_with_logits(
                    raw[b, anchor, row, col, 5:], class_target, reduction="sum"
                )

        box_loss, objectness_loss, class_loss = (
            term / batch for term in (box_loss, objectness_loss, class_loss)
        )
        total = (
            self.box_weight * box_loss
            + self.objectness_weight * objectness_loss
            + self.class_weight * class_loss
        )
        return LossTerms(
            total, box_loss.detach(), objectness_loss.detach(), class_loss.detach(), assigned
        )

    def ignored(
        self, boxes: torch.Tensor, image_index: torch.Tensor, gt_boxes: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """``[B, A, H, W]`` True where a prediction overlaps a ground truth by > ignore_iou."""
        flat = boxes.reshape(batch, -1, 4)
        ignored = torch.zeros(flat.shape[:2], dtype=torch.bool, device=boxes.device)
        for i in range(batch):
            mine = gt_boxes[image_index == i]
            if len(mine):
                ignored[i] = box_iou(flat[i], mine).max(dim=1).values > self.ignore_iou
        return ignored.view(boxes.shape[:-1])
