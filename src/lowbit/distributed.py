"""Data-parallel training (``trainer=ddp``): who writes, and a check that the replicas agree.

Lightning's DDP runs one process per device (on CPU: the run's script started again with
LOCAL_RANK set, over the gloo backend). Gradients are averaged by DDP and BatchNorm's running
statistics are broadcast from rank 0 before every forward pass (``broadcast_buffers``); PACT's
calibrated alphas are averaged by ``lowbit.quant.modules.mean_over_replicas``. What a run
leaves behind (results.json, the W&B run, checkpoints, the printed summary) comes from global
rank 0 only; Lightning's loggers and ModelCheckpoint follow the same rule.

``ReplicaSync`` measures, at the end of training, how far every replica's alphas and BatchNorm
statistics are from rank 0's; results.json records it under ``distributed``.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

from lowbit.quant.modules import LearnedClip


def is_global_zero() -> bool:
    """True in the process that writes the run's files (the only one without DDP).

    Lightning sets the rank from the environment (LOCAL_RANK, RANK) at import and again when DDP
    starts, so this holds before any Trainer exists.
    """
    return rank_zero_only.rank == 0


def replica_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state that DDP does not keep equal through the gradients: alphas, BN statistics."""
    alphas = [m.alpha.detach().reshape(-1) for m in module.modules() if isinstance(m, LearnedClip)]
    statistics = [
        buffer.detach().reshape(-1).double()
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buffer in (m.running_mean, m.running_var)
        if buffer is not None
    ]
    return {
        "alpha": torch.cat(alphas).double() if alphas else torch.zeros(0, dtype=torch.float64),
        "bn": torch.cat(statistics) if statistics else torch.zeros(0, dtype=torch.float64),
    }


class ReplicaSync(pl.Callback):
    """After training under DDP: the largest difference of each replica's state from rank 0's."""

    def __init__(self):
        self.report: dict[str, Any] | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size < 2:
            return
        report: dict[str, Any] = {"world_size": trainer.world_size}
        for kind, values in replica_state(pl_module).items():
            gathered = trainer.strategy.all_gather(values.to(pl_module.device))  # [ranks, n]
            difference = (gathered - gathered[0]).abs()
            report[f"{kind}_max_diff"] = float(difference.max()) if difference.numel() else 0.0
        report["in_sync"] = report["alpha_max_diff"] == 0.0 and report["bn_max_diff"] == 0.0
        self.report = report
