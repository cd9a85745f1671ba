"""Quantization methods: which quantizer modules a method puts on a layer.

A scheme answers three questions for one layer, given the bits the policy chose: how to
quantize the weight, the input activation and the output gradient. ``quantize_model`` looks
schemes up by the name the user writes (``quantizer=dorefa``); ``register_scheme`` adds one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lowbit.errors import ConfigError
from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.modules import (
    ChannelAbsMaxWeight,
    DoReFaActivation,
    DoReFaGradient,
    DoReFaSignedActivation,
    DoReFaWeight,
    FullPrecision,
    LearnedStep,
    LearnedStepOffset,
    PACTActivation,
    PACTSymmetricActivation,
    Quantizer,
)


class Scheme:
    """Base class. Subclasses take the method's options (``quant.*`` keys) as keyword arguments.

    ``activation(bits, signed)`` is told whether the layer's input can be negative (found by
    ``quantize_model``'s probe), so that no method clips half of a signed signal away.
    """

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
                if key == "abits" and getattr(bits, "signed_input", False):
                    allowed = allowed - {1}  # a signed grid needs a sign bit
                if value != FULL_PRECISION and value not in allowed:
                    shown = (
                        f"{min(allowed)}-{max(allowed)} or 32"
                        if allowed
                        else "only 32; choose a quantizer such as quantizer=dorefa"
                    )
                    target = f"quant.{key}" if where == "quant" else f"{key} of layer {where}"
                    raise ConfigError(
                        f"quantizer={self.name} cannot quantize to {target}={value} "
                        f"(allowed: {shown})"
                    )

    def weight(self, bits: int) -> Quantizer:
        raise NotImplementedError

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
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

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
        return FullPrecision()

    def gradient(self, bits: int) -> Quantizer:
        return FullPrecision()


@register_scheme("dorefa")
class DoReFa(Scheme):
    """DoReFa-Net (arXiv 1606.06160): Eq. 9/7 weights, Eq. 11 activations, Eq. 12 gradients.

    ``act_scale`` multiplies activations before the [0, 1] clip (1.0 in the paper; 0.1 in the
    model-compression implementation). Inputs that can be negative get the signed variant
    (clip to [-1, 1], 2^(k-1) - 1 steps each side) instead of Eq. 11's [0, 1] clip.
    """

    def __init__(self, act_scale: float = 1.0):
        if not act_scale > 0:
            raise ValueError(f"quant.act_scale must be > 0, got {act_scale}")
        self.act_scale = float(act_scale)

    def weight(self, bits: int) -> Quantizer:
        return DoReFaWeight(bits)

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
        if signed:
            return DoReFaSignedActivation(bits, self.act_scale)
        return DoReFaActivation(bits, self.act_scale)

    def gradient(self, bits: int) -> Quantizer:
        return DoReFaGradient(bits)


WEIGHT_QUANTIZERS = {"dorefa": DoReFaWeight, "channel_wise_abs_max": ChannelAbsMaxWeight}


@register_scheme("pact")
class PACT(Scheme):
    """PACT (Choi et al., arXiv 1805.06085): a learned clipping level alpha per layer.

    Activations: clip(x, 0, alpha) on an unsigned grid; where a layer's input can be negative
    (after hard-swish, leaky ReLU, or no activation), the symmetric form clip(x, -alpha, alpha)
    is used instead, since the unsigned one would clip half the signal away.
    Weights: DoReFa's quantizer, as in the paper, or ``channel_wise_abs_max`` (PaddleSlim).
    Gradients: DoReFa Eq. 12 at ``gbits``.

    Args:
        alpha_init: initial alpha of every layer (the paper: 10 on CIFAR-10; PaddleOCR: 20).
        alpha_decay: L2 coefficient on alpha; None uses the optimizer's weight decay (the paper).
        alpha_lr_mult: alpha's learning rate over the base one (PaddleSlim's built-in PACT: 1000).
        weight_quantizer: ``dorefa`` or ``channel_wise_abs_max``.
        alpha_calibration: None, or a percentile p in (0, 100]: the first training batch sets
            each alpha to the p-th percentile of what it clips (lowbit's addition; docs/results.md).
    """

    symmetric_everywhere = False

    def __init__(
        self,
        alpha_init: float = 10.0,
        alpha_decay: float | None = None,
        alpha_lr_mult: float = 1.0,
        weight_quantizer: str = "dorefa",
        alpha_calibration: float | None = None,
    ):
        if not alpha_init > 0:
            raise ConfigError(f"quant.alpha_init must be > 0, got {alpha_init}")
        if alpha_decay is not None and alpha_decay < 0:
            raise ConfigError(f"quant.alpha_decay must be >= 0 or null, got {alpha_decay}")
        if not alpha_lr_mult > 0:
            raise ConfigError(f"quant.alpha_lr_mult must be > 0, got {alpha_lr_mult}")
        if weight_quantizer not in WEIGHT_QUANTIZERS:
            raise ConfigError(
                f"quant.weight_quantizer={weight_quantizer!r} is unknown: "
                f"use {' or '.join(WEIGHT_QUANTIZERS)}"
            )
        if alpha_calibration is not None and not 0 < alpha_calibration <= 100:
            raise ConfigError(
                f"quant.alpha_calibration must be a percentile in (0, 100] or null, "
                f"got {alpha_calibration}"
            )
        self.alpha = {
            "alpha_init": float(alpha_init),
            "alpha_decay": alpha_decay,
            "alpha_lr_mult": float(alpha_lr_mult),
            "alpha_calibration": alpha_calibration,
        }
        self.weight_class = WEIGHT_QUANTIZERS[weight_quantizer]
        if weight_quantizer == "channel_wise_abs_max":
            self.weight_bits = frozenset(range(2, 17))  # a symmetric grid needs a sign bit

    def weight(self, bits: int) -> Quantizer:
        return self.weight_class(bits)

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
        if signed or self.symmetric_everywhere:
            return PACTSymmetricActivation(bits, **self.alpha)
        return PACTActivation(bits, **self.alpha)

    def gradient(self, bits: int) -> Quantizer:
        return DoReFaGradient(bits)


@register_scheme("pact_symmetric")
class PACTSymmetric(PACT):
    """Symmetric PACT on every quantized layer's input, as PaddleOCR quantizes MobileNetV3.

    Same options as ``pact`` (PaddleOCR's values: alpha_init 20, alpha_decay 2e-5); on inputs
    that are never negative (after ReLU) half of the signed grid stays unused.
    """

    symmetric_everywhere = True
    activation_bits = frozenset(range(2, 17))  # a signed grid needs a sign bit


@register_scheme("lsq")
class LSQ(Scheme):
    """LSQ (Esser et al., arXiv 1902.08153): a learned step size for weights and activations.

    Weights on a signed grid (Qn = 2^(k-1), Qp = 2^(k-1) - 1), one step per tensor as in the
    paper or, with ``per_channel_weights``, per output channel. Activations on the unsigned grid
    (Qn = 0, Qp = 2^k - 1), or the signed one where the probe finds negative inputs. Gradients:
    DoReFa Eq. 12 at ``gbits``, as for the other methods.
    """

    weight_bits = frozenset(range(2, 17))  # a signed weight grid needs a sign bit

    def __init__(self, per_channel_weights: bool = False):
        self.per_channel_weights = bool(per_channel_weights)

    def weight(self, bits: int) -> Quantizer:
        return LearnedStep(bits, signed=True, per_channel=self.per_channel_weights)

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
        return LearnedStep(bits, signed=signed)

    def gradient(self, bits: int) -> Quantizer:
        return DoReFaGradient(bits)


@register_scheme("lsq_plus")
class LSQPlus(LSQ):
    """LSQ+ (Bhalgat et al., arXiv 2004.09576): LSQ with a learned offset for activations.

    Every activation gets an unsigned grid with a learned offset (``LearnedStepOffset``), which
    covers a signed or asymmetric range by itself, so the signed-input probe has nothing to
    choose. Weights as in ``lsq``, their step initialised as LSQ's (the paper's 3-sigma weight
    initialisation is not used).
    """

    def activation(self, bits: int, signed: bool = False) -> Quantizer:
        return LearnedStepOffset(bits)
