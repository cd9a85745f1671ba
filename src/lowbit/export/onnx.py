"""Integer ONNX export of a lowbit model, run in ONNX Runtime (ORT) on CPU, and its references.

- ``export_int8_onnx``: the fake-quant model as an integer QDQ graph (``onnx_graph`` explains the
  mapping), or with ``form="qop"`` as QLinearConv/QGemm; ORT fuses every quantized conv of the
  QDQ graph into QLinearConv, runs the two as the same graph, and runs pooling on uint8.
- ``export_fp32_onnx``: the same network in float32 (quantizers removed, BN folded), the
  baseline; ``ort_static_qdq``: ORT's own post-training quantization of it, the reference an
  integer export should match in speed.
- ``onnx_latency_ms`` / ``onnx_latency_table`` (interleaved, for side-by-side ratios),
  ``onnx_predict`` and ``top1_agreement`` measure what the exports do; ``interleaved_latency``
  and ``top1_agreements`` take any runtime's ``Runner`` (OpenVINO's: ``openvino_run``).

``calibration`` in ``export_int8_onnx``: lowbit leaves the image in front of the first layer
(and the inputs of layers the first/last policy keeps at 32 bits) unquantized, which keeps the
first conv in float. Given a batch of real images, those inputs are quantized on uint8 with
the min/max the images reach there, so the first conv runs on integers too (ORT's static
quantization does the same); without it the export reproduces the fake-quant model exactly
(up to int32 bias rounding and the 8-bit DoReFa weight re-rounding, see ``onnx_graph``).
"""

from __future__ import annotations

import io
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from lowbit.export.onnx_graph import (
    DEFAULT_FORMAT,
    INPUT,
    UnsupportedModel,
    build_int8_graph,
    output_names,
)
from lowbit.quant.fold import FoldedQuantConv2d, fold_bn
from lowbit.quant.modules import QuantConv2d, QuantLinear, conv_like
from lowbit.storage import write_bytes_atomically

DEFAULT_THREADS = 2
INTEGER_CONV_OPS = ("QLinearConv", "ConvInteger")


# -- export -----------------------------------------------------------------------------------


def export_int8_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    path: str | Path,
    calibration: torch.Tensor | None = None,
    opset: int = 17,
    form: str = DEFAULT_FORMAT,
) -> Path:
    """Write the integer ONNX model of ``model`` (a ``quantize_model``-ed network) to ``path``.

    BatchNorm is folded, weights are int8 codes on each layer's grid with per-channel scales,
    activations are quantized with the learned/derived steps (module docstring and
    ``lowbit.export.onnx_graph``). ``form``: ``export.format``, "qdq" (QuantizeLinear/
    DequantizeLinear around float Conv and Gemm) or "qop" (QLinearConv, QGemm), the same
    integers either way. Raises ``UnsupportedModel`` (a ValueError, one line) for a layer or
    quantizer without an integer form. ``model`` itself is left untouched.
    """
    proto = build_int8_graph(model, tuple(input_shape), calibration, opset, form)
    return save(proto, path)


def float_model(model: nn.Module) -> nn.Module:
    """A float copy of ``model`` in eval mode: BN folded, quantizers removed.

    Quantized layers keep the weight they compute with (the quantized, folded one), so the
    float network is the fake-quant one without activation quantization; any other model is
    returned folded as it is.
    """
    folded = fold_bn(model)
    for name, module in list(folded.named_modules()):
        if isinstance(module, FoldedQuantConv2d):
            plain = conv_like(nn.Conv2d, module, bias=True)
            plain.weight, plain.bias = module.weight, module.bias
        elif isinstance(module, QuantConv2d):
            plain = conv_like(nn.Conv2d, module, bias=module.bias is not None)
            plain.weight = nn.Parameter(module.quantized_weight().detach())
            plain.bias = module.bias
        elif isinstance(module, QuantLinear):
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            plain.weight = nn.Parameter(module.quantized_weight().detach())
            plain.bias = module.bias
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(folded.get_submodule(parent_name) if parent_name else folded, child, plain)
    return folded.eval()


