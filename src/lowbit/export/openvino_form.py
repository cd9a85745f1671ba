"""OpenVINO's form of lowbit's integer graph: the same codes, written the way its CPU plugin
fuses them (issue #31).

lowbit's ``qdq`` graph is written for ONNX Runtime, whose x86 kernels want uint8 activations:
a symmetric grid (-127..127) is stored as uint8 with zero point 128, and a grid narrower than
its integer type ends in an integer ``Clip`` after its QuantizeLinear. OpenVINO's low-precision
transformations turn each of those into extra nodes between the layers: a ``Subtract`` of the
zero point wherever a DequantizeLinear does not feed a conv, and an integer ``Clamp`` run
apart. ``openvino_form`` rewrites the graph, exactly:

- **Signed grids.** Every activation grid with zero point 128 becomes int8 with zero point 0:
  codes shift by -128 and every dequantized value stays the same. The integer ops that carry
  those codes (Clip, MaxPool, Pad, Resize, Concat, Identity) shift their code constants too.
  Asymmetric grids (the 8-bit output requantizers, the image's) stay uint8: OpenVINO 2026.4
  compiles no int8 convolution output with a non-zero zero point ("No suitable
  implementations").
- **Float clips.** A narrow grid's integer Clip right after its QuantizeLinear becomes a float
  Clip before it, at the values of its bounds, which OpenVINO folds into the FakeQuantize.
  QuantizeLinear is monotone and maps each bound's value to the bound's code, so the codes are
  the same.

Both cost ONNX Runtime time (its int8 activations run 2-4x slower, measured in
docs/results/openvino_forms/), so the export writes this form as a second file for OpenVINO
(``lowbit.export.onnx_run.OPENVINO_INT8_FILE``, model_int8_openvino.onnx) beside
``model_int8.onnx``. Where a graph holds a pattern the rewrite does not know, ``NotExact`` says
which node, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

# integer ops that pass codes through unchanged: a uint8 constant input of theirs is a code too
CODE_OPS = frozenset({"Clip", "MaxPool", "Pad", "Resize", "Concat", "Identity"})
SYMMETRIC_ZERO_POINT = 128  # a symmetric grid's zero point, written as uint8 for ONNX Runtime


class NotExact(ValueError):
    """The rewrite would change the graph's codes: a node it does not know reads them."""


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(model.SerializeToString())


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def signed_grids(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each symmetric activation grid as int8, zero point 0."""
    return _signed_grids_in_place(_copy(model))


def _signed_grids_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    constants = {tensor.name: tensor for tensor in model.graph.initializer}

    def value(name: str) -> np.ndarray:
        return numpy_helper.to_array(constants[name])

    def shift(name: str) -> None:
        codes = value(name).astype(np.int16) - SYMMETRIC_ZERO_POINT
        constants[name].CopyFrom(numpy_helper.from_array(codes.astype(np.int8), name))

    zero_points = set()  # the shifted zero points
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.input[0] in constants or node.input[2] in zero_points:
            continue  # a weight's or a bias's grid, or done
        zero = value(node.input[2])
        if zero.dtype == np.uint8 and zero.size == 1 and int(zero) == SYMMETRIC_ZERO_POINT:
            shift(node.input[2])
            zero_points.add(node.input[2])
    signed = {  # the tensors that now hold int8 codes
        node.output[0]
        for node in model.graph.node
        if node.op_type == "QuantizeLinear" and node.input[2] in zero_points
    }
    shifted = set(zero_points)
    for node in model.graph.node:  # in topological order: codes flow forward
        if node.op_type not in CODE_OPS or not any(name in signed for name in node.input):
            continue
        if node.op_type == "Concat" and not all(name in signed for name in node.input):
            raise NotExact(f"{node.name} joins int8 and uint8 codes")
        signed.add(node.output[0])
        for name in node.input[1:]:
            if name in constants and name not in shifted and value(name).dtype == np.uint8:
                shift(name)  # a Clip's bound, a Pad's value: codes (pads, scales are not)
                shifted.add(name)
    for node in model.graph.node:
        if not node.input or node.input[0] not in signed or node.op_type in CODE_OPS:
            continue
        if node.op_type != "DequantizeLinear" or node.input[2] not in zero_points:
            raise NotExact(f"{node.op_type} {node.name} reads codes the rewrite shifted")
    return model


def float_clips(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with each integer Clip right after a QuantizeLinear (its only reader)
    written as a float Clip before it."""
    return _float_clips_in_place(_copy(model))


def _float_clips_in_place(model: onnx.ModelProto) -> onnx.ModelProto:
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    consumers = _consumers(model)
    producers = {name: node for node in model.graph.node for name in node.output}
    nodes = list(model.graph.node)
    for clip in list(nodes):
        if clip.op_type != "Clip" or len(clip.input) < 3 or clip.input[0] in constants:
            continue
        quantize = producers.get(clip.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear":
            continue
        if len(consumers[quantize.output[0]]) != 1 or not all(
            bound in constants for bound in clip.input[1:]
        ):
            continue
        scale = numpy_helper.to_array(constants[quantize.input[1]])
        zero = numpy_helper.to_array(constants[quantize.input[2]])
        if scale.size != 1 or zero.size != 1:
            continue  # per-channel grids: none on activations
        low, high = (int(numpy_helper.to_array(constants[bound])) for bound in clip.input[1:])
        name = f"{clip.name}_float"
        bounds = [f"{name}_lo", f"{name}_hi"]
        for bound, code in zip(bounds, (low, high)):
            real = np.float32((code - int(zero)) * float(scale))
            model.graph.initializer.append(numpy_helper.from_array(np.array(real), bound))
        float_clip = helper.make_node(
            "Clip", [quantize.input[0], *bounds], [f"{name}_out"], name=name
        )
        quantize.input[0] = float_clip.output[0]
        quantize.output[0] = clip.output[0]  # the Q now writes what the Clip wrote
        nodes.insert(nodes.index(quantize), float_clip)
        nodes.remove(clip)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in model.graph.initializer if tensor.name in used]
    del model.graph.initializer[:]  # the integer Clips' bounds
    model.graph.initializer.extend(kept)
    return model


def openvino_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a ``qdq`` graph) in OpenVINO's form (module docstring); checked by onnx."""
    rewritten = _float_clips_in_place(_signed_grids_in_place(_copy(model)))
    onnx.checker.check_model(rewritten)
    return rewritten


def outputs_op_by_op(model: onnx.ModelProto | str | Path, x: np.ndarray) -> list[np.ndarray]:
    """``model``'s outputs for ``x`` in ONNX Runtime with its graph optimizations off: every op
    as ONNX defines it, none fused. The check of this module's rewrites: with its fusions, ORT
    runs a conv whose Q a float Clip now precedes in float rather than as QLinearConv, and such
    a conv's codes can differ at a rounding tie (this form is not for ORT)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def write_openvino_form(qdq_path: str | Path, out_path: str | Path) -> Path:
    """Write the ``qdq`` graph at ``qdq_path`` in OpenVINO's form to ``out_path``."""
    out_path = Path(out_path)
    onnx.save(openvino_form(onnx.load(str(qdq_path))), str(out_path))
    return out_path


__all__ = [
    "NotExact",
    "float_clips",
    "openvino_form",
    "outputs_op_by_op",
    "signed_grids",
    "write_openvino_form",
]
