"""Bits-aware model size, computed from the quantized layers' own bit widths.

These are computed figures. A run reports the measured one, the size of its packed checkpoint
(``lowbit.export.save_packed``), as ``model/size_bytes``, next to ``size_limit_bytes`` from here.

What is counted: every parameter (BatchNorm's running statistics are buffers that fold into the
conv at export, so they are left out, as in the usual "parameters x bits" accounting).
- A quantized layer's weight at its ``wbits``, packed: ceil(numel * wbits / 8) bytes, plus one
  float32 scale (4 bytes) per tensor, the same one-scale-per-tensor cost for every method.
- Every other parameter (biases, BatchNorm affine, learned clipping levels) at 32 bits.
The float32 size counts every parameter at 4 bytes. ``size_limit_bytes`` is the floor no file
can beat: sum over parameters of numel x bits / 8, with no scale, padding or BatchNorm statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.modules import QuantizedLayer

SCALE_BYTES = 4


@dataclass(frozen=True)
class ModelSize:
    params: int
    size_bytes: int
    size_fp32_bytes: int
    size_limit_bytes: float = 0.0

    @property
    def compression(self) -> float:
        return self.size_fp32_bytes / self.size_bytes


def quantized_weight_bits(model: nn.Module) -> dict[int, int]:
    """Bit width of each quantized weight tensor, by the tensor's id."""
    return {
        id(m.weight): m.wbits
        for m in model.modules()
        if isinstance(m, QuantizedLayer) and m.wbits < FULL_PRECISION
    }


def parameter_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes each parameter takes in a deployed model, by parameter name (shared ones once)."""
    bits_of = quantized_weight_bits(model)
    sizes = {}
    for name, parameter in model.named_parameters():  # named_parameters skips duplicates
        bits = bits_of.get(id(parameter))
        if bits is None:
            sizes[name] = parameter.numel() * parameter.element_size()
        else:
            sizes[name] = math.ceil(parameter.numel() * bits / 8) + SCALE_BYTES
    return sizes


def size_limit_bytes(model: nn.Module) -> float:
    """Sum over parameters of numel x bits / 8 (quantized weights at wbits, the rest at 32)."""
    bits_of = quantized_weight_bits(model)
    return sum(p.numel() * bits_of.get(id(p), FULL_PRECISION) / 8 for p in model.parameters())


def model_size(model: nn.Module) -> ModelSize:
    """Computed sizes: ``size_bytes`` packed weights plus one scale each, and the limit."""
    params = sum(p.numel() for p in model.parameters())
    return ModelSize(
        params=params,
        size_bytes=sum(parameter_bytes(model).values()),
        size_fp32_bytes=params * 4,
        size_limit_bytes=size_limit_bytes(model),
    )
