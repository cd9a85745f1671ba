"""Checkpoints: written on interrupt, read safely, checked against the model before training.

- Two Lightning ModelCheckpoints (conf/callbacks/default.yaml) keep the best checkpoint by the
  task's monitor and write ``checkpoints/last.ckpt`` at the end of every epoch (a second one,
  not ``save_last``, which skips epochs that saved no best checkpoint). ``SaveOnInterrupt`` writes
  ``last.ckpt`` also when a run is stopped: on SIGTERM Lightning finishes the current batch and
  raises SIGTERMException (it does nothing else off SLURM); Ctrl-C (SIGINT) is deferred here to
  the end of the current batch too, so the saved weights never sit half-way through an
  optimizer step (a second Ctrl-C stops at once). SIGKILL cannot be caught: a killed run
  continues from its last end-of-epoch checkpoint.
- Every checkpoint is read with ``torch.load(weights_only=True)``: tensors and plain
  containers only, so a crafted file cannot run code. lowbit puts nothing else into its
  checkpoints (no pickled hyper-parameters, RNG states as tensors).
- ``AtomicCheckpointIO`` writes every checkpoint whole or not at all (``lowbit.storage``): a
  full disk or a SIGKILL mid-write leaves the previous ``last.ckpt`` as it was, so the run
  resumes from it.
- ``check_checkpoint`` runs in the pre-flight checks: the file exists, loads, is a Lightning
  checkpoint and its weights have the composed model's names and shapes, so a wrong or
  truncated checkpoint costs a second, not a data load.
"""

from __future__ import annotations

import pickle
import signal
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import nn

from lowbit.errors import ConfigError
from lowbit.storage import write_atomically

MODEL_PREFIX = "model."  # ClassificationTask keeps the network as ``self.model``
SHOWN = 3  # names quoted in a mismatch message


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, read with weights_only=True; ConfigError saying what is wrong.

    ``mmap`` keeps the tensors on disk: the pre-flight check reads names and shapes only.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint file {path}: give the path of a .ckpt that exists")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:  # weights_only refused an object
        reason = str(error).split("\n")[0]
        raise ConfigError(
            f"checkpoint {path} holds more than tensors and plain containers ({reason[:120]}); "
            f"lowbit loads checkpoints with torch.load(weights_only=True) and runs no code from "
            f"files: use a checkpoint written by lowbit"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())[:120]
        raise ConfigError(
            f"checkpoint {path} is truncated or not a PyTorch checkpoint ({reason}); use an intact "
            f"checkpoints/*.ckpt of a lowbit run"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(
            f"checkpoint {path} is not a Lightning checkpoint (it has no state_dict): "
            f"use checkpoints/last.ckpt or the best checkpoint of a lowbit run"
        )
    return checkpoint


def check_checkpoint(path: Path, model: nn.Module) -> None:
    """ConfigError unless the checkpoint's network weights fit ``model`` (the quantized model).

    Compared: every parameter and buffer name with its shape. A checkpoint of another model, of
    another quantizer (PACT has alphas, DoReFa none) or of another number of classes differs.
    """
    saved = {
        name[len(MODEL_PREFIX) :]: tensor
        for name, tensor in load_checkpoint(path)["state_dict"].items()
        if name.startswith(MODEL_PREFIX)
    }
    expected = model.state_dict()
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} of this model's weights are not in it "
                f"({', '.join(missing[:SHOWN])}{', ...' if len(missing) > SHOWN else ''})"
            )
        if unexpected:
            parts.append(
                f"it has {len(unexpected)} weights this model lacks "
                f"({', '.join(unexpected[:SHOWN])}"
                f"{', ...' if len(unexpected) > SHOWN else ''})"
            )
        raise ConfigError(
            f"checkpoint {path} is one of another model: {'; '.join(parts)}; "
            f"resume with the model, quantizer and dataset it was trained with"
        )
    for name, tensor in expected.items():
        if tuple(saved[name].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"checkpoint {path} does not fit this model: {name} has shape "
                f"{list(saved[name].shape)} there and {list(tensor.shape)} here; resume with the "
                f"model, number of classes and dataset it was trained with"
            )


class Interrupted(SystemExit):
    """The run was stopped by SIGTERM or SIGINT; the exit status is 128 + the signal's number.

    A SystemExit (not an Exception), so that a multirun stops too instead of going on.
    """

    def __init__(self, signal_name: str, run_dir: Path):
        super().__init__(128 + int(getattr(signal, signal_name)))
        saved = (Path(run_dir) / "checkpoints" / "last.ckpt").is_file()
        self.message = (
            f"run stopped by {signal_name}; continue it with: python train.py resume={run_dir}"
            if saved
            else f"run stopped by {signal_name} before its first checkpoint: start it again"
        )

    def __str__(self) -> str:
        return self.message

    @classmethod
    def from_exception(cls, error: BaseException, run_dir: Path) -> Interrupted:
        """Lightning ends fit() with SIGTERMException on SIGTERM, with SystemExit on Ctrl-C."""
        return cls("SIGTERM" if isinstance(error, SIGTERMException) else "SIGINT", run_dir)


class SaveOnInterrupt(pl.Callback):
    """Writes ``dirpath/filename.ckpt`` when training stops on SIGTERM or SIGINT (module doc).

    Runs on every rank (Lightning's save_checkpoint writes on rank 0 only and synchronises the
    others); under DDP the deferred Ctrl-C is agreed by all ranks before anyone stops, so no rank
    is left waiting in a collective.
    """

    def __init__(self, dirpath: str | Path, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.interrupt_requested = False
        self.previous_handler: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.interrupt_requested = False
        if threading.current_thread() is threading.main_thread():
            self.previous_handler = signal.signal(signal.SIGINT, self._defer_interrupt)

    def _defer_interrupt(self, signum, frame) -> None:
        if self.interrupt_requested:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupt_requested = True

    def _restore_handler(self) -> None:
        if self.previous_handler is not None:
            signal.signal(signal.SIGINT, self.previous_handler)
            self.previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        requested = self.interrupt_requested
        if trainer.world_size > 1:
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        if requested:
            raise KeyboardInterrupt

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_handler()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()
        if trainer.state.fn == TrainerFn.FITTING and isinstance(
            exception, (KeyboardInterrupt, SIGTERMException)
        ):
            trainer.save_checkpoint(self.path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving through ``lowbit.storage.write_atomically``: into a
    temporary file in the checkpoint's own folder, then renamed over it. (Lightning's writes
    into the system's temporary folder and copies the file across, which is neither atomic nor
    on the output folder's disk.) A storage fault comes out as ``StorageFault``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        write_atomically(path, lambda handle: torch.save(checkpoint, handle))
