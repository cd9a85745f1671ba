"""Integer arithmetic in evaluation: the model computes what its integer ONNX graph computes.

An integer runtime does not compute a quantized layer the way fake quantization does. ONNX
Runtime's QLinearConv (the kernel the export's DQ -> Conv -> Q fuses into) takes the input
codes q_x (zero point z_x, step s_x), the int8 weight codes q_w (per-channel step s_w, BatchNorm
folded into it) and an int32 bias b, and computes, per output channel c,

    acc   = sum (q_x - z_x) q_w + b_c                    exact int32 accumulation
    q_y   = clip(round(float(acc) * M_c) + z_y, lo, hi)  M_c = (s_x * s_w,c) / s_y in float32

with round half to even (Jacob et al., arXiv 1712.05877, Eq. 7 with a float multiplier, as
ORT's MlasRequantizeOutput does on x86). Fake quantization instead adds a float bias, folds
nothing, sums float products and divides by the next step, and the codes drift apart: by up to
a third of the codes of NIN's last layers (issue #27).

``use_integer_arithmetic(model)`` makes evaluation (``model.eval()``) compute the runtime's way,
bit for bit: every quantized layer whose output the next layer's input quantizer reads (through
ReLU, max pooling, ...: ``lowbit.quant.graph.hoisted_quantizers``, the placement the export
uses) computes

- its BatchNorm folded in with the running statistics (``lowbit.quant.fold``'s factors, in
  float64, rounded once to float32 as the export rounds them);
- its bias rounded to the int32 grid s_x * s_w,c;
- the accumulation on integer codes: float32 is exact while every partial sum stays below
  2^24, which ``accumulation_bound`` checks per batch from the weight codes and the largest
  input code; where it is not below, the layer accumulates in float64 (exact to 2^53);
- the requantization above, in the runtime's order and rounding;

and hands on the centre of its output code's bin, which the next layer's input quantizer maps
back onto that very code. Layers with a float output (a classifier, a detector's heads, NIN's
last conv before its pooling) compute as before: the runtime computes them in float too, and
they agree to float rounding. Where the export adds what training does not have (8-bit
requantization of outputs that reach hard-swish or a residual sum, ``plan_requantization``),
the codes after it still differ; ``scripts/export.py --parity`` names those layers.

Training (``model.train()``) computes as it always did: BatchNorm on the batch's statistics,
float arithmetic; evaluation, checkpoint selection, the test metrics and the export all see the
integer arithmetic. ``float_arithmetic(model)`` switches it off for a block (calibration
observes float activations).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.quant.fold import foldable
from lowbit.quant.graph import UntraceableModel, hoisted_quantizers, trace
from lowbit.quant.modules import QuantizedLayer, Quantizer

log = logging.getLogger(__name__)

#: The arithmetic a run's evaluation computes with, recorded in results.json (``arithmetic``):
#: 1, fake quantization in float (before issue #27), with the paper's 256-level 8-bit DoReFa
#: weights; 2, the narrow-range 8-bit DoReFa weights and this module's integer evaluation.
#: The report never pools runs of different arithmetic.
ARITHMETIC_VERSION = 2
FLOAT32_EXACT = 1 << 24  # integers up to 2^24 are exact in float32, and sums of them below it


@dataclass(frozen=True)
class IntegerOutput:
    """A layer that ends in the next layer's input quantizer: ``quantizer`` (not a submodule of
    this layer), whether a ReLU folds into its clip, and the BatchNorm folded in (or None)."""

    quantizer: Quantizer
    relu: bool
    batchnorm: nn.BatchNorm2d | None


class IntegerSequential(nn.Sequential):
    """An ``nn.Sequential`` whose layers with an ``integer_output`` evaluate in integer
    arithmetic (the module docstring), their BatchNorm folded in; the same children, names and
    state dict as the Sequential it replaces. Training runs the children one by one, as
    ``nn.Sequential`` does."""

    def forward(self, x):
        if self.training:
            return super().forward(x)
        skip = None
        for module in self:
            if module is skip:
                continue
            output = getattr(module, "integer_output", None)
            if output is not None and module.integer_arithmetic:
                x = integer_forward(module, x, output)
                skip = output.batchnorm
            else:
                x = module(x)
        return x


def use_integer_arithmetic(model: nn.Module) -> list[str]:
    """Make ``model``'s evaluation integer (module docstring); returns the layers that compute
    in integers. A model torch.fx cannot trace keeps float evaluation, with one log line."""
    candidates = {
        name
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLayer) and module.input_quantizer.is_active
    }
    if not candidates:
        return []
    try:
        gm = trace(model)
    except UntraceableModel as error:
        log.warning("evaluation stays in float arithmetic: %s", error)
        return []
    modules = dict(model.named_modules())
    hoisted, _direct = hoisted_quantizers(gm, candidates)
    chosen = []
    for source, where in hoisted.items():
        producer, batchnorm = producing_layer(source, modules)
        if producer is None or producer not in candidates:
            continue  # a float-input layer, or no layer at all (the model's input)
        layer = modules[producer]
        consumer = modules[where.consumer.target]
        object.__setattr__(  # a reference, not a submodule: the quantizer stays where it is
            layer, "integer_output", IntegerOutput(consumer.input_quantizer, where.relu, batchnorm)
        )
        layer.integer_arithmetic = True
        parent = modules[producer.rpartition(".")[0]] if "." in producer else model
        if type(parent) is nn.Sequential:
            parent.__class__ = IntegerSequential  # same object: parents and optimizers keep it
        if isinstance(parent, IntegerSequential):
            chosen.append(producer)
        else:  # nothing would run the integer forward: leave the layer as it was
            object.__delattr__(layer, "integer_output")
    return chosen


def producing_layer(source, modules: dict[str, nn.Module]):
    """(layer name, folded BatchNorm) for a hoisted point's source node: the layer itself, or a
    foldable BatchNorm right after it in the same Sequential; (None, None) otherwise."""
    if source.op != "call_module":
        return None, None
    module = modules[source.target]
    if isinstance(module, QuantizedLayer):
        return source.target, None
    if not isinstance(module, nn.BatchNorm2d):
        return None, None
    before = source.args[0]
    parent_name, _, bn_name = source.target.rpartition(".")
    if before.op != "call_module" or before.target.rpartition(".")[0] != parent_name:
        return None, None
    parent = modules[parent_name] if parent_name else None
    if parent is None or not isinstance(parent, nn.Sequential):
        return None, None
    names = list(parent._modules)
    conv_name = before.target.rpartition(".")[2]
    index = names.index(bn_name)
    conv = modules[before.target]
    if (
        index == 0
        or names[index - 1] != conv_name
        or not isinstance(conv, (QuantizedLayer))
        or not isinstance(conv, nn.Conv2d)
        or not foldable(module)
        or len(before.users) != 1
    ):
        return None, None
    return before.target, module


@contextlib.contextmanager
def float_arithmetic(model: nn.Module):
    """Within the block, ``model`` evaluates in float arithmetic (fake quantization)."""
    layers = [m for m in model.modules() if getattr(m, "integer_output", None) is not None]
    previous = [m.integer_arithmetic for m in layers]
    for layer in layers:
        layer.integer_arithmetic = False
    try:
        yield model
    finally:
        for layer, value in zip(layers, previous):
            layer.integer_arithmetic = value


def integer_layers(model: nn.Module) -> list[str]:
    """The layers of ``model`` that evaluate in integer arithmetic."""
    return [
        name
        for name, m in model.named_modules()
        if getattr(m, "integer_output", None) is not None and m.integer_arithmetic
    ]


# -- the arithmetic --------------------------------------------------------------------------


def folded_factors(
    layer: nn.Module, batchnorm: nn.BatchNorm2d | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(BatchNorm's factor s_c in float32, or None; the folded bias in float32), computed in
    float64 and rounded once, exactly as ``lowbit.quant.fold.folded_conv`` folds for export."""
    out_channels = layer.weight.shape[0]
    bias = (
        layer.bias.detach().double()
        if layer.bias is not None
        else torch.zeros(out_channels, dtype=torch.float64, device=layer.weight.device)
    )
    if batchnorm is None:
        return None, bias.float()
    scale = batchnorm.weight.double() / torch.sqrt(batchnorm.running_var.double() + batchnorm.eps)
    folded_bias = (bias - batchnorm.running_mean.double()) * scale + batchnorm.bias.double()
    return scale.float(), folded_bias.float()


