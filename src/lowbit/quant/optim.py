"""Optimizer parameter groups for the quantizers' own learned parameters (PACT's alpha, LSQ's
step and LSQ+'s offset), and their values by layer for logging.

PACT puts an L2 penalty on alpha and, in PaddleSlim, a larger learning rate; LSQ's steps get no
weight decay. Each quantizer states its settings (``Quantizer.optimizer_settings``), realised
here as parameter groups, not as terms added to the loss, so every torch optimizer and
scheduler applies them (a scheduler scales each group's own initial learning rate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lowbit.quant.modules import LearnedClip, Quantizer

LR_MULT_KEY = "lr_mult"
# The quantizer attributes of a quantized layer and the suffix its values are logged with.
ROLES = {"input_quantizer": "", "weight_quantizer": ".weight"}


def learned_clips(model: nn.Module) -> dict[str, LearnedClip]:
    """PACT quantizers by the name of the layer they serve: "features.1.0", not its quantizer's."""
    return {
        name.rpartition(".")[0]: module
        for name, module in model.named_modules()
        if isinstance(module, LearnedClip)
    }


def quantizers_with_parameters(model: nn.Module) -> dict[str, Quantizer]:
    """Quantizers that learn parameters, by where they act: the layer's name for its input
    ("features.1.0"), with ``.weight`` for its weight ("features.1.0.weight")."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, Quantizer) and module.learned_parameters():
            layer, _, role = name.rpartition(".")
            found[layer + ROLES.get(role, f".{role}")] = module
    return found


def learned_values(model: nn.Module) -> dict[str, dict[str, float]]:
    """{"alpha": {layer: value}, "step": {...}, "offset": {...}}: each learned quantizer
    parameter as a number (a per-channel step as its mean), for the logs and results.json."""
    values: dict[str, dict[str, float]] = {}
    for where, quantizer in quantizers_with_parameters(model).items():
        for kind, parameter in quantizer.learned_parameters().items():
            values.setdefault(kind, {})[where] = float(parameter.detach().float().mean())
    return values


def logged_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """``kind/where`` -> value (detached) of every learned quantizer parameter, for the logger."""
    return {
        f"{kind}/{where}": parameter.detach().float().mean()
        for where, quantizer in quantizers_with_parameters(model).items()
        for kind, parameter in quantizer.learned_parameters().items()
    }


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """The model's parameters split into the ordinary ones and one group per kind and setting.

    A quantizer group is named after its parameters' kind ("alpha", "step", "offset") and
    carries ``weight_decay`` (when the quantizer sets one) and ``lr_mult``; ``apply_lr_mult``
    turns the latter into the group's learning rate once the optimizer has filled in its
    defaults.
    """
    taken: set[int] = set()
    groups: dict[tuple, dict[str, Any]] = {}
    for quantizer in quantizers_with_parameters(model).values():
        settings = quantizer.optimizer_settings()
        decay, lr_mult = settings.get("weight_decay"), float(settings.get("lr_mult", 1.0))
        for kind, parameter in quantizer.learned_parameters().items():
            if id(parameter) in taken:
                continue
            group = groups.setdefault(
                (kind, decay, lr_mult), {"params": [], "name": kind, LR_MULT_KEY: lr_mult}
            )
            if decay is not None:
                group["weight_decay"] = decay
            group["params"].append(parameter)
            taken.add(id(parameter))
    ordinary = [p for p in model.parameters() if id(p) not in taken]
    return [{"params": ordinary, "name": "weights"}, *groups.values()]


def apply_lr_mult(optimizer) -> None:
    """Scale each group's learning rate by its ``lr_mult`` (call before building a scheduler)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get(LR_MULT_KEY, 1.0)
