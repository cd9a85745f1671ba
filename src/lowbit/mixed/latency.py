"""What each allocated layer costs in time on ONNX Runtime, int8 or float: the prices of
``budget.latency_ms``.

ONNX Runtime (ORT) has 8-bit integer kernels only: a layer at any weight width <= 8 runs the
same int8 kernel, and a layer whose weights stay float (width 32) runs a float one, which the
export writes between the DQ of its input and the Q of its output
(``lowbit.export.onnx_graph.keeps_float_weight``). Widths 9-16 have no kernel of their own (the
export re-rounds them onto int8, not what was trained); a latency budget refuses them. Which of
int8 and float is faster is measured, not assumed: int8 depthwise convolutions run slower than
float on this project's CPU.

- The float model is quantized twice as a run quantizes it (``quant.*`` with the allocation's
  widths), its activation quantizers set by min/max on ``calibration`` images (the export's 64
  training images), and exported as a run exports it (``export_int8_onnx``, the same
  calibration): every allocated layer at ``int8_width`` (the widest width <= 8 allocated), and
  every allocated layer at 32.
- Each allocated layer is cut out of each export (``onnx.utils.Extractor``) from its uint8
  input codes to its output Q: the nodes the exporter writes for it, DQ -> Conv/Gemm with its
  int8 weight and int32 bias behind DQs -> Q, which ORT fuses into QLinearConv/QGemm, or DQ ->
  float Conv/Gemm -> Q. The cut runs alone, batch 1, at the input shape the layer sees in the
  model.
- Junctions: the ops on uint8 between one layer's output Q and the next layer's input (the
  k-bit clip, max pooling), where a chain of one-input ops joins the two. ORT runs them in NHWC
  between two integer convs, but in NCHW where a float layer is on either side, and its NCHW
  uint8 max pooling is slow (on NIN slower than a conv; docs/mixed_precision.md). A junction
  is cut out alone too (it then runs in NCHW) and charged once when either of its layers is
  float; in NHWC its time is part of ``fixed_ms``. A junction next to a layer that is not
  allocated and not an int8 kernel (a float-output classifier) is in NCHW whatever the
  allocation: in ``fixed_ms``, not modelled.
- Each cut runs on the codes it holds in the model when the model runs on the timer's input
  (``timing_input``): max pooling's time depends on the values it compares. Both whole
  exports and every cut are timed side by side by ``interleaved_latency``, the timer of a
  run's ``latency/int8_ms``, with the run's ``export.threads`` and
  ``latency.warmup``/``repeats``: medians.
- ``fixed_ms`` is the whole int8 model's time less the allocated layers' int8 times: the rest of
  the model (edge layers, pooling, clips, layout changes). A float layer runs slower in the
  graph than alone (NIN's all-float model took longer than its cuts add up to), so every float
  time is scaled by one factor, ``float_scale``, that predicts the all-float model at its
  measured time.
- An allocation is predicted at ``fixed_ms`` + each allocated layer's time at its width + the
  junctions next to a float layer (``LatencyTable.predicted``): exact at the all-int8 and the
  all-float allocations, and off in between by what no cut holds, chiefly the layout changes
  where int8 and float layers meet (docs/mixed_precision.md measures it).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.utils import Extractor
from torch import nn

from lowbit.bit_widths import FULL_PRECISION
from lowbit.export.onnx import (
    Runner,
    export_int8_onnx,
    interleaved_latency,
    ort_runner,
    session,
    timing_input,
)
from lowbit.export.onnx_graph import INPUT, LAYER_INPUTS_KEY
from lowbit.mixed.allocation import Allocation, with_allocation
from lowbit.quant.calibrate import calibrate
from lowbit.quant.convert import quantize_model

INT8_KERNEL_BITS = 8  # ORT's integer kernels: every width up to this runs one int8 kernel
WHOLE = "model"  # the whole exports' names among the timed runners: model:int8, model:float
LAYER_OPS = ("Conv", "Gemm")


@dataclass(frozen=True)
class LayerLatency:
    """One layer alone in ORT, batch 1: median ms as an int8 kernel and as a float one (as
    measured: ``LatencyTable.cost`` scales the float time)."""

    int8_ms: float
    float_ms: float


@dataclass(frozen=True)
class Junction:
    """The ops on uint8 between ``producer``'s output Q and ``consumer``'s input (the k-bit
    clip, max pooling): ``ms`` alone, in NCHW, what they take where a float layer is on either
    side; ``ends``: the allocated layers of the two, whose width 32 puts them there."""

    producer: str
    consumer: str
    ends: tuple[str, ...]
    ms: float


@dataclass(frozen=True)
class LatencyTable:
    """Each allocated layer's int8 and float times, the junctions between layers, the whole
    models' times (every allocated layer int8, every one float), ``fixed_ms`` and
    ``float_scale`` (module docstring); ``threads``: ORT's intra-op threads."""

    layers: dict[str, LayerLatency]
    junctions: list[Junction]
    model_int8_ms: float
    model_float_ms: float
    threads: int
    seconds: float = 0.0  # what exporting, cutting and timing took

    @property
    def fixed_ms(self) -> float:
        return self.model_int8_ms - sum(layer.int8_ms for layer in self.layers.values())

    @property
    def float_scale(self) -> float:
        """The factor on every float time that predicts the all-float model at its measured
        time (1 where noise would make it 0 or less)."""
        rest = self.model_float_ms - self.fixed_ms - sum(j.ms for j in self.junctions)
        alone = sum(layer.float_ms for layer in self.layers.values())
        return rest / alone if rest > 0 and alone > 0 else 1.0

    def cost(self, name: str, width: int) -> float:
        """The time of layer ``name`` at weight ``width``: its scaled float time at 32, its
        int8 time at <= 8."""
        if width == FULL_PRECISION:
            return self.layers[name].float_ms * self.float_scale
        if width > INT8_KERNEL_BITS:
            raise ValueError(f"{name}: {width} bits has no ONNX Runtime kernel of its own")
        return self.layers[name].int8_ms

    def junction_cost(self, widths: Mapping[str, int]) -> float:
        """The junctions a float layer puts in NCHW at ``widths``, in ms."""
        return sum(
            junction.ms
            for junction in self.junctions
            if any(widths[end] == FULL_PRECISION for end in junction.ends)
        )

    def predicted(self, widths: Mapping[str, int]) -> float:
        """fixed_ms + each allocated layer's time at its width + the junctions next to a float
        layer, in ms."""
        layers = sum(self.cost(name, b) for name, b in widths.items())
        return self.fixed_ms + layers + self.junction_cost(widths)


