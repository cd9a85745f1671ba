"""Every random stream of a training run: seeded, saved in its checkpoints, restored on resume.

Lightning restores weights, optimizer, scheduler and loop counters from a checkpoint, but not
the random number generators, so a resumed run would shuffle, augment and draw DoReFa gradient
noise differently from the run it continues. ``RandomState`` (a Callback) adds to every
checkpoint the states of Python's, NumPy's and torch's global generators (CPU and CUDA) and the
draw counts of the gradient noise, and puts them back when training starts from a checkpoint.

Choices:
- The DoReFa gradient noise (Eq. 12) comes from a counter-based generator (``lowbit.quant.
  functional``): each gradient quantizer's stream is keyed by the run seed, the data-parallel
  rank and the layer, and its state is one draw count per layer. Its streams are independent of
  the global generator, so the noise does not shift the shuffling when the bits change, and
  a checkpoint stores just the counts.
- States are captured when a checkpoint is written and restored in ``on_fit_start``: after
  Lightning has restored the rest, before the training data loader's iterator draws its seeds
  (Lightning creates it before ``on_train_start`` when resuming). The sanity check in between
  runs inside Lightning's ``isolate_rng``, and nothing between an end-of-epoch checkpoint and
  the next epoch's first draw uses random numbers, so a run resumed from ``last.ckpt``
  continues the very same streams: on CPU its metrics equal those of the uninterrupted run.
  A checkpoint written mid-epoch (on SIGTERM/SIGINT) resumes reproducibly but not
  bit-identically: Lightning starts a fresh data loader for the rest of that epoch. Data
  loader workers (``dataset.num_workers > 0``) keep their own generators in other processes,
  which no checkpoint sees.
- Everything is stored as tensors, ints, floats and tuples, so checkpoints still load with
  ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from lowbit.quant.modules import gradient_quantizers, use_noise_stream

log = logging.getLogger(__name__)


def capture_global_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global generator states, in weights_only-loadable types."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    # A checkpoint from a machine with another GPU count keeps this machine's CUDA streams.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RandomState(pl.Callback):
    """Keys the gradient noise at fit start; saves and restores every generator (module doc).

    Args:
        seed: the run seed; None draws the noise seed from torch's (unseeded) global generator.
    """

    def __init__(self, seed: int | None):
        self.seed = seed
        self.model: torch.nn.Module | None = None
        self.pending: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return "RandomState"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = self.seed if self.seed is not None else int(torch.initial_seed()) % (1 << 63)
        rank = trainer.global_rank if trainer is not None else 0
        self.model = pl_module if use_noise_stream(pl_module, seed, rank) else None
        if self.pending is None:
            return
        restore_global_state(self.pending["global"])
        counts = self.pending.get("gradient_noise")
        if self.model is not None and counts is not None:
            restore_draw_counts(self.model, counts)
        self.pending = None

    def state_dict(self) -> dict[str, Any]:
        counts = (
            None
            if self.model is None
            else {name: int(q.draws) for name, q in gradient_quantizers(self.model).items()}
        )
        return {"global": capture_global_state(), "gradient_noise": counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pending = state_dict  # applied in on_fit_start, once the streams are keyed


def restore_draw_counts(model: torch.nn.Module, counts: Any) -> None:
    """Give each gradient quantizer its checkpointed draw count. A checkpoint from before the
    counter-based generator (a torch.Generator state) cannot continue its stream: one warning,
    and the noise starts afresh."""
    if not isinstance(counts, dict):
        log.warning(
            "this checkpoint holds the old gradient-noise generator's state; the noise "
            "restarts from the run seed (results differ from an uninterrupted old run)"
        )
        return
    for name, quantizer in gradient_quantizers(model).items():
        if name in counts:
            quantizer.draws.fill_(int(counts[name]))
