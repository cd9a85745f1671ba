"""What every lowbit LightningModule shares: optimizers with the quantizers' parameter groups
(PACT's alpha, LSQ's step), the NaN stop, the logging of those parameters.
``ClassificationTask`` and ``DetectionTask`` add their loss and metrics."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from lowbit.compiled import compile_model
from lowbit.quant.optim import apply_lr_mult, logged_values, param_groups

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; the run ends with status ``diverged``."""


# Constructor arguments a task's saved hyperparameters leave out: the model is rebuilt from the
# run's config and passed back (``Task.load_from_checkpoint(path, model=model)``), and the
# factories are code, which a checkpoint loaded with weights_only=True cannot hold.
NOT_HYPERPARAMETERS = ("model", "optimizer", "scheduler")


class QuantTrainingTask(pl.LightningModule):
    """Holds ``model`` and the optimizer/scheduler factories (Hydra ``_partial_: true`` nodes;
    the scheduler steps once per epoch). A task only evaluating (one loaded from a checkpoint)
    needs no optimizer.

    Subclasses call ``self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS, logger=False)``:
    the rest of their arguments go into the checkpoint (the loggers get the whole composed
    config instead, ``lowbit.train.loggable_config``)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
    ):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.compiled_model: Callable | None = None
        self.channels_last = False

    def compile_training(self) -> None:
        """Run training forwards through torch.compile(model) (``compile=true``, lowbit.compiled).
        Kept out of the module tree, so the state dict and every eager use stay as they are.

        torch.compile's caches are emptied first: the jobs of a multirun share one process,
        and TorchDynamo keeps at most ``recompile_limit`` (8) graphs per function, the model
        class's ``forward``, over every model it has seen. A quantized model takes two (its
        first-batch initialisation, then the steady step), so from the fifth quantized job on,
        the compiled forward fell back to eager without a word."""
        torch._dynamo.reset()
        object.__setattr__(self, "compiled_model", compile_model(self.model))

    def train_channels_last(self) -> None:
        """Train in channels-last memory order (``channels_last=true``): the model's weights
        and every training batch NHWC, in which MobileNetV3's depthwise convolutions run
        faster on a CPU (docs/performance.md). Values are the same up to float rounding; the
        layout is the model's business only, so ``lowbit.train.run`` puts it back to NCHW
        before the measuring stages."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True

    def forward(self, x: torch.Tensor):
        if self.training and self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training and self.compiled_model is not None:
            return self.compiled_model(x)
        return self.model(x)

    def stop_if_diverged(self, loss: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """Raise ``Diverged`` on a NaN/inf loss. Agreed by every DDP process, so that all stop
        at the same step and none is left waiting for the others' gradients. When the batch's
        ``images`` hold NaN/inf themselves, the message blames the data, not the training."""
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss), all=False):
            where = f"at epoch {self.current_epoch}, step {self.global_step}"
            if images is not None and not bool(torch.isfinite(images).all()):
                raise Diverged(
                    f"a training batch holds NaN or inf pixel values {where}: the data set's "
                    f"files are damaged or its transform divides by zero; check them and start "
                    f"again"
                )
            raise Diverged(
                f"training loss is {loss.item()} {where}: lower optimizer.lr or use more bits "
                f"(quant.wbits/abits/gbits) and start again"
            )

    def log_loss(self, split: str, loss: torch.Tensor, batch_size: int | None = None) -> None:
        """The epoch mean of the loss (MeanMetric ``<split>_loss``), logged as ``<split>/loss``."""
        mean = getattr(self, f"{split}_loss")
        mean(loss.detach(), batch_size if batch_size is not None else 1)
        self.log(
            f"{split}/loss",
            mean,
            on_step=False,
            on_epoch=True,
            prog_bar=split != "test",
            batch_size=batch_size,
        )

    def log_learned(self) -> None:
        """The dashboard shows each layer's learned quantizer parameters as they train: PACT's
        ``alpha/<layer>``, LSQ's ``step/<layer>`` (``step/<layer>.weight`` for a weight's),
        LSQ+'s ``offset/<layer>``."""
        values = logged_values(self.model)
        if values:
            self.log_dict(values, on_step=True, on_epoch=False)

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError(
                f"{type(self).__name__} was built without an optimizer: pass "
                f"optimizer= (a factory taking the parameter groups) to train it"
            )
        optimizer = self.optimizer_factory(param_groups(self.model))
        apply_lr_mult(optimizer)  # alpha's learning-rate multiplier (lowbit.quant.optim)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
