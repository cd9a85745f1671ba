"""A lowbit fake-quant model as an integer ONNX graph, written node by node.

The model is BN-folded (``lowbit.quant.fold_bn``) and traced with torch.fx; every layer becomes
the pattern ONNX Runtime fuses into an integer kernel (DQ -> Conv -> Q becomes QLinearConv), or,
with ``form="qop"`` (``export.format``), that integer op itself: QLinearConv, and ORT's QGemm for
a Linear (``emit_layer``). Both forms are written from the same codes, scales and int32 biases,
and ORT runs them as the same graph. What both hold:

- Weights: int8 initializers holding the layer's own integer codes, with a per-output-channel
  DequantizeLinear scale (the grid's step times BatchNorm's factor s_c). DoReFa Eq. 9 codes are
  the odd integers 2c - n in [-n, n] (step 1/n; at 8 bits the narrow range -127..127, step
  1/127), abs-max codes lie in [-m, m] (step max|w_c|/m), 1-bit DoReFa (Eq. 7) codes are +-1
  (step E|w|). A user's quantizer whose codes exceed int8 is re-rounded per channel onto 127
  steps of its max|code| (not exact; ORT has no 16-bit integer conv), or, for a layer with a
  float output, keeps its exact weight in float. Biases: int32 on the scale input_scale *
  weight_scale, as QLinearConv requires, rounded as the model's integer evaluation rounds them
  (``lowbit.quant.integer``), so an integer layer computes exactly what evaluation computed.
- Activations: a layer's input quantizer, read through its grid contract
  (``Quantizer.grid``), becomes QuantizeLinear with its input step (DoReFa: 1/(n act_scale),
  PACT: alpha/n, LSQ: s) and DequantizeLinear with the step the layer computes with (DoReFa: 1/n,
  no multiply-back, as in ``functional.dorefa_activation``). Codes are uint8; a signed grid is
  shifted by 128 (zero point 128), since ORT on x86 fuses QLinearConv for uint8 activations
  only. A k < 8 bit grid clips tighter than uint8 saturation, so a Clip on the integers
  follows the Q: it keeps the export exact and stays out of the conv's fusion.
- The Q is hoisted to the producing layer's output across ReLU, max pooling, nearest upsampling
  and padding (``passes_through``: Q(maxpool(relu(y))) = maxpool(Q(y)) once the clip's lower
  bound is at zero): the conv then ends in a Q and fuses, ReLU disappears into the clip, and
  the others run on uint8.
- Between layers: add, mul, concat, hard-swish, hard-sigmoid, leaky ReLU, sigmoid, pooling,
  flatten (one table, ``FLOAT_OPS``), and a model may return several tensors (a detector's heads).
- Inputs lowbit leaves in float (the image in front of the first layer, layers the first/last
  policy keeps at 32 bits) stay float unless ``calibration`` images are given; then they are
  quantized on uint8 with the min/max those images reach there (not exact: a runtime choice).
  With calibration images, a layer output that no quantizer reads but that reaches another
  layer (a conv before hard-swish or a residual sum) is requantized on 8 bits so that its conv
  runs on integers (``plan_requantization``); a layer whose output reaches no other layer (the
  classifier, a detector's heads) keeps a float output.
- A layer whose input is quantized but whose weight the model keeps float (``wbits=32`` in
  ``quant.overrides`` or an allocation) is a float Conv/Gemm between the DQ of its input and
  the Q of its output (``keeps_float_weight``): ONNX Runtime runs a float kernel there, what
  the model computes; a mixed-precision allocation chooses it where float runs faster.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.fx
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from lowbit.models.pooling import GlobalAveragePool
from lowbit.quant.fold import FoldedQuantConv2d, fold_bn
from lowbit.quant.graph import (
    LAYERS,
    PAD_MODES,
    UntraceableModel,
    feeds_a_layer,
    hoisted_quantizers,
    is_relu,
    pad_mode,
    passes_through,
)
from lowbit.quant.graph import trace as trace_graph
from lowbit.quant.integer import requantizes_outputs
from lowbit.quant.modules import OutputRequantizer, QuantizedLayer, Quantizer

INPUT, OUTPUT = "input", "logits"
# Model metadata: the layers whose outputs the export adds a Q to, and each layer's input codes.
REQUANTIZED_KEY, LAYER_INPUTS_KEY = "lowbit.requantized", "lowbit.layer_inputs"
INT8_MAX = 127
UINT8_SHIFT = 128
# export.format: how each integer layer is written (``emit_layer``). qdq: float Conv/Gemm between
# DequantizeLinear and QuantizeLinear, which runtimes fuse; qop: the integer op itself.
FORMATS = ("qdq", "qop")
DEFAULT_FORMAT = "qdq"  # conf/train.yaml's export.format: measured, docs/export.md
MICROSOFT = "com.microsoft"  # the domain of ORT's contrib ops (QGemm)


class UnsupportedModel(ValueError):
    """The model holds something the integer exporter cannot write (the message names it)."""


# -- grids ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationEncoding:
    """How one float tensor becomes uint8 codes at runtime: q = clip(round(x / q_scale) +
    zero_point, lo, hi), and back: value = (q - zero_point) * dq_scale (dq_scale != q_scale for
    DoReFa's act_scale). Signed grids arrive shifted by 128 (``quantizer_grid``). Not the
    quantizer's grid (``lowbit.quant.grid.IntegerGrid``, any bits, per channel, code steps):
    its encoding in the runtime's one 8-bit unsigned type, read from that grid."""

    q_scale: float
    dq_scale: float
    lo: int
    hi: int
    zero_point: int = 0
    exact: bool = True

    numpy_type = np.uint8
    saturation = (0, 255)

    def at_least(self, low: int) -> ActivationEncoding:
        """The same grid with its lower clip raised to ``low`` (a ReLU absorbed: low = zp)."""
        return ActivationEncoding(
            self.q_scale, self.dq_scale, max(self.lo, low), self.hi, self.zero_point, self.exact
        )


def quantizer_grid(quantizer: Quantizer, where: str) -> ActivationEncoding | None:
    """The integer grid of an activation quantizer, read through its grid contract
    (``Quantizer.grid``); None when it leaves the tensor in float."""
    contract = stated_grid(quantizer, None, where)
    if contract is None:
        return None
    if contract.bits > 8:
        raise UnsupportedModel(
            f"{where}: {contract.bits}-bit activations do not fit the 8-bit integer runtime "
            f"(export needs abits <= 8)"
        )
    if contract.per_channel or contract.code_step != 1:
        raise UnsupportedModel(
            f"{where}: the integer runtime quantizes activations per tensor "
            f"on consecutive codes; {type(quantizer).__name__}'s grid is not"
        )
    # Signed codes travel as uint8 shifted by 128 (zero point 128): the same values, and ORT on
    # x86 fuses QLinearConv only for uint8 activations (its int8-activation kernels are ARM's).
    shift = UINT8_SHIFT if contract.signed else 0
    grid = ActivationEncoding(
        float(contract.quantize_scale),
        float(contract.scale),
        contract.qmin + shift,
        contract.qmax + shift,
        contract.zero_point + shift,
    )
    if not (0 <= grid.lo <= grid.hi <= 255 and 0 <= grid.zero_point <= 255):
        raise UnsupportedModel(
            f"{where}: codes {contract.qmin}..{contract.qmax} (zero point "
            f"{contract.zero_point}) do not fit 8 bits"
        )
    return grid


def stated_grid(quantizer: Quantizer, x: torch.Tensor | None, where: str):
    """``quantizer.grid(x)``; UnsupportedModel (one line) for a quantizer that states none."""
    try:
        return quantizer.grid(x)
    except NotImplementedError as error:
        raise UnsupportedModel(f"{where}: {error}") from None


def calibrated_grid(low: float, high: float) -> ActivationEncoding:
    """uint8 asymmetric min/max grid (zero exactly representable), for a tensor kept float."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255 if high > low else 1.0
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    return ActivationEncoding(scale, scale, 0, 255, zero_point, exact=False)


# -- weights ----------------------------------------------------------------------------------


@dataclass
class IntegerWeight:
    codes: np.ndarray  # int8
    scale: np.ndarray  # float32, one per output channel
    exact: bool


def grid_codes(source: nn.Module, weight: torch.Tensor, where: str):
    """(integer codes, per-output-channel step) of a layer's weight on its quantizer's grid, read
    through the grid contract; None for a float weight."""
    quantizer = getattr(source, "weight_quantizer", None)
    grid = stated_grid(quantizer, weight, where) if quantizer is not None else None
    if grid is None:
        return None
    if grid.zero_point != 0 or (grid.per_channel and grid.axis != 0):
        raise UnsupportedModel(
            f"{where}: integer convolutions take weights with zero point 0 "
            f"and scales per output channel (axis 0)"
        )
    codes = quantizer.integer_codes(weight).double()
    step = grid.scale.double()
    return codes, (step if grid.per_channel else step.expand(weight.shape[0]))


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """What the layer computes with: BN folded in, or the quantized weight of an unfolded layer
    (a conv with no BatchNorm after it: the squeeze-excite convs, a classifier)."""
    with torch.no_grad():
        return (
            layer.quantized_weight() if isinstance(layer, QuantizedLayer) else layer.weight
        ).detach()


def keeps_float_weight(layer: nn.Module, where: str) -> bool:
    """Whether the model quantizes the layer's input but keeps its weight float (``wbits=32``
    by ``quant.overrides`` or an allocation, ``lowbit.mixed``): the weight quantizer states no
    grid. Such a layer is written float between its DQ and the next Q (DQ -> Conv -> Q), as the
    model computes it (``lowbit.quant.integer`` evaluates it in float), and ONNX Runtime runs a
    float kernel there. Layers kept float whole (the first/last policy at 32 bits) have a float
    input: calibration images put them on integers (``integer_weight``).

    ONNX Runtime (1.21 on) quantizes the float weight of a Conv/Gemm whose input comes from a
    per-tensor DQ onto per-tensor int8 (its WeightBiasQuantization transformer): neither the
    model's arithmetic nor float. So the DQ in front of such a layer is written per channel,
    the same step on every channel, which that transformer leaves alone."""
    source = layer.source if isinstance(layer, FoldedQuantConv2d) else layer
    quantizer = getattr(source, "input_quantizer", None)
    if quantizer is None or not quantizer.is_active:
        return False
    return grid_codes(source, source.weight.detach().float(), where) is None


def exceeds_int8(layer: nn.Module, where: str) -> bool:
    """Whether the layer's exact integer codes need more than int8 (8-bit DoReFa: 255 odd
    levels); such a layer with a float output keeps its exact weight in float."""
    source = layer.source if isinstance(layer, FoldedQuantConv2d) else layer
    found = grid_codes(source, source.weight.detach().float(), where)
    return found is not None and bool(found[0].abs().max() > INT8_MAX)


@torch.no_grad()
def integer_weight(layer: nn.Module, where: str) -> IntegerWeight:
    """The integer codes and per-channel scales of ``layer``'s (BN-folded) weight.

    The layer runs as an integer kernel, so its codes must fit int8; channels whose codes do
    not (8-bit DoReFa) are re-rounded onto 127 steps of their max|code|. A float weight (no
    quantizer) gets per-channel abs-max int8, as a post-training tool would.
    """
    folded = isinstance(layer, FoldedQuantConv2d)
    source = layer.source if folded else layer
    effective = effective_weight(layer).double()
    shape = (-1,) + (1,) * (effective.dim() - 1)
    found = grid_codes(source, source.weight.detach().float(), where)
    if found is None:
        codes, step, exact = effective, torch.ones(effective.shape[0], dtype=torch.float64), False
    else:
        codes, step = found
        codes, exact = codes.double(), True
        if folded:
            step = step * layer.channel_scale.double()
    max_code = codes.reshape(codes.shape[0], -1).abs().amax(dim=1)
    reround = (max_code > 0) if not exact else (max_code > INT8_MAX)
    if bool(reround.any()):
        factor = torch.where(reround, max_code / INT8_MAX, torch.ones_like(max_code))
        codes = torch.round(codes / factor.reshape(shape))
        step = step * factor
        exact = False
    if exact:
        # The codes and scales are the ones evaluation computes with (lowbit.quant.integer):
        # the int32 bias grid input_scale * weight_scale, and with it the bias's rounding, is
        # then the one the trained model's integer arithmetic already has.
        if not torch.allclose(codes * step.reshape(shape), effective, rtol=1e-5, atol=1e-7):
            raise AssertionError(f"{where}: the integer codes do not rebuild the layer's weight")
    return IntegerWeight(codes.to(torch.int8).numpy(), step.float().numpy(), exact)


# -- the graph ------------------------------------------------------------------------------


@dataclass
class Value:
    """An fx node's ONNX tensor: float, or integers on ``grid``."""

    name: str
    grid: ActivationEncoding | None = None


