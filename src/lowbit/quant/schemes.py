"""Quantization methods: which quantizer modules a method puts on a layer.

A scheme answers three questions for one layer, given the bits the policy chose: how to
quantize the weight, the input activation and the output gradient. ``quantize_model`` looks
schemes up by the name the user writes (``quantizer=dorefa``); ``register_scheme`` adds one.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from lowbit.errors import ConfigError
from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.modules import (
    DoReFaActivation,
    DoReFaGradient,
    DoReFaWeight,
    FullPrecision,
    Quantizer,
)


class Scheme:
    """Base class. Subclasses take the method's options (``quant.*`` keys) as keyword arguments."""

    name: str = ""
    #: bit widths this method can produce below full precision (32 is always allowed)
    weight_bits: frozenset[int] = frozenset(range(1, 17))
    activation_bits: frozenset[int] = frozenset(range(1, 17))
    gradient_bits: frozenset[int] = frozenset(range(1, 17))

    def check(self, plan: Mapping[str, Any]) -> None:
        """ConfigError if some bits (``LayerBits`` by layer name) are beyond this method."""
        for where, bits in plan.items():
            for key, allowed in (
                ("wbits", self.weight_bits),
                ("abits", self.activation_bits),
                ("gbits", self.gradient_bits),
            ):
                value = getattr(bits, key)
                if value != FULL_PRECISION and value not in allowed:
                    shown = (f"{min(allowed)}-{max(allowed)} or 32" if allowed
                             else "only 32; choose a quantizer such as quantizer=dorefa")
                    target = f"quant.{key}" if where == "quant" else f"{key} of layer {where}"
                    raise ConfigError(
                        f"quantizer={self.name} cannot quantize to {target}={value} "
                        f"(allowed: {shown})"
                    )

    def weight(self, bits: int) -> Quantizer:
        raise NotImplementedError

    def activation(self, bits: int) -> Quantizer:
        raise NotImplementedError

    def gradient(self, bits: int) -> Quantizer:
        raise NotImplementedError


SCHEMES: dict[str, type[Scheme]] = {}


def register_scheme(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    """Class decorator: make a scheme available as ``quantizer=<name>``."""

    def add(cls: type[Scheme]) -> type[Scheme]:
        cls.name = name
        SCHEMES[name] = cls
        return cls

    return add


@register_scheme("fp32")
class FullPrecisionScheme(Scheme):
    """The unquantized baseline: every tensor stays float32."""

    weight_bits = activation_bits = gradient_bits = frozenset()

    def weight(self, bits: int) -> Quantizer:
        return FullPrecision()

    activation = gradient = weight


@register_scheme("dorefa")
class DoReFa(Scheme):
    """DoReFa-Net (arXiv 1606.06160): Eq. 9/7 weights, Eq. 11 activations, Eq. 12 gradients.

    ``act_scale`` multiplies activations before the [0, 1] clip (1.0 in the paper; 0.1 in the
    model-compression implementation).
    """

    def __init__(self, act_scale: float = 1.0):
        if not act_scale > 0:
            raise ValueError(f"quant.act_scale must be > 0, got {act_scale}")
        self.act_scale = float(act_scale)

    def weight(self, bits: int) -> Quantizer:
        return DoReFaWeight(bits)

    def activation(self, bits: int) -> Quantizer:
        return DoReFaActivation(bits, self.act_scale)

    def gradient(self, bits: int) -> Quantizer:
        return DoReFaGradient(bits)
