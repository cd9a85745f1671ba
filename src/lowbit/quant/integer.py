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

- its BatchNorm folded in with the running statistics (``lowbit.quant.fold``'s factors, as
  PyTorch's eval kernel computes them, the same the export folds with);
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

from lowbit.quant.fold import batchnorm_factors, foldable
from lowbit.quant.graph import UntraceableModel, feeds_a_layer, hoisted_quantizers, trace
from lowbit.quant.modules import OutputRequantizer, QuantizedLayer, Quantizer

log = logging.getLogger(__name__)

#: The arithmetic a run's evaluation computes with, recorded in results.json (``arithmetic``):
#: 1, fake quantization in float (before issue #27), with the paper's 256-level 8-bit DoReFa
#: weights; 2, the narrow-range 8-bit DoReFa weights and this module's integer evaluation.
#: The report never pools runs of different arithmetic.
ARITHMETIC_VERSION = 2
FLOAT32_EXACT = 1 << 24  # integers up to 2^24 are exact in float32, and sums of them below it
REQUANTIZED_BITS = 8  # the integer runtime's activation type (uint8)


@dataclass(frozen=True)
class IntegerOutput:
    """A layer that ends in the next layer's input quantizer: ``quantizer`` (not a submodule of
    this layer), whether a ReLU folds into its clip, and the BatchNorm folded in (or None)."""

    quantizer: Quantizer
    relu: bool
    batchnorm: nn.BatchNorm2d | None

    def compute(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """``integer_forward(layer, x, self)``: how a layer reaches it without importing this
        module (``lowbit.quant.modules`` is imported by it)."""
        return integer_forward(layer, x, self)


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
            y = None
            if output is not None and module.integer_arithmetic and output.batchnorm is not None:
                y = integer_forward(module, x, output)
            if y is None:
                x = module(x)  # float, or a layer that computes its integer output itself
            else:
                x, skip = y, output.batchnorm
        return x


def integer_input_layers(model: nn.Module) -> set[str]:
    return {
        name
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLayer) and module.input_quantizer.is_active
    }


def requantize_outputs(model: nn.Module, gm: torch.fx.GraphModule | None = None) -> list[str]:
    """Give every integer-input layer whose output no input quantizer reads, but that reaches
    another integer-input layer (through hard-swish, a residual sum, squeeze-excite's product,
    ...; a layer kept in float reads a float tensor, in training as deployed), an 8-bit
    ``OutputRequantizer``: after its BatchNorm, as the next child of their Sequential, or, with
    no BatchNorm, as the layer's ``output_quantizer``. Those are the outputs an integer
    runtime must requantize (the export used to calibrate them on its own). Returns the layers."""
    candidates = integer_input_layers(model)
    if not candidates:
        return []
    if gm is None:
        try:
            gm = trace(model)
        except UntraceableModel as error:
            log.warning("layer outputs stay float: %s", error)
            return []
    modules = dict(model.named_modules())
    hoisted, _direct = hoisted_quantizers(gm, candidates)
    feeds = feeds_a_layer(gm, candidates)  # a float layer reads a float tensor, as deployed
    added = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in candidates:
            continue
        after = folded_batchnorm_node(node, modules)
        end = after if after is not None else node
        if end in hoisted or not feeds[end]:
            continue  # the next layer's quantizer ends it, or nothing integer follows
        if after is None:
            modules[node.target].output_quantizer = OutputRequantizer(REQUANTIZED_BITS)
        else:
            parent_name, _, bn_name = after.target.rpartition(".")
            insert_after(modules[parent_name], bn_name, OutputRequantizer(REQUANTIZED_BITS))
        added.append(node.target)
    return added


def insert_after(parent: nn.Sequential, name: str, module: nn.Module) -> None:
    """Insert ``module`` into ``parent`` right after its child ``name``, under a new name."""
    new_name = "requant" if "requant" not in parent._modules else f"{name}_requant"
    children = list(parent._modules.items())
    parent._modules.clear()
    for key, child in children:
        parent._modules[key] = child
        if key == name:
            parent._modules[new_name] = module


def folded_batchnorm_node(node: torch.fx.Node, modules: dict[str, nn.Module]):
    """The fx node of the foldable BatchNorm right after layer ``node`` in the same Sequential
    (``lowbit.quant.fold``'s rule), or None."""
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module":
        return None
    bn_node = users[0]
    bn = modules[bn_node.target]
    parent_name, _, bn_name = bn_node.target.rpartition(".")
    layer_parent, _, layer_name = node.target.rpartition(".")
    if not (foldable(bn) and isinstance(modules[node.target], nn.Conv2d)) or (
        parent_name != layer_parent
    ):
        return None
    parent = modules[parent_name]
    names = list(parent._modules)
    if not isinstance(parent, nn.Sequential) or names.index(bn_name) != names.index(layer_name) + 1:
        return None
    return bn_node


# The attribute ``use_integer_arithmetic`` sets on a model: whether its outputs that no input
# quantizer reads are requantized (``quant.requantize_outputs``); the export reads it
# (``requantizes_outputs``).
REQUANTIZES_OUTPUTS = "lowbit_requantizes_outputs"


def requantizes_outputs(model: nn.Module) -> bool:
    """Whether the integer export requantizes ``model``'s layer outputs that no input
    quantizer reads: with the model's own ``OutputRequantizer``s, or, for a model that never
    went through ``use_integer_arithmetic``, calibrated by the export (the arithmetic before
    issue #27). False after ``use_integer_arithmetic(model, requantize=False)``: those outputs
    stay float, in training as in the graph."""
    return getattr(model, REQUANTIZES_OUTPUTS, True)


def use_integer_arithmetic(model: nn.Module, requantize: bool = True) -> list[str]:
    """Make ``model``'s evaluation integer (module docstring), after giving the outputs that
    need one an ``OutputRequantizer`` (``requantize_outputs``); returns the layers that compute
    in integers. A model torch.fx cannot trace keeps float evaluation, with one log line.

    ``requantize=False`` (``quant.requantize_outputs=false``) gives them none: a conv before
    hard-swish, leaky ReLU, a residual sum or squeeze-excite's product hands on its float
    output, as the papers' fake quantization does, and the export writes it so (DQ -> Conv ->
    activation -> Q, no Q between). OpenVINO fuses that whole chain into its int8 conv; ONNX
    Runtime runs such a conv in float, and its codes agree with evaluation to float rounding
    rather than bit for bit (docs/export.md, "Two contracts")."""
    setattr(model, REQUANTIZES_OUTPUTS, requantize)
    candidates = integer_input_layers(model)
    if not candidates:
        return []
    try:
        if requantize:
            requantize_outputs(model)
        gm = trace(model)
    except UntraceableModel as error:
        log.warning("evaluation stays in float arithmetic: %s", error)
        return []
    modules = dict(model.named_modules())
    requantizers = {
        name for name, module in modules.items() if isinstance(module, OutputRequantizer)
    }
    hoisted, _direct = hoisted_quantizers(gm, candidates | requantizers)
    chosen = []
    for source, where in hoisted.items():
        producer, batchnorm = producing_layer(source, modules)
        if producer is None or producer not in candidates:
            continue  # a float-input layer, or no layer at all (the model's input)
        consumer = modules[where.consumer.target]
        quantizer = consumer if isinstance(consumer, Quantizer) else consumer.input_quantizer
        layer = modules[producer]
        if batchnorm is not None:  # the Sequential computes the layer and its BatchNorm
            parent = modules[producer.rpartition(".")[0]]
            if type(parent) is nn.Sequential:
                parent.__class__ = IntegerSequential  # same object: parents, optimizers keep it
            if not isinstance(parent, IntegerSequential):
                continue
        object.__setattr__(  # a reference, not a submodule: the quantizer stays where it is
            layer, "integer_output", IntegerOutput(quantizer, where.relu, batchnorm)
        )
        layer.integer_arithmetic = True
        chosen.append(producer)
    for name in sorted(candidates - set(chosen)):
        layer = modules[name]
        if layer.output_quantizer is not None:  # ends in its own requantization
            ends_in = IntegerOutput(layer.output_quantizer, False, None)
            object.__setattr__(layer, "integer_output", ends_in)
            layer.integer_arithmetic = True
            chosen.append(name)
    order = {name: i for i, name in enumerate(modules)}
    return sorted(chosen, key=order.__getitem__)


def producing_layer(source: torch.fx.Node, modules: dict[str, nn.Module]):
    """(layer name, folded BatchNorm) for a hoisted point's source node: the layer itself, or the
    conv a foldable BatchNorm right after it folds into (``folded_batchnorm_node``); (None, None)
    otherwise."""
    if source.op != "call_module":
        return None, None
    module = modules[source.target]
    if isinstance(module, QuantizedLayer):
        return source.target, None
    before = source.args[0] if source.args else None
    if (
        isinstance(before, torch.fx.Node)
        and before.op == "call_module"
        and isinstance(modules[before.target], QuantizedLayer)
        and folded_batchnorm_node(before, modules) is source
    ):
        return before.target, module
    return None, None


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
    """(BatchNorm's factor s_c, or None; the folded bias), float32 on the layer's device, as
    the export folds them (``lowbit.quant.fold.batchnorm_factors``)."""
    device = layer.weight.device
    if batchnorm is None:
        bias = layer.bias
        out_channels = layer.weight.shape[0]
        return None, (
            bias.detach().float() if bias is not None else torch.zeros(out_channels, device=device)
        )
    scale, bias = batchnorm_factors(batchnorm, layer.bias)
    return scale.to(device), bias.to(device)


def channel_steps(grid, out_channels: int) -> torch.Tensor:
    """A weight grid's step per output channel, float32."""
    step = grid.scale.float()
    return step if grid.per_channel else step.expand(out_channels)


def accumulation_bound(weight_codes: torch.Tensor, largest_input: torch.Tensor) -> torch.Tensor:
    """An upper bound on every partial sum of the accumulation: the largest sum of |weight
    codes| of one output channel times the largest |input code|."""
    return weight_codes.abs().flatten(1).sum(1).max() * largest_input


@torch.no_grad()
def worst_case_bounds(model: nn.Module) -> dict[str, int]:
    """For each layer that evaluates in integers, ``accumulation_bound`` with the largest input
    code its grid allows: where it reaches 2^24 (``FLOAT32_EXACT``), float32 could round a
    partial sum, and evaluation accumulates that layer in float64 whenever a batch's own bound
    gets there."""
    bounds = {}
    for name in integer_layers(model):
        layer = model.get_submodule(name)
        grid = layer.input_quantizer.grid()
        if grid is None:
            continue
        largest = max(abs(grid.qmin - grid.zero_point), abs(grid.qmax - grid.zero_point))
        codes = layer.weight_quantizer.integer_codes(layer.weight)
        bounds[name] = int(accumulation_bound(codes, torch.tensor(largest)))
    return bounds


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
def integer_forward(
    layer: nn.Module, x: torch.Tensor, output: IntegerOutput
) -> torch.Tensor | None:
    """The layer (and its folded BatchNorm) as the integer runtime computes it: the centre of
    each output code's bin on the consumer's input scale (module docstring); None when a grid
    is not set yet (the caller computes in float)."""
    x_values = layer.input_quantizer(x)
    x_grid = layer.input_quantizer.grid(x)
    weight_quantizer = layer.weight_quantizer
    w_grid = weight_quantizer.grid(layer.weight)
    y_grid = output.quantizer.grid()
    if x_grid is None or w_grid is None or y_grid is None or x_grid.per_channel:
        return None  # a grid not set yet (an image range before any batch): float, as before
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
    "requantizes_outputs",
    "use_integer_arithmetic",
    "worst_case_bounds",
]