class Builder:
    """Collects nodes and initializers under unique names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.names: set[str] = set()
        self.layer_inputs: dict[str, str] = {}  # layer -> ONNX tensor of its integer input codes

    def unique(self, name: str) -> str:
        name = name.replace(".", "_") or "t"
        candidate, i = name, 1
        while candidate in self.names:
            candidate, i = f"{name}_{i}", i + 1
        self.names.add(candidate)
        return candidate

    def constant(self, name: str, array: np.ndarray) -> str:
        name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(
        self, op: str, inputs: list[str], name: str, output: str | None = None, **attributes
    ) -> str:
        output = output or self.unique(name)
        self.nodes.append(
            helper.make_node(op, inputs, [output], name=self.unique(f"{name}_{op}"), **attributes)
        )
        return output

    def quantize(self, x: str, grid: ActivationEncoding, name: str) -> Value:
        """Q (and, where the grid clips tighter than the integer type saturates, an int Clip)."""
        scale = self.constant(f"{name}_q_scale", np.float32(grid.q_scale))
        zero = self.constant(f"{name}_zero_point", grid.numpy_type(grid.zero_point))
        return self.clip(self.node("QuantizeLinear", [x, scale, zero], f"{name}_q"), grid, name)

    def clip(self, q: str, grid: ActivationEncoding, name: str) -> Value:
        """Codes ``q`` on ``grid``: an integer Clip where the grid is tighter than saturation."""
        if (grid.lo, grid.hi) != grid.saturation:
            lo = self.constant(f"{name}_lo", grid.numpy_type(grid.lo))
            hi = self.constant(f"{name}_hi", grid.numpy_type(grid.hi))
            q = self.node("Clip", [q, lo, hi], f"{name}_clip")
        return Value(q, grid)

    def dequantize(self, value: Value, name: str, channels: int | None = None) -> str:
        """DQ of integers on their grid; ``channels``: written per channel (axis 1, the same
        step on each), which ONNX Runtime's WeightBiasQuantization leaves alone
        (``keeps_float_weight``)."""
        if value.grid is None:
            return value.name
        grid = value.grid
        scale, zero = np.float32(grid.dq_scale), grid.numpy_type(grid.zero_point)
        attributes = {}
        if channels is not None:
            scale, zero = np.full(channels, scale), np.full(channels, zero)
            attributes["axis"] = 1
        scale = self.constant(f"{name}_dq_scale", scale)
        zero = self.constant(f"{name}_dq_zero_point", zero)
        return self.node("DequantizeLinear", [value.name, scale, zero], f"{name}_dq", **attributes)


def pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def input_grid(
    layer: nn.Module, name: str, observed: dict[str, tuple[float, float]]
) -> ActivationEncoding | None:
    quantizer = getattr(layer, "input_quantizer", None)
    grid = quantizer_grid(quantizer, name) if quantizer is not None else None
    if grid is None and name in observed:
        grid = calibrated_grid(*observed[name])
    return grid


def plan_quantize_points(gm: torch.fx.GraphModule, grids: dict[str, ActivationEncoding]):
    """Where each layer's input Q goes (``lowbit.quant.graph.hoisted_quantizers``): {producing
    fx node: grid, its clip raised to the zero point where a ReLU folds in} and {layer node:
    grid applied right at its input}."""
    hoisted, direct = hoisted_quantizers(gm, set(grids))
    points = {}
    for source, where in hoisted.items():
        grid = grids[where.consumer.target]
        points[source] = grid.at_least(grid.zero_point) if where.relu else grid
    return points, {node: grids[node.target] for node in direct}


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return trace_graph(model)
    except UntraceableModel as error:
        raise UnsupportedModel(str(error)) from None


@torch.no_grad()
def observe_layers(
    model: nn.Module, inputs_of: list[str], outputs_of: list[str], images: torch.Tensor
):
    """(min, max) over ``images`` of the input of each layer in ``inputs_of`` and of the output
    of each layer in ``outputs_of``: two dicts by layer name."""
    seen = ({}, {})
    hooks = []

    def record(ranges: dict, name: str, x: torch.Tensor) -> None:
        low, high = float(x.min()), float(x.max())
        old = ranges.get(name, (low, high))
        ranges[name] = (min(old[0], low), max(old[1], high))

    for name in inputs_of:
        hooks.append(
            model.get_submodule(name).register_forward_pre_hook(
                lambda _m, args, name=name: record(seen[0], name, args[0])
            )
        )
    for name in outputs_of:
        hooks.append(
            model.get_submodule(name).register_forward_hook(
                lambda _m, _args, out, name=name: record(seen[1], name, out)
            )
        )
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def plan_requantization(
    gm: torch.fx.GraphModule,
    grids: dict[str, ActivationEncoding],
    points: dict,
    observed_outputs: dict[str, tuple[float, float]],
):
    """{layer node: calibrated uint8 grid} for each integer-input layer whose output no lowbit
    quantizer reads directly (a conv before hard-swish, leaky ReLU, a residual add or squeeze-
    excite's product). The fake-quant model keeps those outputs in float; an integer runtime
    fuses a conv into QLinearConv only when its output is quantized too, so the export adds an
    8-bit Q there with the min/max that the calibration images reach: ORT's static
    quantization's choice, and the one place where the export departs from the trained model
    on purpose (named in the model's metadata, measured by ``scripts/export.py --parity``).
    A layer whose output reaches no other layer (a classifier, a detector's heads, NIN's last
    conv before its pooling) stays float: nothing integer would follow it."""
    modules = dict(gm.named_modules())
    feeds_layer = feeds_a_layer(gm)
    requantized = {}
    for node in gm.graph.nodes:
        if (
            node.op == "call_module"
            and isinstance(modules[node.target], LAYERS)
            and node.target in grids
            and node not in points
            and node.target in observed_outputs
            and feeds_layer[node]
        ):
            requantized[node] = calibrated_grid(*observed_outputs[node.target])
    return requantized


def graph_outputs(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The fx nodes the model returns: one tensor, or a tuple/list of them (a detector)."""
    result = next(node for node in gm.graph.nodes if node.op == "output").args[0]
    results = list(result) if isinstance(result, (tuple, list)) else [result]
    if not all(isinstance(item, torch.fx.Node) for item in results):
        raise UnsupportedModel("the model must return a tensor or a tuple of tensors")
    return results


def output_names(count: int) -> list[str]:
    """ONNX output names: ``logits`` for one output, ``output_0``, ``output_1``, ... for more."""
    return [OUTPUT] if count == 1 else [f"output_{i}" for i in range(count)]


def float_input_layers(model: nn.Module) -> list[str]:
    """Layers whose input lowbit leaves in float (the image; layers kept at 32 bits)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, LAYERS):
            quantizer = getattr(module, "input_quantizer", None)
            if quantizer is None or not quantizer.is_active:
                names.append(name)
    return names


def check_layers(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            raise UnsupportedModel(
                f"{name}: BatchNorm2d that does not directly follow a Conv2d "
                f"in an nn.Sequential cannot be folded"
            )
        if isinstance(module, nn.Conv2d) and (
            module.padding_mode != "zeros" or isinstance(module.padding, str)
        ):
            raise UnsupportedModel(f"{name}: only zero padding given as numbers is supported")


def build_int8_graph(
    model: nn.Module,
    input_shape: tuple[int, ...],
    calibration: torch.Tensor | None = None,
    opset: int = 17,
    form: str = DEFAULT_FORMAT,
) -> onnx.ModelProto:
    """The integer ONNX model of ``model`` (module docstring); UnsupportedModel if it cannot.
    ``form``: ``export.format`` (``FORMATS``), how each integer layer is written (``emit_layer``).

    With ``calibration`` images, float inputs of layers are quantized (``calibrated_grid``) and
    layer outputs that no quantizer reads are requantized (``plan_requantization``); the
    model's metadata ``lowbit.requantized`` names those layers.
    """
    if form not in FORMATS:
        raise ValueError(f"form must be one of {', '.join(FORMATS)}, got {form!r}")
    folded = fold_bn(model).float().cpu()
    check_layers(folded)
    gm = trace(folded)
    modules = dict(gm.named_modules())
    layer_names = [name for name, module in modules.items() if isinstance(module, LAYERS)]
    observed_inputs, observed_outputs = {}, {}
    if calibration is not None:
        observed_inputs, observed_outputs = observe_layers(
            folded, float_input_layers(folded), layer_names, calibration.float()
        )
    with torch.no_grad():
        example = folded(torch.zeros(1, *input_shape))
    examples = list(example) if isinstance(example, (tuple, list)) else [example]
    grids = {}
    for name in layer_names:
        grid = input_grid(modules[name], name, observed_inputs)
        if grid is not None:
            grids[name] = grid
    # the 8-bit requantizations training put on layer outputs (lowbit.quant.integer): a Q whose
    # place is the output of the layer before it, like an input quantizer's
    requantizers = {
        name: quantizer_grid(module, name)
        for name, module in modules.items()
        if isinstance(module, OutputRequantizer) and module.grid() is not None
    }
    unobserved = {  # before any training batch: they pass their input through, float
        name
        for name, module in modules.items()
        if isinstance(module, OutputRequantizer) and module.grid() is None
    }
    if not grids:
        raise UnsupportedModel(
            f"{type(model).__name__} has no quantized layer input: quantize it "
            f"with lowbit.quant.quantize_model or pass calibration images"
        )
    results = graph_outputs(gm)
    points, direct = plan_quantize_points(gm, {**grids, **requantizers})
    for node in gm.graph.nodes:  # layers that end in their own output_quantizer
        own = (
            getattr(modules.get(node.target), "output_quantizer", None)
            if node.op == "call_module"
            else None
        )
        if own is not None and own.grid() is not None:
            points[node] = quantizer_grid(own, f"{node.target}.output_quantizer")
    # a model trained without output requantizers (quant.requantize_outputs=false) hands those
    # outputs on in float, and so does its graph
    requantized = (
        plan_requantization(gm, grids, points, observed_outputs)
        if requantizes_outputs(model)
        else {}
    )
    names = output_names(len(results))
    b = Builder()
    b.names.update({INPUT, *names})
    env: dict[torch.fx.Node, Value] = {}

    def as_float(arg, name: str) -> str:
        return b.dequantize(env[arg], name)

    for node in gm.graph.nodes:
        name = node.name
        if node.op == "placeholder":
            if node is not next(iter(gm.graph.nodes)):
                raise UnsupportedModel("the model takes more than one input")
            value = Value(INPUT)
        elif node.op == "output":
            for i, (result, output) in enumerate(zip(results, names)):
                b.node("Identity", [as_float(result, f"output_{i}")], f"output_{i}", output=output)
            continue
        elif node.op == "call_module" and isinstance(modules[node.target], LAYERS):
            value = emit_layer(
                b,
                node,
                modules[node.target],
                env[node.args[0]],
                direct.get(node),
                points.get(node, requantized.get(node)),
                form,
            )
            if value.grid is not None:  # its output's Q written with it (a qop integer op)
                env[node] = value
                continue
        elif node.op == "call_module" and node.target in unobserved:
            value = env[node.args[0]]
        elif node.op == "call_module" and node.target in requantizers:
            value = env[node.args[0]]  # quantized where it was produced (``points``)
            if node in direct:
                value = b.quantize(b.dequantize(value, name), direct[node], name)
        elif fetch_is_int(node, env) and passes_through(node, modules):
            value = emit_integer_pass(b, node, modules, env[node.args[0]])
        else:
            value = emit_float_op(b, node, modules, as_float)
        if node in points:
            value = b.quantize(b.dequantize(value, name), points[node], name)
        elif node in requantized:
            value = b.quantize(b.dequantize(value, name), requantized[node], f"{name}_requant")
        env[node] = value

    graph = helper.make_graph(
        b.nodes,
        type(model).__name__ + "_int8",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape])],
        [
            helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", *tensor.shape[1:]])
            for output, tensor in zip(names, examples)
        ],
        initializer=b.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    if any(node.domain == MICROSOFT for node in b.nodes):
        opsets.append(helper.make_opsetid(MICROSOFT, 1))
    # The oldest IR version that carries the opset: runtimes older than the onnx package read it.
    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="lowbit",
        ir_version=helper.find_min_ir_version_for(opsets, ignore_unknown=True),
    )
    helper.set_model_props(
        proto,
        {
            REQUANTIZED_KEY: ",".join(n.target for n in requantized),
            LAYER_INPUTS_KEY: json.dumps(b.layer_inputs),
        },
    )
    onnx.checker.check_model(proto)
    return proto


def fetch_is_int(node: torch.fx.Node, env: dict) -> bool:
    arg = node.args[0] if node.args else None
    return isinstance(arg, torch.fx.Node) and arg in env and env[arg].grid is not None


def emit_layer(
    b: Builder,
    node: torch.fx.Node,
    layer: nn.Module,
    x: Value,
    grid: ActivationEncoding | None,
    output: ActivationEncoding | None,
    form: str,
) -> Value:
    """Conv2d/Linear from its integer contract: input codes on ``x.grid``, int8 weight codes
    with per-channel scales (``integer_weight``), an int32 bias (``integer_bias``).

    ``output``: the grid a Q puts the layer's output on (the layer runs as an integer kernel),
    None for a float output. ``form`` (``export.format``, ``FORMATS``) writes that contract as
    - ``qdq``: DQ(x), DQ(int8 weight) [+ DQ(int32 bias)] -> Conv/Gemm, a float output; the
      caller writes the output's Q, and ORT fuses DQ -> Conv -> Q into QLinearConv;
    - ``qop``: where ``output`` is given, one QLinearConv (a Linear: com.microsoft's QGemm, what
      ORT fuses DQ -> Gemm -> Q into) from codes to codes, with the integer Clip of a k < 8 bit
      grid; a layer with a float output is written as in ``qdq``.
    A layer with a float output whose exact codes exceed int8 (an 8-bit DoReFa classifier)
    keeps its exact float weight: ORT would fuse a DQ -> Gemm into an int8 QGemm, and a float
    output gains nothing from it.
    A layer with a float weight (``keeps_float_weight``) is float whether or not a Q follows.
    """
    name = node.target
    if grid is not None:  # a Q that could not be hoisted: right at the layer's input
        x = b.quantize(b.dequantize(x, f"{name}_in"), grid, f"{name}_in")
    if x.grid is not None:
        b.layer_inputs[name] = x.name
    float_weight = keeps_float_weight(layer, name)
    if x.grid is None or float_weight or (output is None and exceeds_int8(layer, name)):
        # a float layer, with the weight the layer computes with
        channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        inputs = [
            b.dequantize(x, f"{name}_x", channels if float_weight else None),
            b.constant(f"{name}_weight", effective_weight(layer).float().numpy()),
        ]
        if layer.bias is not None:
            bias = layer.bias.detach().double().numpy()
            inputs.append(b.constant(f"{name}_bias", bias.astype(np.float32)))
        return Value(float_layer_op(b, layer, name, inputs))
    if form == "qop" and output is not None:
        return emit_qlinear_layer(b, layer, name, x, output)
    x_float = b.dequantize(x, f"{name}_x")
    weight = integer_weight(layer, name)
    codes, w_scale, w_zero = weight_constants(b, name, weight)
    inputs = [
        x_float,
        b.node("DequantizeLinear", [codes, w_scale, w_zero], f"{name}_weight_dq", axis=0),
    ]
    found = integer_bias(layer, x.grid, weight, name)
    if found is not None:
        b_codes, b_scale = found
        inputs.append(
            b.node(
                "DequantizeLinear",
                [
                    b.constant(f"{name}_bias_codes", b_codes),
                    b.constant(f"{name}_bias_scale", b_scale),
                    b.constant(f"{name}_bias_zero_point", np.zeros(b_scale.shape, np.int32)),
                ],
                f"{name}_bias_dq",
                axis=0,
            )
        )
    return Value(float_layer_op(b, layer, name, inputs))


def emit_qlinear_layer(
    b: Builder, layer: nn.Module, name: str, x: Value, output: ActivationEncoding
) -> Value:
    """The ``qop`` form of an integer layer (``emit_layer``): QLinearConv or QGemm on the codes
    of ``x``, the same weight codes, scales and int32 bias as the ``qdq`` form's, requantized
    onto ``output`` (its q_scale; ``x``'s dq_scale on the input side, as the DQ carries it)."""
    weight = integer_weight(layer, name)
    x_scale = b.constant(f"{name}_x_scale", np.float32(x.grid.dq_scale))
    x_zero = b.constant(f"{name}_x_zero_point", x.grid.numpy_type(x.grid.zero_point))
    codes, w_scale, w_zero = weight_constants(b, name, weight)
    y_scale = b.constant(f"{name}_y_scale", np.float32(output.q_scale))
    y_zero = b.constant(f"{name}_y_zero_point", output.numpy_type(output.zero_point))
    found = integer_bias(layer, x.grid, weight, name)
    b_codes = b.constant(f"{name}_bias_codes", found[0]) if found is not None else ""
    if isinstance(layer, nn.Conv2d):
        inputs = [x.name, x_scale, x_zero, codes, w_scale, w_zero, y_scale, y_zero]
        q = b.node(
            "QLinearConv", inputs + ([b_codes] if b_codes else []), name, **conv_attributes(layer)
        )
    else:  # QLinearMatMul has no bias; QGemm is ORT's integer Gemm (com.microsoft)
        inputs = [x.name, x_scale, x_zero, codes, w_scale, w_zero, b_codes, y_scale, y_zero]
        q = b.node("QGemm", inputs, name, domain=MICROSOFT, transB=1)
    return b.clip(q, output, name)


def weight_constants(b: Builder, name: str, weight: IntegerWeight) -> tuple[str, str, str]:
    """The initializers of a layer's int8 weight codes, their per-channel scales and zero points."""
    codes = b.constant(f"{name}_weight_codes", weight.codes)
    scale = b.constant(f"{name}_weight_scale", weight.scale)
    zero = b.constant(
        f"{name}_weight_zero_point", np.zeros_like(weight.codes, shape=weight.scale.shape)
    )
    return codes, scale, zero


def integer_bias(
    layer: nn.Module, x_grid: ActivationEncoding, weight: IntegerWeight, where: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(int32 codes, per-channel scale) of the layer's bias on the grid input_scale x
    weight_scale that QLinearConv requires, rounded half to even as the model's integer
    evaluation rounds it (``lowbit.quant.integer``); None without a bias."""
    if layer.bias is None:
        return None
    bias = layer.bias.detach().double().numpy()
    scale = (np.float32(x_grid.dq_scale) * weight.scale).astype(np.float32)
    codes = np.round(bias / scale.astype(np.float64))
    if np.abs(codes).max(initial=0) >= 2**31:
        raise UnsupportedModel(
            f"{where}: the bias does not fit int32 at the scale input_scale * weight_scale"
        )
    return codes.astype(np.int32), scale


def conv_attributes(layer: nn.Conv2d) -> dict:
    return dict(
        kernel_shape=pair(layer.kernel_size),
        strides=pair(layer.stride),
        pads=pair(layer.padding) * 2,
        dilations=pair(layer.dilation),
        group=layer.groups,
    )


def float_layer_op(b: Builder, layer: nn.Module, name: str, inputs: list[str]) -> str:
    """Conv (a Conv2d) or Gemm (a Linear) of float ``inputs``: x, weight [, bias]."""
    if isinstance(layer, nn.Conv2d):
        return b.node("Conv", inputs, name, **conv_attributes(layer))
    return b.node("Gemm", inputs, name, transB=1)


def emit_integer_pass(b: Builder, node: torch.fx.Node, modules, x: Value) -> Value:
    """A pass-through op (``passes_through``) on integers between a hoisted Q and its layer."""
    if is_relu(node, modules):
        if x.grid.lo >= x.grid.zero_point:
            return x  # the clip already holds the ReLU
        grid = x.grid.at_least(x.grid.zero_point)  # a requantized output: ReLU as integer Clip
        low = b.constant(f"{node.name}_lo", grid.numpy_type(grid.lo))
        high = b.constant(f"{node.name}_hi", grid.numpy_type(grid.hi))
        return Value(b.node("Clip", [x.name, low, high], node.name), grid)
    if (
        node.op == "call_function"
        and node.target is F.pad
        and pad_mode(node) == "constant"
        and float(node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0))
    ):
        raise UnsupportedModel(f"{node.name}: constant padding with a value other than 0")
    module = modules.get(node.target) if node.op == "call_module" else None
    emitted = emit_shape_op(b, node, module, x.name, x.grid)
    return x if emitted is None else Value(emitted, x.grid)


def emit_shape_op(b: Builder, node: torch.fx.Node, module, x: str, grid: ActivationEncoding | None):
    """MaxPool, nearest Resize or Pad of ``x`` (integers on ``grid``, or float) by ``node`` (its
    module, or None for a function); None for ops that leave the tensor as it is (Identity,
    Dropout in eval)."""
    name = node.name
    if isinstance(module, nn.MaxPool2d):
        return b.node("MaxPool", [x], name, **maxpool_attributes(module))
    if node.op == "call_function" and node.target is F.max_pool2d:
        pool = nn.MaxPool2d(*node.args[1:], **node.kwargs)
        return b.node("MaxPool", [x], name, **maxpool_attributes(pool))
    if isinstance(module, nn.Upsample):
        factor = module.scale_factor
        if factor is None or module.mode != "nearest":
            raise UnsupportedModel(f"{name}: only nn.Upsample(scale_factor=..., mode='nearest')")
        factors = [float(f) for f in pair(factor)]
        scales = b.constant(f"{name}_scales", np.array([1.0, 1.0, *factors], np.float32))
        # PyTorch's nearest: source index floor(i / factor), ONNX's asymmetric + floor.
        return b.node(
            "Resize",
            [x, "", scales],
            name,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
    if node.op == "call_function" and node.target is F.pad:
        amounts = list(node.args[1])
        if len(amounts) != 4 or pad_mode(node) not in PAD_MODES:
            raise UnsupportedModel(f"{name}: only 2-D zero or replicate padding")
        left, right, top, bottom = amounts
        zero = b.constant(
            f"{name}_zero",
            (grid.numpy_type if grid else np.float32)(grid.zero_point if grid else 0),
        )
        pads = b.constant(
            f"{name}_pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64)
        )
        return b.node("Pad", [x, pads, zero], name, mode=PAD_MODES[pad_mode(node)])
    return None


def maxpool_attributes(module: nn.MaxPool2d) -> dict:
    stride = module.stride if module.stride is not None else module.kernel_size
    return dict(
        kernel_shape=pair(module.kernel_size),
        strides=pair(stride),
        pads=pair(module.padding) * 2,
        dilations=pair(module.dilation),
        ceil_mode=int(module.ceil_mode),
    )


# -- the float ops between layers: one table drives emission and the list of what is supported

# An emitter writes one fx node's op in float: (builder, node, its module or None, as_float)
# -> the ONNX output's name, or None for a form of the op that has no export (the node is then
# UnsupportedModel like any op missing from the table). ``as_float(arg, name)`` is the float
# ONNX tensor of an fx argument (dequantized if it holds integers).
FloatEmitter = Callable[[Builder, torch.fx.Node, "nn.Module | None", Callable], "str | None"]


def unary(op: str, **attributes) -> FloatEmitter:
    """The emitter of one ONNX ``op`` on the node's input, with fixed attributes."""

    def emit(b: Builder, node: torch.fx.Node, module, as_float) -> str:
        return b.node(op, [as_float(node.args[0], node.name)], node.name, **attributes)

    return emit


def elementwise(op: str) -> FloatEmitter:
    """The emitter of a binary ONNX ``op``; a number operand becomes a float constant."""

    def emit(b: Builder, node: torch.fx.Node, module, as_float) -> str | None:
        if len(node.args) != 2:
            return None
        operands = [
            as_float(arg, f"{node.name}_{i}")
            if isinstance(arg, torch.fx.Node)
            else b.constant(f"{node.name}_const", np.float32(arg))
            for i, arg in enumerate(node.args)
        ]
        return b.node(op, operands, node.name)

    return emit


def emit_hard_swish(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    """x * min(max(x + 3, 0), 6) / 6, in PyTorch's order (its CPU kernel): ONNX's HardSwish,
    x * max(0, min(1, x / 6 + 1/2)), rounds differently in the last bit, and a value within an
    ulp of the next quantizer's half-step then gets another code (docs/integer_parity.md)."""
    x = as_float(node.args[0], node.name)
    x_gate = b.node("Mul", [x, hard_gate_times_six(b, x, node.name)], f"{node.name}_x_gate")
    six = b.constant(f"{node.name}_six", np.float32(6))
    return b.node("Div", [x_gate, six], node.name)


def emit_hard_sigmoid(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    """min(max(x + 3, 0), 6) / 6, in PyTorch's order (see ``emit_hard_swish``)."""
    x = as_float(node.args[0], node.name)
    six = b.constant(f"{node.name}_six", np.float32(6))
    return b.node("Div", [hard_gate_times_six(b, x, node.name), six], node.name)


def hard_gate_times_six(b: Builder, x: str, name: str) -> str:
    """min(max(x + 3, 0), 6): Add, then Clip."""
    three = b.constant(f"{name}_three", np.float32(3))
    shifted = b.node("Add", [x, three], f"{name}_plus_three")
    low, high = (
        b.constant(f"{name}_zero", np.float32(0)),
        b.constant(f"{name}_six_max", np.float32(6)),
    )
    return b.node("Clip", [shifted, low, high], f"{name}_clip")


def emit_relu6(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    name = node.name
    x = as_float(node.args[0], name)
    low, high = b.constant(f"{name}_low", np.float32(0)), b.constant(f"{name}_high", np.float32(6))
    return b.node("Clip", [x, low, high], name)


def emit_leaky_relu(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    x = as_float(node.args[0], node.name)
    return b.node("LeakyRelu", [x], node.name, alpha=float(module.negative_slope))


def emit_concat(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    name, args = node.name, node.args
    axis = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
    tensors = [as_float(t, f"{name}_{i}") for i, t in enumerate(args[0])]
    return b.node("Concat", tensors, name, axis=int(axis))


def emit_float_shape_op(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    """MaxPool, nearest Resize or Pad on float (``emit_shape_op``); Identity and Dropout (eval)
    leave the tensor as it is."""
    x = as_float(node.args[0], node.name)
    emitted = emit_shape_op(b, node, module, x, None)
    return x if emitted is None else emitted


def emit_average_pool(b: Builder, node: torch.fx.Node, module, as_float) -> str | None:
    if module.divisor_override is not None:
        return None
    return b.node(
        "AveragePool",
        [as_float(node.args[0], node.name)],
        node.name,
        kernel_shape=pair(module.kernel_size),
        strides=pair(module.stride or module.kernel_size),
        pads=pair(module.padding) * 2,
        ceil_mode=int(module.ceil_mode),
        count_include_pad=int(module.count_include_pad),
    )


def emit_global_average_pool(b: Builder, node: torch.fx.Node, module, as_float) -> str | None:
    if pair(module.output_size) != [1, 1]:
        return None
    return b.node("GlobalAveragePool", [as_float(node.args[0], node.name)], node.name)


def emit_exact_global_average_pool(b: Builder, node: torch.fx.Node, module, as_float) -> str:
    """``lowbit.models.pooling.GlobalAveragePool``: the sum in float64, divided by H x W (taken
    from the tensor's shape, an exact integer product), cast back to float32, as its forward."""
    x = b.node(
        "Cast", [as_float(node.args[0], node.name)], f"{node.name}_f64", to=TensorProto.DOUBLE
    )
    spatial_axes = b.constant(f"{node.name}_axes", np.array([2, 3], dtype=np.int64))
    total = b.node("ReduceSum", [x, spatial_axes], f"{node.name}_sum", keepdims=1)
    shape = b.node("Shape", [x], f"{node.name}_shape")
    start = b.constant(f"{node.name}_start", np.array([2], dtype=np.int64))
    end = b.constant(f"{node.name}_end", np.array([4], dtype=np.int64))
    size = b.node("Slice", [shape, start, end], f"{node.name}_size")
    count = b.node("ReduceProd", [size], f"{node.name}_count", keepdims=1)
    count = b.node("Cast", [count], f"{node.name}_count_f64", to=TensorProto.DOUBLE)
    mean = b.node("Div", [total, count], f"{node.name}_mean")
    return b.node("Cast", [mean], node.name, to=TensorProto.FLOAT)


def emit_flatten(b: Builder, node: torch.fx.Node, module, as_float) -> str | None:
    """nn.Flatten, torch.flatten or Tensor.flatten, from dimension 1 to the last only."""
    args = node.args
    if module is not None:
        start, end = module.start_dim, module.end_dim
    else:
        start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
    if start != 1 or end != -1:
        return None
    return b.node("Flatten", [as_float(args[0], node.name)], node.name, axis=1)


@dataclass(frozen=True)
class FloatOp:
    """An op the export writes in float between layers: its name in the list of supported ops,
    what stands for it in a traced graph (module classes, subclasses included; functions; a
    str names a Tensor method) and its emitter."""

    label: str
    targets: tuple
    emit: FloatEmitter


# Adding an op is one entry: emission and UnsupportedModel's list both read this table.
FLOAT_OPS = (
    FloatOp("ReLU", (nn.ReLU, F.relu, torch.relu, "relu"), unary("Relu")),
    FloatOp("ReLU6", (nn.ReLU6,), emit_relu6),
    FloatOp("LeakyReLU", (nn.LeakyReLU,), emit_leaky_relu),
    FloatOp("Hardswish", (nn.Hardswish,), emit_hard_swish),
    FloatOp("Hardsigmoid", (nn.Hardsigmoid,), emit_hard_sigmoid),
    FloatOp("Sigmoid", (nn.Sigmoid,), unary("Sigmoid")),
    # Sum, not Add: ONNX Runtime fuses DequantizeLinear -> Add -> QuantizeLinear into its own
    # QLinearAdd, which rounds otherwise than the float sum lowbit evaluates; Sum of two
    # tensors is the same IEEE addition and is not fused (docs/integer_parity.md).
    FloatOp("add", (operator.add, torch.add), elementwise("Sum")),
    FloatOp("mul", (operator.mul, torch.mul), elementwise("Mul")),
    FloatOp("sub", (operator.sub, torch.sub), elementwise("Sub")),
    FloatOp("cat", (torch.cat,), emit_concat),
    FloatOp("MaxPool2d", (nn.MaxPool2d, F.max_pool2d), emit_float_shape_op),
    FloatOp("AvgPool2d", (nn.AvgPool2d,), emit_average_pool),
    FloatOp("global average pooling", (nn.AdaptiveAvgPool2d,), emit_global_average_pool),
    FloatOp("GlobalAveragePool", (GlobalAveragePool,), emit_exact_global_average_pool),
    FloatOp("nearest Upsample", (nn.Upsample,), emit_float_shape_op),
    FloatOp("zero/replicate padding", (F.pad,), emit_float_shape_op),
    FloatOp("Flatten", (nn.Flatten, torch.flatten, "flatten"), emit_flatten),
    FloatOp("Identity", (nn.Identity,), emit_float_shape_op),
    FloatOp("Dropout", (nn.Dropout,), emit_float_shape_op),
)
FLOAT_OP_OF = {target: op for op in FLOAT_OPS for target in op.targets}


def supported_ops() -> str:
    """What the integer export writes: the layers, then the float ops of ``FLOAT_OPS``."""
    return ", ".join([*(layer.__name__ for layer in LAYERS), *(op.label for op in FLOAT_OPS)])


def float_op(node: torch.fx.Node, module: nn.Module | None) -> FloatOp | None:
    """The table's entry for ``node``: a module by its class or the nearest base class in the
    table (as isinstance would), a function or a Tensor method by its target; None if absent."""
    if node.op == "call_module":
        return next((FLOAT_OP_OF[c] for c in type(module).__mro__ if c in FLOAT_OP_OF), None)
    if node.op in ("call_function", "call_method"):
        return FLOAT_OP_OF.get(node.target)
    return None


def emit_float_op(b: Builder, node: torch.fx.Node, modules, as_float) -> Value:
    """The float ops between layers (``FLOAT_OPS``); anything else is UnsupportedModel (one
    line, listing what is supported)."""
    target = node.target
    module = modules.get(target) if node.op == "call_module" else None
    if node.op == "call_module" and isinstance(module, Quantizer):
        raise UnsupportedModel(f"{target}: a quantizer outside a Conv2d/Linear layer")
    op = float_op(node, module)
    emitted = None if op is None else op.emit(b, node, module, as_float)
    if emitted is not None:
        return Value(emitted)
    what = (
        f"module {target} ({type(module).__name__})"
        if module is not None
        else f"{node.op} {getattr(target, '__name__', target)}"
    )
    raise UnsupportedModel(f"cannot export {what} to integer ONNX: supported are {supported_ops()}")


__all__ = [
    "ActivationEncoding",
    "IntegerWeight",
    "UnsupportedModel",
    "build_int8_graph",
    "integer_weight",
    "quantizer_grid",
]
