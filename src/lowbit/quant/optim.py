"""Optimizer parameter groups for the quantizers' own learned parameters (PACT's alpha).

PACT puts an L2 penalty on alpha and, in PaddleSlim, a larger learning rate: both are realised
here as parameter groups, not as terms added to the loss, so every torch optimizer and
scheduler applies them (a scheduler scales each group's own initial learning rate).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lowbit.quant.modules import LearnedClip

LR_MULT_KEY = "lr_mult"


def learned_clips(model: nn.Module) -> dict[str, LearnedClip]:
    """PACT quantizers by the name of the layer they serve ("features.1.0", not "...input_quantizer")."""
    return {name.rpartition(".")[0]: module for name, module in model.named_modules()
            if isinstance(module, LearnedClip)}


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The model's parameters split into the ordinary ones and one group per alpha setting.

    An alpha group carries ``weight_decay`` (when the quantizer sets ``alpha_decay``) and
    ``lr_mult``; ``apply_lr_mult`` turns the latter into the group's learning rate once the
    optimizer has filled in its defaults.
    """
    alpha_ids: set[int] = set()
    groups: dict[tuple, dict[str, Any]] = {}
    for clip in learned_clips(model).values():
        key = (clip.alpha_decay, clip.alpha_lr_mult)
        group = groups.setdefault(key, {"params": [], "name": "alpha", LR_MULT_KEY: key[1]})
        if clip.alpha_decay is not None:
            group["weight_decay"] = clip.alpha_decay
        group["params"].append(clip.alpha)
        alpha_ids.add(id(clip.alpha))
    ordinary = [p for p in model.parameters() if id(p) not in alpha_ids]
    return [{"params": ordinary, "name": "weights"}, *groups.values()]


def apply_lr_mult(optimizer) -> None:
    """Scale each group's learning rate by its ``lr_mult`` (call before building a scheduler)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get(LR_MULT_KEY, 1.0)
