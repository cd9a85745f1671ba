"""Fixed-point (Q-format) quantization, as a user would add it to lowbit from their own module.

Weights and activations sit on a grid of step 2^-frac_bits (a shift in hardware), clipped to the
k-bit range; gradients pass unchanged. Only lowbit's public API is used: ``Quantizer`` and the
grid contract (``symmetric_grid``, ``unsigned_grid``), ``Scheme`` and ``register_scheme``.
Stating ``grid()`` is all it takes for packing and the integer ONNX export to handle it.
"""

from __future__ import annotations

import torch

from lowbit.quant import Quantizer, Scheme, register_scheme, symmetric_grid, unsigned_grid


class FixedPointQuantizer(Quantizer):
    """round(x / 2^-f) clipped to the k-bit range, times 2^-f; straight-through gradient."""

    def __init__(self, bits: int, frac_bits: int, signed: bool = True):
        super().__init__(bits)
        self.step = 2.0**-frac_bits
        self.signed = signed

    def code_range(self) -> tuple[int, int]:
        if self.signed:
            m = (1 << (self.bits - 1)) - 1
            return -m, m
        return 0, (1 << self.bits) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_active:
            return x
        low, high = self.code_range()
        quantized = torch.clamp(torch.round(x / self.step), low, high) * self.step
        return x + (quantized - x).detach()

    def grid(self, x: torch.Tensor | None = None):
        if not self.is_active:
            return None
        step = torch.tensor(self.step)
        return symmetric_grid(self.bits, step) if self.signed else unsigned_grid(self.bits, step)


class PassThrough(Quantizer):
    def __init__(self):
        super().__init__(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_scheme("fixed_point")
class FixedPoint(Scheme):
    """Fixed-point weights (``weight_frac_bits``) and activations (``act_frac_bits``)."""

    gradient_bits = frozenset()  # gradients stay float
    activation_bits = weight_bits = frozenset(range(2, 9))

    def __init__(self, weight_frac_bits: int = 6, act_frac_bits: int = 4):
        self.weight_frac_bits = weight_frac_bits
        self.act_frac_bits = act_frac_bits

    def weight(self, bits: int) -> Quantizer:
        return FixedPointQuantizer(bits, self.weight_frac_bits, signed=True)

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
        return FixedPointQuantizer(bits, self.act_frac_bits, signed=signed)

    def gradient(self, bits: int) -> Quantizer:
        return PassThrough()