def channel_steps(grid, out_channels: int) -> torch.Tensor:
    """A weight grid's step per output channel, float32."""
    step = grid.scale.float()
    return step if grid.per_channel else step.expand(out_channels)


def accumulation_bound(weight_codes: torch.Tensor, largest_input: torch.Tensor) -> torch.Tensor:
    """An upper bound on every partial sum of the accumulation: the largest sum of |weight
    codes| of one output channel times the largest |input code|."""
    return weight_codes.abs().flatten(1).sum(1).max() * largest_input


def accumulate(layer: nn.Module, x_codes: torch.Tensor, w_codes: torch.Tensor) -> torch.Tensor:
    """sum (q_x - z_x) q_w of every output, exact: float32 while ``accumulation_bound`` stays
    below 2^24, float64 otherwise."""
    bound = accumulation_bound(w_codes, x_codes.abs().max())
    dtype = torch.float32 if bool(bound < FLOAT32_EXACT) else torch.float64
    x_codes, w_codes = x_codes.to(dtype), w_codes.to(dtype)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(
            x_codes, w_codes, None, layer.stride, layer.padding, layer.dilation, layer.groups
        )
    return F.linear(x_codes, w_codes)


def requantization(
    input_step: torch.Tensor, weight_steps: torch.Tensor, output_step: torch.Tensor
) -> torch.Tensor:
    """M_c = (s_x * s_w,c) / s_y in float32, in ONNX Runtime's order (QLinearConv)."""
    return (input_step.float() * weight_steps.float()) / output_step.float()


