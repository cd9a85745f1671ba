"""Object detection as a LightningModule: YOLO loss, decoding + NMS, mAP, drawn predictions.

The counterpart of ``ClassificationTask`` for models with YOLO heads (``YOLOv3Tiny``): the same
optimizer and scheduler factories, the same divergence check and PACT alpha logging, so that
``train.py``, sweeps, results.json and the W&B summary treat both alike. Metrics:
``{split}/loss`` (and its ``box_loss``, ``obj_loss``, ``cls_loss`` terms), ``{val,test}/map50``
(mAP at IoU 0.5, VOC's metric), ``{val,test}/map`` (mAP averaged over IoU 0.5:0.95, COCO's) from
torchmetrics' ``MeanAveragePrecision``, and ``val/map50_best``.

After every validation epoch the first ``num_drawn`` validation images are drawn with their
predictions (and the ground truth in white): saved as PNG under ``predictions_dir`` (the last
epoch's overwrite the previous ones) and logged to W&B as ``val/predictions``, each image with
W&B's native boxes (predictions with their scores, and the ground truth) rather than drawn ones,
so that the W&B viewer can hide classes and filter by score.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.detection import MeanAveragePrecision

from lowbit.detection.decode import decode_heads, postprocess
from lowbit.detection.draw import draw_detections, save_png
from lowbit.detection.loss import YOLOLoss
from lowbit.detection.wandb_boxes import detection_boxes
from lowbit.tasks.base import (
    NOT_HYPERPARAMETERS,
    OptimizerFactory,
    QuantTrainingTask,
    SchedulerFactory,
)

LOSS_TERMS = ("box", "obj", "cls")


class DetectionTask(QuantTrainingTask):
    """Trains a YOLO-headed ``model`` (quantized or not) on ``(images, targets)`` batches.

    Args:
        model: returns raw head maps and has ``head_anchors()`` and ``strides``.
        num_classes, class_names: of the data set (names label the drawings).
        optimizer, scheduler: factories, as for ``ClassificationTask``.
        loss: keyword arguments of ``YOLOLoss`` (term weights, ``ignore_iou``).
        score_threshold, iou_threshold, max_detections: decoding for mAP (``postprocess``).
        draw_score_threshold: predictions drawn on the images score at least this.
        num_drawn: validation images drawn each epoch (0: none).
        predictions_dir: where the drawings go as PNG (None: not saved).
    """

    task = "detection"  # what the models and data sets it pairs with say (lowbit.build)

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        class_names: list[str] | None = None,
        loss: dict | None = None,
        score_threshold: float = 0.001,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
        draw_score_threshold: float = 0.25,
        num_drawn: int = 4,
        predictions_dir: str | Path | None = None,
    ):
        super().__init__(model, optimizer, scheduler)
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)
        self.num_classes = num_classes
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.loss = YOLOLoss(model.head_anchors(), model.strides, num_classes, **(loss or {}))
        self.decoding = {
            "score_threshold": score_threshold,
            "iou_threshold": iou_threshold,
            "max_detections": max_detections,
        }
        self.draw_score_threshold = draw_score_threshold
        self.num_drawn = num_drawn
        self.predictions_dir = Path(predictions_dir) if predictions_dir else None
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_loss", MeanMetric())
            for term in LOSS_TERMS:
                setattr(self, f"{split}_{term}_loss", MeanMetric())
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        self.val_map50_best = MaxMetric()
        self.val_map50_best.persistent(True)  # a resumed run remembers its best epoch
        self._drawn: list[tuple[torch.Tensor, dict, dict]] = []

    def _loss(self, outputs, targets, split: str) -> torch.Tensor:
        terms = self.loss(outputs, targets)
        batch = len(targets)
        self.log_loss(split, terms.total, batch)
        for term, value in zip(LOSS_TERMS, (terms.box, terms.objectness, terms.classes)):
            metric = getattr(self, f"{split}_{term}_loss")
            metric(value, batch)
            self.log(f"{split}/{term}_loss", metric, on_step=False, on_epoch=True, batch_size=batch)
        return terms.total

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self._loss(self(images), targets, "train")
        self.stop_if_diverged(loss, images)
        self.log_learned()
        return loss

    def _evaluate(self, batch, split: str, batch_idx: int) -> None:
        images, targets = batch
        outputs = self(images)
        self._loss(outputs, targets, split)
        predictions = decode_heads(outputs, self.model.head_anchors(), self.model.strides)
        detections = postprocess(predictions, image_size=images.shape[-1], **self.decoding)
        getattr(self, f"{split}_map").update(detections, targets)
        if split == "val" and len(self._drawn) < self.num_drawn:
            for image, found, truth in zip(images, detections, targets):
                if len(self._drawn) < self.num_drawn:
                    self._drawn.append(
                        (
                            image.cpu(),
                            {k: v.cpu() for k, v in found.items()},
                            {k: v.cpu() for k, v in truth.items()},
                        )
                    )

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def _log_map(self, split: str) -> float:
        metric = getattr(self, f"{split}_map")
        values = metric.compute()
        metric.reset()
        map50, map_all = float(values["map_50"]), float(values["map"])
        # -1 is torchmetrics' "no ground truth at all"; a set without objects scores 0.
        map50, map_all = max(map50, 0.0), max(map_all, 0.0)
        self.log(f"{split}/map50", map50, prog_bar=True, sync_dist=True)
        self.log(f"{split}/map", map_all, sync_dist=True)
        return map50

    def on_validation_epoch_end(self) -> None:
        map50 = self._log_map("val")
        drawn, self._drawn = self._drawn, []
        if self.trainer.sanity_checking:
            return
        self.val_map50_best(torch.tensor(map50))
        self.log("val/map50_best", self.val_map50_best.compute(), prog_bar=True, sync_dist=True)
        if self.trainer.is_global_zero:
            self.show_predictions(drawn)

    def on_test_epoch_end(self) -> None:
        self._log_map("test")

    def show_predictions(self, drawn: list[tuple[torch.Tensor, dict, dict]]) -> None:
        pictures = [
            draw_detections(
                image, found, self.class_names, truth, min_score=self.draw_score_threshold
            )
            for image, found, truth in drawn
        ]
        if not pictures:
            return
        if self.predictions_dir is not None:
            for index, picture in enumerate(pictures):
                save_png(picture, self.predictions_dir / f"val_{index}.png")
        for logger in self.loggers:
            if isinstance(logger, pl.loggers.WandbLogger):
                images = [
                    (image.float().clamp(0, 1) * 255)
                    .round()
                    .to(torch.uint8)
                    .permute(1, 2, 0)
                    .numpy()
                    for image, _, _ in drawn
                ]
                boxes = [
                    detection_boxes(found, truth, self.class_names, self.draw_score_threshold)
                    for _, found, truth in drawn
                ]
                logger.log_image(
                    key="val/predictions",
                    images=images,
                    boxes=boxes,
                    caption=[
                        f"epoch {self.current_epoch}, val image {i}" for i in range(len(images))
                    ],
                )