def quantized_export(
    model: nn.Module,
    quant: dict[str, Any],
    allocation: Allocation,
    input_shape: tuple[int, ...],
    calibration: torch.Tensor,
    path: Path,
) -> onnx.ModelProto:
    """The integer ONNX export of the float ``model`` quantized at ``allocation``, its
    activation quantizers calibrated (min/max) on ``calibration``, written to ``path``."""
    quantized = quantize_model(
        copy.deepcopy(model), input_shape=input_shape, **with_allocation(quant, allocation)
    )
    calibrate(quantized, [calibration], method="minmax", batches=1)
    export_int8_onnx(quantized.eval(), input_shape, path, calibration=calibration)
    return onnx.load(str(path))


class ExportedLayers:
    """Where each layer sits in an integer export: its Conv/Gemm node (the exporter names it
    ``<layer>_<op>``), its uint8 input codes (``lowbit.layer_inputs``), its output Q, and the
    one-input ops that follow it."""

    def __init__(self, proto: onnx.ModelProto):
        metadata = {prop.key: prop.value for prop in proto.metadata_props}
        self.inputs: dict[str, str] = json.loads(metadata.get(LAYER_INPUTS_KEY, "{}"))
        self.constants = {tensor.name for tensor in proto.graph.initializer}
        self.producers = {out: node for node in proto.graph.node for out in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in proto.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.nodes = {node.name: node for node in proto.graph.node}
        self.proto = onnx.shape_inference.infer_shapes(proto)  # every tensor's shape
        self.extractor = Extractor(self.proto)

    def node(self, layer: str) -> onnx.NodeProto:
        prefix = layer.replace(".", "_")
        found = [self.nodes[f"{prefix}_{op}"] for op in LAYER_OPS if f"{prefix}_{op}" in self.nodes]
        if layer not in self.inputs or len(found) != 1:
            raise ValueError(f"{layer}: the export holds no integer-input Conv/Gemm of this name")
        return found[0]

    def output(self, layer: str) -> str:
        """The layer's output codes: after the Q that follows it, or its float output."""
        output = self.node(layer).output[0]
        after = self.readers.get(output, [])
        if len(after) == 1 and after[0].op_type == "QuantizeLinear":
            return after[0].output[0]
        return output

    def integer_kernel(self, layer: str) -> bool:
        """Whether ORT runs the layer on an int8 kernel: int8 weight codes behind a DQ and a Q
        after it (the exporter's fused form)."""
        weight = self.producers.get(self.node(layer).input[1])
        quantized = self.output(layer) != self.node(layer).output[0]
        return quantized and weight is not None and weight.op_type == "DequantizeLinear"

    def cut(self, start: str, end: str) -> onnx.ModelProto:
        return self.extractor.extract_model([start], [end])

    def values(self, tensors: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
        """What ``tensors`` hold when the model runs on the batch ``x``."""
        probe = onnx.ModelProto()
        probe.CopyFrom(self.proto)
        known = {info.name: info for info in probe.graph.value_info}
        probe.graph.output.extend(known[name] for name in tensors)
        runner = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        outputs = runner.run(tensors, {INPUT: x})
        return dict(zip(tensors, outputs))

    def next_layer(self, layer: str) -> tuple[str, str] | None:
        """(the layer whose input codes ``layer``'s output reaches through a chain of one-input
        ops, that tensor), or None where the chain branches, meets another tensor (a residual
        sum) or is empty."""
        consumers = {tensor: name for name, tensor in self.inputs.items()}
        tensor = self.output(layer)
        start = tensor
        while tensor not in consumers:
            after = self.readers.get(tensor, [])
            if len(after) != 1 or len(after[0].output) != 1:
                return None
            if len([i for i in after[0].input if i and i not in self.constants]) != 1:
                return None
            tensor = after[0].output[0]
        return None if tensor == start else (consumers[tensor], tensor)


def codes_runner(path: Path, threads: int, codes: np.ndarray) -> Runner:
    """An ORT session of a cut as a Runner that feeds it ``codes`` on every call (it takes the
    runners' common float input and ignores it)."""
    runner = session(path, threads)
    (feed,) = runner.get_inputs()
    return lambda _x: runner.run(None, {feed.name: codes})


def layer_latency(
    model: nn.Module,
    quant: dict[str, Any],
    layers: list[str],
    int8_width: int,
    input_shape: tuple[int, ...],
    calibration: torch.Tensor,
    threads: int,
    warmup: int,
    repeats: int,
) -> LatencyTable:
    """The ``LatencyTable`` of the float ``model``'s allocated ``layers`` (module docstring);
    ``quant``: the run's quantizer settings."""
    if int8_width > INT8_KERNEL_BITS:
        raise ValueError(f"int8_width={int8_width}: the int8 kernels take widths <= 8")
    started = time.perf_counter()
    allocated = set(layers)
    junctions: dict[str, tuple[str, tuple[str, ...]]] = {}  # runner -> (consumer, ends)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        runners: dict[str, Runner] = {}

        def add(name: str, cut: onnx.ModelProto, codes: np.ndarray) -> None:
            path = folder / f"{len(runners)}.onnx"
            onnx.save(cut, str(path))
            runners[name] = codes_runner(path, threads, codes)

        for kind, width in (("int8", int8_width), ("float", FULL_PRECISION)):
            allocation = Allocation(dict.fromkeys(layers, width), quant["quantizer"])
            path = folder / f"{kind}.onnx"
            graph = ExportedLayers(
                quantized_export(model, quant, allocation, input_shape, calibration, path)
            )
            cuts = {
                f"{kind}:{layer}": (graph.inputs[layer], graph.output(layer)) for layer in layers
            }
            runners[f"{WHOLE}:{kind}"] = ort_runner(path, threads)
            if kind == "int8":
                for producer in graph.inputs:
                    found = graph.next_layer(producer)
                    if found is None:
                        continue
                    consumer, tensor = found
                    ends = tuple(name for name in (producer, consumer) if name in allocated)
                    fixed_ends = [n for n in (producer, consumer) if n not in allocated]
                    # in NCHW whatever the allocation where a fixed end is float: in fixed_ms
                    if ends and all(graph.integer_kernel(n) for n in fixed_ends):
                        junctions[f"junction:{producer}"] = (consumer, ends)
                        cuts[f"junction:{producer}"] = (graph.output(producer), tensor)
            # what the model holds there on the timer's input: pooling's time depends on it
            starts = sorted({start for start, _ in cuts.values()})
            codes = graph.values(starts, timing_input(input_shape))
            for name, (start, end) in cuts.items():
                add(name, graph.cut(start, end), codes[start])
        # the run's export (onnx_run.export_model) times its runners the same way
        timed = interleaved_latency(runners, input_shape, threads, warmup=warmup, repeats=repeats)
    return LatencyTable(
        {
            layer: LayerLatency(timed[f"int8:{layer}"]["ms"], timed[f"float:{layer}"]["ms"])
            for layer in layers
        },
        [
            Junction(name.partition(":")[2], consumer, ends, timed[name]["ms"])
            for name, (consumer, ends) in junctions.items()
        ],
        timed[f"{WHOLE}:int8"]["ms"],
        timed[f"{WHOLE}:float"]["ms"],
        threads,
        time.perf_counter() - started,
    )
