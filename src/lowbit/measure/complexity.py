"""Multiply-accumulates of one forward pass, counted on the real tensor shapes with hooks."""

from __future__ import annotations

import torch
from torch import nn


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs per sample of a Conv2d (k_h k_w C_in/groups per output element) or Linear."""
    per_sample_outputs = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_sample_outputs * kh * kw * module.in_channels // module.groups
    return per_sample_outputs * module.in_features


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per layer name for one sample of ``input_shape`` (C, H, W); convs and linears only."""
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(
                lambda m, _inputs, output, name=name: counts.__setitem__(name, layer_macs(m, output))
            ))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counts
