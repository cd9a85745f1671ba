"""Quantization: maths (functional), state (modules), methods (schemes), surgery (convert),
BatchNorm folding for deployment (fold)."""

from lowbit.quant import functional
from lowbit.quant.convert import LayerBits, SUPPORTED_BITS, plan_bits, quantize_model
from lowbit.quant.fold import fold_bn
from lowbit.quant.functional import (
    dorefa_activation,
    dorefa_gradient,
    dorefa_weight,
    quantize_k,
)
from lowbit.quant.modules import QuantConv2d, QuantLinear, QuantizedLayer
from lowbit.quant.schemes import SCHEMES, Scheme, register_scheme

__all__ = [
    "LayerBits", "QuantConv2d", "QuantLinear", "QuantizedLayer", "SCHEMES", "SUPPORTED_BITS",
    "Scheme", "dorefa_activation", "dorefa_gradient", "dorefa_weight", "fold_bn", "functional",
    "plan_bits", "quantize_k", "quantize_model", "register_scheme",
]
