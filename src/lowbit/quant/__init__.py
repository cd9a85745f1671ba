"""Quantization: maths (functional), state (modules), the grid contract (grid), methods
(schemes), surgery (convert), BatchNorm folding for deployment (fold).

A quantizer of your own subclasses ``Quantizer`` and states its ``IntegerGrid``; a method of
your own subclasses ``Scheme`` and registers it (docs/extending.md, "Write your own quantizer")."""

from lowbit.quant import functional
from lowbit.quant.convert import SUPPORTED_BITS, LayerBits, plan_bits, quantize_model
from lowbit.quant.fold import fold_bn
from lowbit.quant.functional import (
    dorefa_activation,
    dorefa_gradient,
    dorefa_weight,
    quantize_k,
)
from lowbit.quant.grid import IntegerGrid, symmetric_grid, unsigned_grid
from lowbit.quant.modules import QuantConv2d, QuantizedLayer, Quantizer, QuantLinear
from lowbit.quant.schemes import SCHEMES, Scheme, register_scheme

__all__ = [
    "IntegerGrid",
    "LayerBits",
    "QuantConv2d",
    "QuantLinear",
    "QuantizedLayer",
    "Quantizer",
    "SCHEMES",
    "SUPPORTED_BITS",
    "Scheme",
    "dorefa_activation",
    "dorefa_gradient",
    "dorefa_weight",
    "fold_bn",
    "functional",
    "plan_bits",
    "quantize_k",
    "quantize_model",
    "register_scheme",
    "symmetric_grid",
    "unsigned_grid",
]