def export_fp32_onnx(
    model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, opset: int = 17
) -> Path:
    """Write the float32 ONNX model of ``model`` (``float_model``: BN folded, no quantizers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = float_model(model).float().cpu()
    with torch.no_grad():
        example = network(torch.zeros(1, *input_shape))
    outputs = output_names(len(example) if isinstance(example, (tuple, list)) else 1)
    exported = io.BytesIO()  # written whole or not at all below (lowbit.storage)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        # dynamo=False: the torch.export-based exporter needs onnxscript, not a lowbit dependency.
        torch.onnx.export(
            network,
            (torch.zeros(1, *input_shape),),
            exported,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]},
        )
    return write_bytes_atomically(path, exported.getvalue())


class _Batches:
    """onnxruntime.quantization's CalibrationDataReader over one tensor, in batches."""

    def __init__(self, images: torch.Tensor, batch_size: int = 32):
        self.batches = iter(
            [{INPUT: chunk.float().cpu().numpy()} for chunk in images.split(batch_size)]
        )

    def get_next(self):
        return next(self.batches, None)


def ort_static_qdq(fp32_onnx_path: str | Path, calibration: torch.Tensor, path: str | Path) -> Path:
    """ORT's own static quantization of a float ONNX model: QDQ, per-channel int8 weights,
    uint8 activations (ORT's recommended u8s8 on x86), min/max calibration on ``calibration``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quantize_static(
        str(fp32_onnx_path),
        str(path),
        _Batches(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return path


def save(proto: onnx.ModelProto, path: str | Path) -> Path:
    """``proto`` into ``path``, whole or not at all (``lowbit.storage``)."""
    return write_bytes_atomically(path, proto.SerializeToString())


# -- running ----------------------------------------------------------------------------------


def session(
    path: str | Path,
    threads: int = DEFAULT_THREADS,
    optimized_path: str | Path | None = None,
    profile_prefix: str | Path | None = None,
) -> ort.InferenceSession:
    """A CPU InferenceSession with all graph optimizations and ``threads`` intra-op threads;
    ``profile_prefix``: ORT's profiler on, its JSON written there by ``end_profiling()``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # no warning about hardware-specific optimized graphs
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def optimized_op_types(path: str | Path, scratch: str | Path) -> list[str]:
    """The op types of the graph ORT actually runs (after its fusions), in order."""
    session(path, optimized_path=scratch)
    return [node.op_type for node in onnx.load(str(scratch)).graph.node]


def onnx_outputs(
    path: str | Path, images: torch.Tensor, threads: int = DEFAULT_THREADS, batch_size: int = 256
) -> list[torch.Tensor]:
    """Every output of the model for ``images``, computed by ORT (a detector has two)."""
    runner = session(path, threads)
    batches = [
        runner.run(None, {INPUT: chunk.float().cpu().numpy()}) for chunk in images.split(batch_size)
    ]
    return [torch.from_numpy(np.concatenate(parts)) for parts in zip(*batches)]


def onnx_predict(
    path: str | Path, images: torch.Tensor, threads: int = DEFAULT_THREADS, batch_size: int = 256
) -> torch.Tensor:
    """The model's first output (a classifier's logits) for ``images``, computed by ORT."""
    return onnx_outputs(path, images, threads, batch_size)[0]


# A runtime's compiled model as one function: an input batch in, the model's outputs out.
Runner = Callable[[np.ndarray], list[np.ndarray]]


def ort_runner(path: str | Path, threads: int = DEFAULT_THREADS) -> Runner:
    """``session`` of the model at ``path`` as a Runner."""
    runner = session(path, threads)
    return lambda x: runner.run(None, {INPUT: x})


def _timed(run: Runner, x: np.ndarray) -> float:
    start = time.perf_counter()
    run(x)
    return (time.perf_counter() - start) * 1000


def _summary(times: list[float], threads: int) -> dict[str, float]:
    return {
        "ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "threads": threads,
    }


def timing_input(input_shape: tuple[int, ...]) -> np.ndarray:
    """The batch-1 input every latency here is timed on: standard normal values, seed 0."""
    return np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)


