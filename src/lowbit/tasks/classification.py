"""Image classification as a LightningModule: cross-entropy, top-1/top-5 accuracy, best val acc."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lowbit.tasks.base import (
    NOT_HYPERPARAMETERS,
    OptimizerFactory,
    QuantTrainingTask,
    SchedulerFactory,
)


class ClassificationTask(QuantTrainingTask):
    """Trains ``model`` (any nn.Module returning logits, quantized or not) on labelled images.

    ``optimizer`` and ``scheduler`` are factories that take the parameters / the optimizer
    (Hydra ``_partial_: true`` nodes); the scheduler steps once per epoch.
    """

    task = "classification"  # what the models and data sets it pairs with say (lowbit.build)

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ):
        super().__init__(model, optimizer, scheduler)
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)
        top_k = (1, 5) if num_classes > 5 else (1,)
        self.metric_names = {1: "acc", 5: "acc_top5"}
        for split in ("train", "val", "test"):
            for k in top_k if split != "train" else (1,):
                metric = MulticlassAccuracy(num_classes=num_classes, top_k=k, average="micro")
                setattr(self, f"{split}_{self.metric_names[k]}", metric)
            setattr(self, f"{split}_loss", MeanMetric())
        self.top_k = top_k
        # In the checkpoint, so that a resumed run still knows the best epoch before the stop.
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)

    def _shared_step(self, batch, split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.log_loss(split, loss)
        for k in self.top_k if split != "train" else (1,):
            metric = getattr(self, f"{split}_{self.metric_names[k]}")
            metric(logits.detach(), labels)
            self.log(
                f"{split}/{self.metric_names[k]}",
                metric,
                on_step=False,
                on_epoch=True,
                prog_bar=k == 1,
            )
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        self.stop_if_diverged(loss, batch[0])
        self.log_learned()
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the sanity check must not count towards the best
            return
        self.val_acc_best(self.val_acc.compute())
        # The same value on every DDP process (val_acc syncs itself); sync_dist says so.
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")
