"""Lightning callbacks of lowbit's own, switched on and off in conf/callbacks/."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from lowbit.measure.summary import format_table, summarize


class BitsSummary(pl.Callback):
    """Prints the per-layer map of the model as it trains (kind, W/A/G bits, parameters, MACs,
    bytes: ``lowbit.measure.summary``, the table of scripts/model_summary.py) when fit starts,
    once, on rank 0. The image shape comes from the data module (``image_shape``)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        input_shape = getattr(trainer.datamodule, "image_shape", None)
        if input_shape is None:  # MACs need an input; a bare dataloader has no image_shape
            return
        rows, totals = summarize(pl_module.model, tuple(input_shape))
        rank_zero_info("\n".join(["Quantization by layer:", *format_table(rows, totals)]))
