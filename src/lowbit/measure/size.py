"""Bits-aware model size, computed from the quantized layers' own bit widths.

What is counted: every parameter (BatchNorm's running statistics are buffers that fold into the
conv at export, so they are left out, as in the usual "parameters x bits" accounting).
- A quantized layer's weight at its ``wbits``, packed: ceil(numel * wbits / 8) bytes, plus one
  float32 scale (4 bytes) per tensor, the same one-scale-per-tensor cost for every method.
- Every other parameter (biases, BatchNorm affine, learned clipping levels) at 32 bits.
The float32 size counts every parameter at 4 bytes. A packed checkpoint (export) measures the
real file; this is the figure it is compared against.
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

    @property
    def compression(self) -> float:
        return self.size_fp32_bytes / self.size_bytes


def model_size(model: nn.Module) -> ModelSize:
    quantized_weights = {}
    for module in model.modules():
        if isinstance(module, QuantizedLayer) and module.wbits < FULL_PRECISION:
            quantized_weights[id(module.weight)] = module.wbits
    params = size_bits = 0
    extra_bytes = 0
    for parameter in {id(p): p for p in model.parameters()}.values():
        numel = parameter.numel()
        params += numel
        bits = quantized_weights.get(id(parameter))
        if bits is None:
            size_bits += numel * parameter.element_size() * 8
        else:
            extra_bytes += math.ceil(numel * bits / 8) + SCALE_BYTES
    size_bytes = math.ceil(size_bits / 8) + extra_bytes
    return ModelSize(params=params, size_bytes=size_bytes, size_fp32_bytes=params * 4)