@torch.no_grad()
def integer_forward(layer: nn.Module, x: torch.Tensor, output: IntegerOutput) -> torch.Tensor:
    """The layer (and its folded BatchNorm) as the integer runtime computes it; returns the
    centre of each output code's bin on the consumer's input scale (module docstring)."""
    x_values = layer.input_quantizer(x)
    x_grid = layer.input_quantizer.grid(x)
    weight_quantizer = layer.weight_quantizer
    w_grid = weight_quantizer.grid(layer.weight)
    y_grid = output.quantizer.grid()
    if x_grid is None or w_grid is None or y_grid is None or x_grid.per_channel:
        # a grid not set yet (an image range before any training batch): float, as before
        y = layer(x)
        return output.batchnorm(y) if output.batchnorm is not None else y
    x_step = x_grid.scale.float().to(x.device)
    x_codes = torch.round(x_values.float() / x_step)  # q_x - z_x, exact integers
    w_codes = weight_quantizer.integer_codes(layer.weight)
    accumulator = accumulate(layer, x_codes, w_codes)
    factor, bias = folded_factors(layer, output.batchnorm)
    weight_steps = channel_steps(w_grid, w_codes.shape[0]).to(x.device)
    if factor is not None:
        weight_steps = weight_steps * factor
    shape = (1, -1) + (1,) * (accumulator.dim() - 2)
    rounded_bias = bias_codes(bias, x_step, weight_steps).reshape(shape)
    total = (accumulator.double() + rounded_bias).float()  # float(int32 acc), as the runtime
    multiplier = requantization(x_step, weight_steps, y_grid.quantize_scale.to(x.device))
    low = max(y_grid.qmin, y_grid.zero_point) if output.relu else y_grid.qmin
    codes = torch.round(total * multiplier.reshape(shape)).clamp_(
        low - y_grid.zero_point, y_grid.qmax - y_grid.zero_point
    )
    # The bin's centre on the consumer's input scale: its quantizer maps it back to this code.
    return codes * y_grid.quantize_scale.float().to(x.device)


def bias_codes(
    bias: torch.Tensor, input_step: torch.Tensor, weight_steps: torch.Tensor
) -> torch.Tensor:
    """The int32 bias on the grid s_x * s_w,c (as float64 integers): what the export stores."""
    return torch.round(bias.double() / (input_step.float() * weight_steps.float()).double())


__all__ = [
    "ARITHMETIC_VERSION",
    "IntegerSequential",
    "accumulation_bound",
    "float_arithmetic",
    "integer_layers",
    "requantization",
    "use_integer_arithmetic",
]
