"""Global average pooling whose result does not depend on the summation order.

A float average computed by PyTorch and by ONNX Runtime sums in different orders, so the two
can differ in the last bit; where a quantizer reads the mean (MobileNetV3's squeeze-excite
squeeze, its classifier), a mean within one float32 ulp of a half-step then rounds to
neighbouring codes on the two sides, and the flipped code changes everything after it (issue
#27, measured in docs/integer_parity.md). Summed in float64, n float32 values are exact in any
order while their magnitudes span less than about 2^(29 - log2 n) (each has a 24-bit
significand, the sum needs log2 n more bits, and float64 holds 53): for a 4 x 4 map 2^25, for
56 x 56 about 2^17. The division by H x W is one correctly rounded IEEE operation,
and so is the cast back: PyTorch and the exported graph (Cast, ReduceSum, Div, Cast in
``lowbit.export.onnx_graph``) compute the very same float32 mean.
"""

from __future__ import annotations

import torch
from torch import nn


class GlobalAveragePool(nn.Module):
    """Mean over the spatial dimensions, keeping them as 1 x 1: ``nn.AdaptiveAvgPool2d(1)``,
    summed in float64 (module docstring). No state, so checkpoints of either load in both."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        total = torch.sum(x, dim=(-2, -1), keepdim=True, dtype=torch.float64)
        return (total / (height * width)).to(x.dtype)


__all__ = ["GlobalAveragePool"]
