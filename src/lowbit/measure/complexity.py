"""Multiply-accumulates and bit operations of one forward pass, counted with hooks on the real
tensor shapes."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.integer import float_arithmetic


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
            hooks.append(
                module.register_forward_hook(
                    lambda m, _inputs, output, name=name: counts.__setitem__(
                        name, layer_macs(m, output)
                    )
                )
            )
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        with float_arithmetic(model):  # every layer's own forward runs, and its hook with it
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return counts


def count_bops(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Bit operations per layer name: MACs x wbits x abits, full precision counting as 32.

    The BOPs measure of mixed-precision work (UNIQ, Baskin et al.); a float layer costs 32 x 32
    per MAC, the first layer wbits x ``input_bits`` (the image's bits; 32 when kept float).
    """
    bits = {
        name: (getattr(m, "wbits", FULL_PRECISION), getattr(m, "abits", FULL_PRECISION))
        for name, m in model.named_modules()
    }
    return {
        name: macs * bits[name][0] * bits[name][1]
        for name, macs in count_macs(model, input_shape).items()
    }