def interleaved_latency(
    runners: Mapping[str, Runner],
    input_shape: tuple[int, ...],
    threads: int = DEFAULT_THREADS,
    warmup: int = 10,
    repeats: int = 50,
    block: int = 25,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency of several runners (of any runtime) measured side by side.

    The runners take turns in blocks of ``block`` timed runs, each block after ``warmup``
    untimed ones, until each has ``repeats`` timed runs: load on a shared machine hits them
    alike, and no block is timed while another runtime's threads still spin (ORT's workers spin
    for a while after each run; run-by-run alternation measured that, not the models: it made
    NIN's FP32 graph look 4x slower than it runs alone). ``threads`` is recorded, not set: each
    runner was built with it. Returns {"ms": median, "min_ms", "max_ms", "threads",
    "rounds_ms"} per name; ``rounds_ms`` holds each round's block of times, the same rounds for
    every runner, so two runners can be compared round by round (paired).
    """
    if repeats < 1 or warmup < 0 or block < 1:
        raise ValueError("latency needs repeats >= 1, warmup >= 0 and block >= 1")
    x = timing_input(input_shape)
    rounds: dict[str, list[list[float]]] = {name: [] for name in runners}
    for start in range(0, repeats, block):
        for name, run in runners.items():
            for _ in range(warmup):
                run(x)
            rounds[name].append([_timed(run, x) for _ in range(min(block, repeats - start))])
    return {
        name: {**_summary([t for r in blocks for t in r], threads), "rounds_ms": blocks}
        for name, blocks in rounds.items()
    }


def onnx_latency_table(
    paths: Mapping[str, str | Path],
    input_shape: tuple[int, ...],
    threads: int = DEFAULT_THREADS,
    **timing: int,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency of several ONNX models in ORT's default settings, measured side by side
    by ``interleaved_latency`` (``timing``: its ``warmup``, ``repeats`` and ``block``)."""
    runners = {name: ort_runner(path, threads) for name, path in paths.items()}
    return interleaved_latency(runners, input_shape, threads, **timing)


def onnx_latency_ms(
    path: str | Path,
    input_shape: tuple[int, ...],
    threads: int = DEFAULT_THREADS,
    warmup: int = 10,
    repeats: int = 50,
) -> dict[str, float]:
    """{"ms": median, "min_ms", "max_ms", "threads"} of batch-1 runs of one ONNX model in ORT."""
    timing = {"warmup": warmup, "repeats": repeats}
    measured = onnx_latency_table({"model": path}, input_shape, threads, **timing)["model"]
    return {key: value for key, value in measured.items() if key != "rounds_ms"}


@torch.no_grad()
def top1_agreements(
    model: nn.Module, runners: Mapping[str, Runner], images: torch.Tensor | Iterable
) -> dict[str, float]:
    """Per runner, the fraction of inputs whose argmax equals the PyTorch model's (in eval
    mode), all in one pass over ``images``: one tensor, or an iterable of (images, labels)
    batches (a DataLoader)."""
    return top1_agreements_and_accuracies(model, runners, images)[0]


def top1_agreements_and_accuracies(
    model: nn.Module, runners: Mapping[str, Runner], images: torch.Tensor | Iterable
) -> tuple[dict[str, float], dict[str, float]]:
    """``top1_agreements`` and, from the same pass, each runner's top-1 accuracy and the
    PyTorch model's (``"fake_quant"``); the accuracies are {} unless every batch has labels
    (one tensor has none)."""
    batches = [(images, None)] if torch.is_tensor(images) else (batch[:2] for batch in images)
    was_training = model.training
    model.eval()
    agree = dict.fromkeys(runners, 0)
    correct = dict.fromkeys(["fake_quant", *runners], 0)
    total, labelled_total = 0, 0
    try:
        device = next(model.parameters()).device
        for batch, labels in batches:
            expected = model(batch.to(device)).argmax(1).cpu()
            x = batch.float().cpu().numpy()
            answers = {"fake_quant": expected}
            for name, run in runners.items():
                answers[name] = torch.from_numpy(run(x)[0].argmax(1))
                agree[name] += int((expected == answers[name]).sum())
            if labels is not None:
                for name, answer in answers.items():
                    correct[name] += int((answer == labels.cpu()).sum())
                labelled_total += len(batch)
            total += len(batch)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("top1_agreement got no images")
    agreements = {name: count / total for name, count in agree.items()}
    if labelled_total < total:  # a batch without labels: no accuracy stands on all images
        return agreements, {}
    return agreements, {name: count / total for name, count in correct.items()}


def top1_agreement(
    model: nn.Module,
    onnx_path: str | Path,
    images: torch.Tensor | Iterable,
    threads: int = DEFAULT_THREADS,
) -> float:
    """Fraction of inputs whose ORT argmax equals the PyTorch model's (``top1_agreements``)."""
    return top1_agreements(model, {"ort": ort_runner(onnx_path, threads)}, images)["ort"]


__all__ = [
    "INTEGER_CONV_OPS",
    "UnsupportedModel",
    "export_fp32_onnx",
    "export_int8_onnx",
    "float_model",
    "interleaved_latency",
    "onnx_latency_ms",
    "onnx_latency_table",
    "onnx_outputs",
    "onnx_predict",
    "optimized_op_types",
    "ort_runner",
    "ort_static_qdq",
    "timing_input",
    "top1_agreement",
    "top1_agreements",
    "top1_agreements_and_accuracies",
]
