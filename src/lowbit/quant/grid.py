"""The grid contract: what a quantizer computes, stated as integers, for packing and export.

Every quantizer module answers ``grid(x)`` with an ``IntegerGrid`` (or None when it leaves the
tensor in float), the way torch.ao's fake-quantize modules answer ``calculate_qparams()`` and
Brevitas's proxies ``scale()``/``zero_point()``/``bit_width()``. A weight quantizer also answers
``integer_codes(w)``. Packed checkpoints (``lowbit.export.packing``), the integer ONNX export
(``lowbit.export.onnx_graph``) and the parity check read only this interface, never a quantizer's
class, so a method written outside lowbit deploys like the built-in ones.

The grid of a tensor x is

    code  = clip(round(x / input_scale) + zero_point, qmin, qmax)      (what an integer runtime
    value = (code - zero_point) * scale                                  stores and computes with)

with ``input_scale == scale`` except where a method computes on a rescaled input (DoReFa's
``act_scale``: the input step is 1/(n act_scale), a code is worth 1/n). Codes run from ``qmin``
to ``qmax`` in steps of ``code_step``: DoReFa Eq. 9 weights are the odd integers 2c - n, every
other integer, so that their zero point stays an integer (0) as ONNX requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class IntegerGrid:
    """One quantized tensor's integer grid (see the module docstring for the two maps).

    Args:
        bits: the bit width; the grid has at most 2^bits levels.
        signed: whether codes can be negative (int8 at runtime) or not (uint8).
        scale: float32, what one code step is worth: 0-d (per tensor) or 1-d (per channel).
        qmin, qmax: the integer range of the codes.
        zero_point: the code of the value 0.
        axis: the channel axis of a 1-d ``scale`` (0, the output channels, for weights).
        code_step: the spacing of the codes (2 for DoReFa Eq. 9 and Eq. 7 weights).
        input_scale: the step x is divided by before rounding; None means ``scale``.
    """

    bits: int
    signed: bool
    scale: torch.Tensor
    qmin: int
    qmax: int
    zero_point: int = 0
    axis: int | None = None
    code_step: int = 1
    input_scale: torch.Tensor | None = None

    def __post_init__(self):
        if self.qmin > self.qmax or (self.qmax - self.qmin) % self.code_step:
            raise ValueError(f"grid codes {self.qmin}..{self.qmax} in steps of {self.code_step}")
        if self.levels > 1 << self.bits:
            raise ValueError(f"{self.levels} levels do not fit {self.bits} bits")
        if self.scale.dim() > 1 or (self.scale.dim() == 1) != (self.axis is not None):
            raise ValueError("scale is 0-d (per tensor) or 1-d with an axis (per channel)")

    @property
    def levels(self) -> int:
        return (self.qmax - self.qmin) // self.code_step + 1

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def quantize_scale(self) -> torch.Tensor:
        return self.scale if self.input_scale is None else self.input_scale

    def broadcast(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-channel ``values`` shaped to broadcast against ``like`` along ``axis``."""
        if not self.per_channel:
            return values
        shape = [1] * like.dim()
        shape[self.axis] = -1
        return values.reshape(shape)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """(codes - zero_point) * scale, in float32."""
        scale = self.broadcast(self.scale.float(), codes)
        return (codes.float() - self.zero_point) * scale

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of x: clip(round(x / input_scale) + zero_point, qmin, qmax) (an integer
        runtime's QuantizeLinear followed by the grid's clip)."""
        step = self.broadcast(self.quantize_scale.to(x.dtype), x)
        codes = torch.round(x / step) + self.zero_point
        return codes.clamp(self.qmin, self.qmax).to(torch.int64)

    def indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes as level indices 0 .. levels - 1 (what a packed file stores in ``bits`` bits)."""
        return (codes - self.qmin) // self.code_step

    def codes_of(self, indices: torch.Tensor) -> torch.Tensor:
        return indices * self.code_step + self.qmin

    def check_codes(self, codes: torch.Tensor, where: str = "") -> None:
        """ValueError unless every code lies on the grid's levels."""
        if codes.numel() == 0:
            return
        off_range = bool((codes < self.qmin).any() or (codes > self.qmax).any())
        off_step = bool(((codes - self.qmin) % self.code_step).any())
        if off_range or off_step:
            raise ValueError(
                f"{where}: codes outside {self.qmin}..{self.qmax} (step {self.code_step})"
            )


def symmetric_grid(
    bits: int, scale: torch.Tensor, axis: int | None = None, input_scale: torch.Tensor | None = None
) -> IntegerGrid:
    """Signed, zero point 0, codes -m..m with m = 2^(k-1) - 1 (the symmetric methods' grid)."""
    m = (1 << (bits - 1)) - 1
    return IntegerGrid(bits, True, scale, -m, m, axis=axis, input_scale=input_scale)


def unsigned_grid(
    bits: int, scale: torch.Tensor, input_scale: torch.Tensor | None = None
) -> IntegerGrid:
    """Unsigned, zero point 0, codes 0..n with n = 2^k - 1 (clip(x, 0, .) methods' grid)."""
    return IntegerGrid(bits, False, scale, 0, (1 << bits) - 1, input_scale=input_scale)


__all__ = ["IntegerGrid", "symmetric_grid", "unsigned_grid"]
