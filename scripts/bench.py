"""What quantization buys and costs on NIN, measured side by side in one process.

    python scripts/bench.py                     # every section, 2 threads
    python scripts/bench.py --sections sensitivity --threads 1   # issue 29's scoring passes
    python scripts/bench.py --sections latency --threads 1
    python scripts/bench.py --quick             # a smoke run: few repeats, small batch
    python scripts/bench.py --sections train_step --modes eager
    python scripts/bench.py --sections train_step --layouts nchw    # NCHW models and batches
    python scripts/bench.py --sections train_step --layouts nchw,nhwc   # both, interleaved
    python scripts/bench.py --sections deployed --formats qdq,qop       # both int8 forms

Sections (each a table; the last line of the output is one JSON object with every number, and
the targets of issue 6 with whether they were met):

- ``size``: the packed checkpoint (``lowbit.export.save_packed``) of DoReFa W2/W4/W8 NIN
  against ``model/size_limit_bytes`` (sum of params x bits / 8). Target: payload within 2%.
- ``latency``: ONNX Runtime on the CPU, batch 1, ``--threads`` intra-op threads, medians of
  interleaved runs after warm-up: the FP32 NIN, ORT's own static QDQ quantization of it
  (``ort_static_qdq``), and lowbit's integer export (``export_int8_onnx``) of DoReFa W8A8 and
  W4A4 NIN, plus PyTorch eager FP32 for reference. Calibration images (for ORT's quantization
  and for the inputs lowbit keeps in float) are the digits validation images. Targets: lowbit
  W8A8 int8 <= 0.35x ORT FP32, and within 10% of ORT's static QDQ.
- ``deployed``: the same three ONNX models (FP32, ORT's static QDQ of it, lowbit's integer
  export), in ONNX Runtime and, where it is installed, in OpenVINO (FP32 with the f32 hint,
  its default precision: bf16 on AMX CPUs; both int8 graphs), for MobileNetV3-Small (224x224,
  1000 classes, symmetric PACT W8A8 with per-channel abs-max weights, PaddleOCR's recipe) and
  YOLOv3-tiny (416x416, 80 classes, the same quantizer), batch 1. Both quantizations calibrate
  on the same random images (latency does not depend on them). A model's rows take turns in
  10 rounds of interleaved blocks; each row's "paired x best float" is the median of the
  round-by-round ratios of its round median to the best float path's, with the 95% interval of
  that median (as ``train_step``'s). Each model's best float path, best lowbit int8 path and
  ``int8_speedup`` (best float over best int8; issue 31), plain and paired with its interval,
  are printed under the table. ``--formats`` writes lowbit's graph in each ``export.format``
  given (QDQ, QOp) and times them in the same blocks; a graph OpenVINO cannot read has no
  OpenVINO row.
  Targets: lowbit int8 (the default format) <= 1.10x ORT's static QDQ for each.
- ``train_step``: SGD training step time (forward, loss, backward, step) of DoReFa W4A4 G32 and
  G8, PACT W4A4 and LSQ W4A4 over the FP32 step, NIN and MobileNetV3-Small (CIFAR stem, 32x32),
  batch 128, eager and compiled (``--modes``), each model's configurations of one mode
  round-robin in one process (``lowbit.measure.step_time``); each ratio is to the FP32 step of
  the same model, mode and memory layout (``--layouts``, default NHWC as a run trains; several
  are interleaved in the same round-robin and compared step by step), and each compiled
  configuration's compile time (its first step) is printed on its own line. Targets (issue 15,
  NIN, the first layout): eager DoReFa W4A4G32 <= 1.15x, W4A4G8 <= 1.30x, PACT W4A4 <= 1.25x;
  compiled DoReFa W4A4G32 <= 1.05x, W4A4G8 <= 1.15x. A step target's value is the paired
  ratio (the median of the round-by-round ratios) and its verdict says "within noise" when the
  95% interval of that median straddles the bound.
- ``sensitivity``: each of ``scripts/allocate.py``'s scoring passes (``lowbit.mixed``: hessian,
  fisher, ablation) with the defaults of ``conf/allocate.yaml`` (scoring batches, batch size,
  Hutchinson samples, widths) on NIN with digits (32x32), against one LSQ W4A4 QAT training
  epoch of the same model over the digits training split (forward, loss, backward, SGD step
  per batch of 128; no validation), interleaved round by round. Target (issue 29): every pass
  <= 1.0x the epoch.

Weights are freshly initialised: sizes and speeds do not depend on training. Timings on a shared
machine move with its load; the ratios, measured interleaved, move much less. The exit status
is 0 whether or not targets are met (a benchmark reports; ``--check`` exits 1 on a miss).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.allocator import keep_freed_memory
from lowbit.data.digits import DigitsData
from lowbit.export import save_packed
from lowbit.export.onnx_graph import DEFAULT_FORMAT, FORMATS
from lowbit.export.packing import header_bytes, payload_bytes
from lowbit.measure.size import size_limit_bytes
from lowbit.measure.step_time import LAYOUTS, paired_ratio, training_step_ratios
from lowbit.models import NIN, MobileNetV3, YOLOv3Tiny
from lowbit.quant import quantize_model

SHAPE = (3, 32, 32)
SECTIONS = ("size", "latency", "deployed", "train_step", "sensitivity")
BITS = dict(first_layer_bits=8, last_layer_bits=8)
TARGETS = {  # name: (comparison, bound) - issue 6's "done when", then issue 15's
    "size_payload_over_limit_w2": ("<=", 1.02),
    "size_payload_over_limit_w4": ("<=", 1.02),
    "size_payload_over_limit_w8": ("<=", 1.02),
    "int8_w8a8_over_fp32": ("<=", 0.35),
    "int8_w8a8_over_ort_static_qdq": ("<=", 1.10),
    "int8_mobilenetv3_small_over_ort_static_qdq": ("<=", 1.10),
    "int8_yolov3_tiny_over_ort_static_qdq": ("<=", 1.10),
    # Issue 29: a sensitivity pass on NIN costs at most one QAT training epoch.
    "sensitivity_hessian_over_epoch": ("<=", 1.0),
    "sensitivity_fisher_over_epoch": ("<=", 1.0),
    "sensitivity_ablation_over_epoch": ("<=", 1.0),
}
# Issue 15's "done when": NIN, batch 128, each ratio to the FP32 step of the same mode.
TRAIN_STEP_TARGETS = {
    "eager": [("dorefa_w4a4g32", 1.15), ("dorefa_w4a4g8", 1.30), ("pact_w4a4", 1.25)],
    "compiled": [("dorefa_w4a4g32", 1.05), ("dorefa_w4a4g8", 1.15)],
}
TARGETS.update(
    {
        f"{'step' if mode == 'eager' else 'step_compiled'}_{name}_over_fp32": ("<=", bound)
        for mode, bounds in TRAIN_STEP_TARGETS.items()
        for name, bound in bounds
    }
)


def dorefa_nin(bits: int, gbits: int = 32) -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(
        NIN(num_classes=10),
        quantizer="dorefa",
        wbits=bits,
        abits=bits,
        gbits=gbits,
        input_shape=SHAPE,
        **BITS,
    )


def table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([title, line(headers), line(["-" * w for w in widths]), *map(line, cells), ""])


def bench_size(folder: Path) -> tuple[dict, str]:
    results, rows = {}, []
    for bits in (2, 4, 8):
        model = dorefa_nin(bits)
        path = save_packed(model, folder / f"nin_w{bits}.safetensors")
        limit = size_limit_bytes(model)
        entry = {
            "file_bytes": path.stat().st_size,
            "header_bytes": header_bytes(path),
            "payload_bytes": payload_bytes(path),
            "limit_bytes": limit,
            "payload_over_limit": payload_bytes(path) / limit,
        }
        results[f"w{bits}"] = entry
        rows.append(
            [
                f"W{bits}A{bits}",
                f"{entry['file_bytes']:,}",
                f"{entry['header_bytes']:,}",
                f"{entry['payload_bytes']:,}",
                f"{limit:,}",
                f"{entry['payload_over_limit']:.4f}",
            ]
        )
    text = table(
        "Packed size, NIN DoReFa (first/last layer 8-bit), BatchNorm as its affine map",
        ["bits", "file", "header", "payload", "limit", "payload/limit"],
        rows,
    )
    return results, text


def calibration_images(count: int) -> torch.Tensor:
    data = DigitsData(batch_size=count)
    data.setup()
    return torch.stack([data.val_set[i][0] for i in range(min(count, len(data.val_set)))])


@torch.no_grad()
def torch_fp32_ms(threads: int, warmup: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    model = NIN(num_classes=10).eval()
    x = torch.randn(1, *SHAPE)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def bench_latency(
    folder: Path, threads: int, warmup: int, repeats: int, calibration_count: int
) -> tuple[dict, str]:
    from lowbit.export.onnx import (
        export_fp32_onnx,
        export_int8_onnx,
        onnx_latency_table,
        ort_static_qdq,
    )

    images = calibration_images(calibration_count)
    torch.manual_seed(0)
    fp32 = export_fp32_onnx(NIN(num_classes=10).eval(), SHAPE, folder / "nin_fp32.onnx")
    paths = {
        "ort_fp32": fp32,
        "ort_static_qdq": ort_static_qdq(fp32, images, folder / "nin_ort_static_qdq.onnx"),
        "lowbit_int8_w8a8": export_int8_onnx(
            dorefa_nin(8).eval(), SHAPE, folder / "nin_w8a8.onnx", calibration=images
        ),
        "lowbit_int8_w4a4": export_int8_onnx(
            dorefa_nin(4).eval(), SHAPE, folder / "nin_w4a4.onnx", calibration=images
        ),
    }
    timings = onnx_latency_table(paths, SHAPE, threads=threads, warmup=warmup, repeats=repeats)
    base = timings["ort_fp32"]["ms"]
    results = {  # each round's times stay out of the JSON line
        name: {**without_rounds(t), "over_ort_fp32": t["ms"] / base} for name, t in timings.items()
    }
    results["torch_eager_fp32"] = {
        "ms": torch_fp32_ms(threads, warmup, repeats),
        "threads": threads,
    }
    results["torch_eager_fp32"]["over_ort_fp32"] = results["torch_eager_fp32"]["ms"] / base
    static = timings["ort_static_qdq"]["ms"]
    rows = [
        [
            name,
            f"{r['ms']:.3f}",
            f"{r.get('min_ms', float('nan')):.3f}",
            f"{r['over_ort_fp32']:.3f}",
            f"{r['ms'] / static:.3f}",
        ]
        for name, r in results.items()
    ]
    text = table(
        f"Latency, NIN batch 1, {threads} threads, median of {repeats} runs taken in "
        f"interleaved blocks (onnx_latency_table)",
        ["model", "median ms", "min ms", "x ORT FP32", "x ORT static QDQ"],
        rows,
    )
    return results, text


# W8A8 as MobileNetV3's and YOLOv3-tiny's presets train them (PaddleOCR's recipe: symmetric
# PACT, per-channel abs-max weights)
DEPLOYED_QUANT = dict(
    quantizer="pact_symmetric",
    wbits=8,
    abits=8,
    gbits=32,
    weight_quantizer="channel_wise_abs_max",
    alpha_init=6.0,
)


def deployed_models(
    quick: bool = False, requantize_outputs: bool = True
) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    """The deployed section's networks, quantized W8A8 as their presets train them (a quick
    smoke run uses smaller images); ``requantize_outputs``: ``quant.requantize_outputs``, the
    same weights either way."""
    quant = dict(**DEPLOYED_QUANT, **BITS, requantize_outputs=requantize_outputs)
    mobilenet_side, yolo_side = (64, 128) if quick else (224, 416)
    torch.manual_seed(0)
    mobilenet = MobileNetV3("small", num_classes=1000)
    mobilenet_shape = (3, mobilenet_side, mobilenet_side)
    yolo = YOLOv3Tiny(num_classes=80, input_size=yolo_side)
    yolo_shape = (3, yolo_side, yolo_side)
    return {
        "mobilenetv3_small": (
            quantize_model(mobilenet, input_shape=mobilenet_shape, **quant),
            mobilenet_shape,
        ),
        "yolov3_tiny": (quantize_model(yolo, input_shape=yolo_shape, **quant), yolo_shape),
    }


# The deployed section's rows: runtime, precision and kind of each runner (int8 or float).
# lowbit's ONNX Runtime row is the export's default format (export.format); another format given
# to --formats adds a row named with it (lowbit_int8_qop). OpenVINO runs lowbit's integers in its
# own form, as the export does (lowbit.export.openvino_form), whatever the format. The
# float_outputs rows are the same weights trained without output requantizers
# (quant.requantize_outputs=false; docs/export.md, "Two contracts").
DEPLOYED_PATHS = {
    "ort_fp32": ("onnxruntime", "fp32", "float"),
    "ort_static_qdq": ("onnxruntime", "int8 (ORT static QDQ)", "reference"),
    "lowbit_int8": ("onnxruntime", "int8 (lowbit {format})", "int8"),
    "lowbit_int8_float_outputs": ("onnxruntime", "int8 (lowbit qdq, float outputs)", "int8"),
    "openvino_fp32": ("openvino", "fp32", "float"),
    "openvino_default": ("openvino", "{precision} (default)", "float"),
    "openvino_static_qdq": ("openvino", "int8 (ORT static QDQ)", "reference"),
    "openvino_lowbit_int8": ("openvino", "int8 (lowbit, OpenVINO's form)", "int8"),
    "openvino_lowbit_int8_float_outputs": (
        "openvino",
        "int8 (lowbit, OpenVINO's form, float outputs)",
        "int8",
    ),
}
LOWBIT_ROWS = ("lowbit_int8",)
# Rounds of the deployed section's interleaved blocks: a paired ratio's 95% interval needs six
# or more (lowbit.measure.step_time.median_interval); of ten it is the 2nd to the 9th.
DEPLOYED_ROUNDS = 10


def format_row(row: str, form: str) -> str:
    """The name of lowbit's int8 ``row`` (``LOWBIT_ROWS``) in format ``form``."""
    return row if form == DEFAULT_FORMAT else f"{row}_{form}"


def deployed_path(key: str) -> tuple[str, str, str]:
    """(runtime, precision, kind) of a deployed row (``DEPLOYED_PATHS``, ``format_row``)."""
    base, _, form = key.rpartition("_")
    if base in LOWBIT_ROWS and form in FORMATS:
        runtime, label, kind = DEPLOYED_PATHS[base]
    else:
        (runtime, label, kind), form = DEPLOYED_PATHS[key], DEFAULT_FORMAT
    return runtime, label.replace("{format}", form), kind


def path_label(key: str, entry: dict) -> str:
    """A deployed runner's runtime and precision, e.g. "openvino bf16 (default)"."""
    runtime, label, _ = deployed_path(key)
    return f"{runtime} {label.format(precision=entry['openvino_default_precision'])}"


def deployed_runners(
    paths: dict[str, Path], threads: int, openvino_paths: dict[str, Path]
) -> tuple[dict, str | None]:
    """ONNX Runtime's sessions of ``paths`` and, where OpenVINO is installed, its compiled
    models (``lowbit.export.openvino_run``) of the float file and ORT's static QDQ file, and of
    ``openvino_paths`` (lowbit's integers in OpenVINO's form, by row); with OpenVINO's default
    precision (None without it). A graph OpenVINO cannot read has no row, and a line says why."""
    from lowbit.errors import one_line
    from lowbit.export.onnx import ort_runner
    from lowbit.export.openvino_run import compiled_runner, openvino_missing

    runners = {name: ort_runner(path, threads) for name, path in paths.items()}
    missing = openvino_missing()
    if missing is not None:
        print(f"deployed: OpenVINO rows skipped: {missing}", file=sys.stderr)
        return runners, None
    import openvino

    core = openvino.Core()
    runners["openvino_fp32"], _ = compiled_runner(core, paths["ort_fp32"], threads, "f32")
    runners["openvino_default"], precision = compiled_runner(core, paths["ort_fp32"], threads)
    files = {"openvino_static_qdq": paths["ort_static_qdq"], **openvino_paths}
    for row, path in files.items():
        try:
            runners[row], _ = compiled_runner(core, path, threads)
        except RuntimeError as error:
            print(f"deployed: {row} skipped: {one_line(error, max_lines=6)}", file=sys.stderr)
    return runners, precision


def without_rounds(timing: dict) -> dict:
    """A runner's timing (``interleaved_latency``) without each round's times: the JSON line
    keeps the summaries."""
    return {key: value for key, value in timing.items() if key != "rounds_ms"}


def bench_deployed(
    folder: Path,
    threads: int,
    warmup: int,
    repeats: int,
    calibration_count: int,
    quick: bool = False,
    formats: tuple[str, ...] = (DEFAULT_FORMAT,),
) -> tuple[dict, str]:
    """The runtime x precision table of each deployed model (module docstring): every runner
    of a model timed round-robin in the same interleaved blocks (``DEPLOYED_ROUNDS`` rounds),
    each over ORT FP32, over ORT's static QDQ and over the model's best float path, the last
    also paired (``paired_over_best_float``: median and 95% interval of the round-by-round
    ratios of round medians, ``paired_ratio``); ``best_float``/``best_int8`` name the fastest
    float and lowbit int8 runners, ``int8_speedup`` is best float ms over best int8 ms, and
    ``int8_speedup_paired`` (``_interval``, ``_coverage``) the same ratio paired. lowbit's
    int8 graph is written in each of ``formats`` (``export.format``), all timed together."""
    from lowbit.export.onnx import (
        export_fp32_onnx,
        export_int8_onnx,
        interleaved_latency,
        ort_static_qdq,
    )
    from lowbit.export.openvino_form import write_openvino_form

    results, rows, coverages = {}, [], set()
    block = max(1, math.ceil(repeats / DEPLOYED_ROUNDS))
    float_outputs = deployed_models(quick, requantize_outputs=False)
    for name, (model, shape) in deployed_models(quick).items():
        model.eval()
        images = torch.randn(calibration_count, *shape, generator=torch.Generator().manual_seed(0))
        fp32 = export_fp32_onnx(model, shape, folder / f"{name}_fp32.onnx")
        paths = {
            "ort_fp32": fp32,
            "ort_static_qdq": ort_static_qdq(fp32, images, folder / f"{name}_ort_qdq.onnx"),
            **{
                format_row("lowbit_int8", form): export_int8_onnx(
                    model, shape, folder / f"{name}_int8_{form}.onnx", images, form=form
                )
                for form in formats
            },
            "lowbit_int8_float_outputs": export_int8_onnx(
                float_outputs[name][0].eval(), shape, folder / f"{name}_int8_fo.onnx", images
            ),
        }
        qdq = paths.get(format_row("lowbit_int8", "qdq")) or export_int8_onnx(
            model, shape, folder / f"{name}_int8_qdq.onnx", images, form="qdq"
        )
        openvino_paths = {
            "openvino_lowbit_int8": write_openvino_form(qdq, folder / f"{name}_int8_ov.onnx"),
            "openvino_lowbit_int8_float_outputs": write_openvino_form(
                paths["lowbit_int8_float_outputs"], folder / f"{name}_int8_fo_ov.onnx"
            ),
        }
        runners, precision = deployed_runners(paths, threads, openvino_paths)
        timings = interleaved_latency(
            runners, shape, threads, warmup=warmup, repeats=repeats, block=block
        )
        best = {
            kind: min((t["ms"], key) for key, t in timings.items() if deployed_path(key)[2] == kind)
            for kind in ("float", "int8")
        }
        base, static = timings["ort_fp32"]["ms"], timings["ort_static_qdq"]["ms"]
        # every runner's rounds are the same rounds: ratios of their medians are paired
        rounds = {key: [statistics.median(r) for r in t["rounds_ms"]] for key, t in timings.items()}
        best_float = rounds[best["float"][1]]
        results[name] = {
            key: {
                **without_rounds(t),
                "over_ort_fp32": t["ms"] / base,
                "over_ort_static_qdq": t["ms"] / static,
                "over_best_float": t["ms"] / best["float"][0],
                "paired_over_best_float": paired_ratio(rounds[key], best_float),
            }
            for key, t in timings.items()
        }
        speedup = paired_ratio(best_float, rounds[best["int8"][1]])
        results[name].update(
            best_float=best["float"][1],
            best_int8=best["int8"][1],
            int8_speedup=best["float"][0] / best["int8"][0],
            int8_speedup_paired=speedup["median"],
            int8_speedup_interval=speedup["interval"],
            int8_speedup_coverage=speedup["coverage"],
            rounds=len(best_float),
            openvino_default_precision=precision,
        )
        coverages.add(speedup["coverage"])
        for key, t in timings.items():
            runtime, label = path_label(key, results[name]).split(" ", 1)
            ratios = (base, static, best["float"][0])
            paired = results[name][key]["paired_over_best_float"]
            rows.append(
                [name, runtime, label, f"{t['ms']:.3f}"]
                + [f"{t['ms'] / ratio:.3f}" for ratio in ratios]
                + [with_interval(paired["median"], paired["interval"])]
            )
    coverage = "/".join(f"{c:.0%}" for c in sorted(coverages))
    text = table(
        f"Deployed latency, batch 1, {threads} threads, median of {repeats} runs in "
        f"{math.ceil(repeats / block)} interleaved rounds; paired: median of the round-by-round "
        f"ratios of round medians [{coverage} interval of that median]",
        [
            "model",
            "runtime",
            "precision",
            "median ms",
            "x ORT FP32",
            "x ORT static QDQ",
            "x best float",
            "paired x best float",
        ],
        rows,
    )
    speedups = [
        f"{name}: best float {path_label(r['best_float'], r)}, best int8 "
        f"{path_label(r['best_int8'], r)}, int8 speedup {r['int8_speedup']:.3f}, paired "
        f"{with_interval(r['int8_speedup_paired'], r['int8_speedup_interval'])}: "
        f"{faster(r['int8_speedup_interval'])}"
        for name, r in results.items()
    ]
    return results, text + "\n".join(speedups) + "\n"


def with_interval(value: float, interval: list[float]) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def faster(speedup_interval: list[float]) -> str:
    """Which path is faster, by the interval of the paired best-float-over-int8 ratio."""
    low, high = speedup_interval
    if low > 1:
        return "int8 is faster"
    return "the float path is faster" if high < 1 else "within noise"


# A run's defaults (conf/quant): first/last layer 8-bit and the image quantized to 8 bits too.
# The image quantizer was left out until 2026-11-30, and with it the graph breaks it caused in
# compiled training (lowbit.quant.modules.ImageQuantizer).
STEP_BITS = dict(**BITS, input_bits=8)
STEP_CONFIGS = {  # issue 15: each method at W4A4 over its FP32 twin
    "fp32": None,
    "dorefa_w4a4g32": dict(quantizer="dorefa", wbits=4, abits=4, gbits=32, **STEP_BITS),
    "dorefa_w4a4g8": dict(quantizer="dorefa", wbits=4, abits=4, gbits=8, **STEP_BITS),
    "pact_w4a4": dict(quantizer="pact", wbits=4, abits=4, gbits=32, **STEP_BITS),
    "lsq_w4a4": dict(quantizer="lsq", wbits=4, abits=4, gbits=32, **STEP_BITS),
}
STEP_MODES = ("eager", "compiled")


def step_models(quick: bool) -> dict[str, tuple]:
    """name: (factory, input shape, batch): NIN as in the targets; MobileNetV3-Small with its
    CIFAR stem on 32x32 images (the CIFAR preset's). A quick run uses small batches."""
    return {
        "nin": (lambda: NIN(num_classes=10), SHAPE, 4 if quick else 128),
        "mobilenetv3_small": (
            lambda: MobileNetV3("small", num_classes=10, stem="cifar"),
            SHAPE,
            2 if quick else 128,
        ),
    }


def bench_train_step(
    threads: int,
    warmup: int,
    repeats: int,
    modes: list[str],
    quick: bool = False,
    models: list[str] | None = None,
    layouts: tuple[str, ...] = ("nhwc",),
) -> tuple[dict, str]:
    """Per model and mode (eager, compiled), each configuration's step over the FP32 step of the
    same mode and layout, all of a model's configurations and layouts of one mode interleaved in
    one process. ``models``: a subset of ``step_models``' names (default: all)."""
    results: dict[str, dict] = {}
    rows, compile_lines = [], []
    for model_name, (factory, shape, batch_size) in step_models(quick).items():
        if models is not None and model_name not in models:
            continue
        for mode in modes:
            measured = training_step_ratios(
                STEP_CONFIGS,
                batch_size=batch_size,
                input_shape=shape,
                threads=threads,
                warmup=max(warmup, 2) if mode == "compiled" else warmup,
                repeats=repeats,
                model_factory=factory,
                compile=mode == "compiled",
                layouts=layouts,
            )
            entries = {
                name: {k: v for k, v in entry.items() if k != "times_ms"}
                for name, entry in measured.items()
            }
            results.setdefault(model_name, {})[mode] = entries
            # progress on stderr: the section's table comes only once every model has run
            print(
                f"train_step {model_name} {mode}: "
                + ", ".join(f"{name} {r['paired_ratio']:.3f}x" for name, r in entries.items()),
                file=sys.stderr,
                flush=True,
            )
            rows += [
                [
                    model_name,
                    mode,
                    r["layout"],
                    name.split("@")[0],
                    batch_size,
                    f"{r['ms']:.1f}",
                    f"{r['ratio']:.3f}",
                    f"{r['paired_ratio']:.3f} [{r['paired_interval'][0]:.3f}, "
                    f"{r['paired_interval'][1]:.3f}]",
                    f"{r['cpu_ratio']:.3f}",
                    (
                        f"{r['over_first_layout']['median']:.3f} "
                        f"[{r['over_first_layout']['interval'][0]:.3f}, "
                        f"{r['over_first_layout']['interval'][1]:.3f}]"
                        if "over_first_layout" in r
                        else ""
                    ),
                ]
                for name, r in entries.items()
            ]
            model_compile_lines = [
                f"compile time {model_name} {name}: {r['compile_s']:.1f} s "
                f"(warm-up steps beyond median steps)"
                for name, r in entries.items()
                if "compile_s" in r
            ]
            # also now, on stderr: a run stopped before the end keeps what it compiled
            for line in model_compile_lines:
                print(line, file=sys.stderr, flush=True)
            compile_lines += model_compile_lines
    layout_names = " and ".join(layout.upper() for layout in layouts)
    text = table(
        f"Training step, {threads} threads, {layout_names}, "
        f"median of {repeats} round-robin steps per model and mode; ratios to the FP32 step "
        f"of the same model, mode and layout; paired: median of the round-by-round ratios "
        f"[95% interval of that median{'' if repeats >= 6 else f', here the range of {repeats}'}]",
        [
            "model",
            "mode",
            "layout",
            "config",
            "batch",
            "median ms",
            "x FP32",
            "paired x FP32",
            "x FP32 (CPU time)",
            f"x own {layouts[0].upper()} step" if len(layouts) > 1 else "",
        ],
        rows,
    )
    return results, text + "\n".join(compile_lines) + ("\n" if compile_lines else "")


def bench_sensitivity(threads: int, repeats: int, quick: bool = False) -> tuple[dict, str]:
    """Seconds of one QAT epoch and of each scoring pass, round-robin, with their ratios."""
    import copy

    import torch.nn.functional as F

    from lowbit.cli import compose
    from lowbit.mixed.allocate import scoring_batches
    from lowbit.mixed.sensitivity import METHODS, SPLITS, layer_sensitivity
    from lowbit.quant.convert import edge_layers, plan_quantization

    torch.set_num_threads(threads)
    defaults = compose("allocate", [])
    batches, size = int(defaults.sensitivity.batches), int(defaults.sensitivity.batch_size)
    samples = int(defaults.sensitivity.samples)
    if quick:  # a smoke run: the code path, not a number
        batches, size, samples = 1, 4, 2
    data = DigitsData(batch_size=16 if quick else 128)
    data.setup()
    quant = dict(quantizer="lsq", wbits=4, abits=4, **BITS)
    model = NIN(num_classes=10)
    scheme, plan = plan_quantization(model, input_shape=SHAPE, **quant)
    layers = [n for n, bits in plan.items() if n not in edge_layers(model)]
    scored_on = {
        "train": scoring_batches(data.train_dataloader(), batches, size),
        "val": scoring_batches(data.val_dataloader(), batches, size),
    }
    trained = quantize_model(copy.deepcopy(model), input_shape=SHAPE, **quant).train()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.01)
    train_batches = list(data.train_dataloader())[: 1 if quick else None]

    def epoch() -> None:
        for images, labels in train_batches:
            optimizer.zero_grad()
            F.cross_entropy(trained(images), labels).backward()
            optimizer.step()

    def scoring(method: str):
        def run() -> None:
            layer_sensitivity(
                method,
                model,
                scheme,
                layers,
                list(defaults.widths)[:2] if quick else list(defaults.widths),
                scored_on[SPLITS[method]],
                samples=samples,
            )

        return run

    passes = {"epoch": epoch, **{method: scoring(method) for method in METHODS}}
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run in passes.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    epoch_s = statistics.median(seconds["epoch"])
    results = {
        "epoch_s": epoch_s,
        "train_batches": len(train_batches),
        "scoring": {"batches": batches, "batch_size": size, "samples": samples},
    }
    rows = [["QAT epoch (LSQ W4A4)", f"{epoch_s:.1f}", "1.00", ""]]
    for method in METHODS:
        ratios = [m / e for m, e in zip(seconds[method], seconds["epoch"])]
        results[method] = {
            "s": statistics.median(seconds[method]),
            "over_epoch": statistics.median(ratios),
            "ratios": ratios,
        }
        rows.append(
            [
                method,
                f"{results[method]['s']:.1f}",
                f"{results[method]['over_epoch']:.2f}",
                f"{min(ratios):.2f}-{max(ratios):.2f}",
            ]
        )
    text = table(
        f"Sensitivity pass against one QAT epoch, NIN on digits, {threads} threads, median of "
        f"{repeats} rounds; scoring: {batches} batches of {size} images, {samples} Hutchinson "
        f"samples",
        ["pass", "median s", "x epoch (paired)", "range"],
        rows,
    )
    return results, text


def target_values(results: dict) -> dict[str, float]:
    """Every target's measured value; step targets read the paired ratio of the first layout."""
    values = {}
    if "size" in results:
        for bits in (2, 4, 8):
            values[f"size_payload_over_limit_w{bits}"] = results["size"][f"w{bits}"][
                "payload_over_limit"
            ]
    if "latency" in results:
        latency = results["latency"]
        values["int8_w8a8_over_fp32"] = latency["lowbit_int8_w8a8"]["over_ort_fp32"]
        values["int8_w8a8_over_ort_static_qdq"] = (
            latency["lowbit_int8_w8a8"]["ms"] / latency["ort_static_qdq"]["ms"]
        )
    for name in results.get("deployed", {}):
        values[f"int8_{name}_over_ort_static_qdq"] = results["deployed"][name]["lowbit_int8"][
            "over_ort_static_qdq"
        ]
    for target, entry in step_target_entries(results).items():
        values[target] = entry["paired_ratio"]
    for method in ("hessian", "fisher", "ablation"):
        if method in results.get("sensitivity", {}):
            values[f"sensitivity_{method}_over_epoch"] = results["sensitivity"][method][
                "over_epoch"
            ]
    return values


def step_target_entries(results: dict) -> dict[str, dict]:
    """Each step target's name and its NIN bench entry (the first layout's)."""
    nin = results.get("train_step", {}).get("nin", {})
    return {
        f"{prefix}_{name}_over_fp32": nin[mode][name]
        for mode, prefix in (("eager", "step"), ("compiled", "step_compiled"))
        if mode in nin
        for name, _ in TRAIN_STEP_TARGETS[mode]
    }


def target_intervals(results: dict) -> dict[str, tuple[list[float], float]]:
    """(interval, coverage) of each step target's paired ratio; the other targets have none."""
    return {
        target: (entry["paired_interval"], entry["paired_coverage"])
        for target, entry in step_target_entries(results).items()
    }


def verdict(value: float, bound: float, interval: list[float] | None) -> str:
    """met / MISSED for a value <= bound target; "within noise" when the value's 95%
    interval reaches both sides of the bound, whichever side the value itself is on."""
    if interval is not None and interval[0] <= bound < interval[1]:
        return "within noise"
    return "met" if value <= bound else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed repeats (default: 200 latency, 15 train step)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 5 repeats, train-step batch 16 (numbers not reportable)",
    )
    parser.add_argument(
        "--modes",
        default=None,
        help="train_step modes, from eager, compiled (default: both; --quick: "
        "eager, since a compile takes minutes)",
    )
    parser.add_argument(
        "--models",
        default=None,
        help=f"train_step models, from {', '.join(step_models(False))} (default: all)",
    )
    parser.add_argument(
        "--layouts",
        default="nhwc",
        help="train_step: memory orders of every model and batch, FP32 too, from "
        f"{', '.join(LAYOUTS)}; several are interleaved and compared (default: nhwc, as a "
        "run trains: conf/train.yaml channels_last)",
    )
    parser.add_argument(
        "--formats",
        default=DEFAULT_FORMAT,
        help=f"deployed: lowbit's int8 graph in each of these export.format values, from "
        f"{', '.join(FORMATS)}, timed side by side (default: {DEFAULT_FORMAT}, the export's)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    step_model_names = [m.strip() for m in (args.models or "").split(",") if m.strip()] or None
    unknown_models = sorted(set(step_model_names or []) - set(step_models(False)))
    if unknown_models:
        print(
            f"bench: unknown model(s) {', '.join(unknown_models)}: choose from "
            f"{', '.join(step_models(False))}",
            file=sys.stderr,
        )
        return 2
    modes = [
        m.strip()
        for m in (args.modes or ("eager" if args.quick else ",".join(STEP_MODES))).split(",")
        if m.strip()
    ]
    unknown_modes = sorted(set(modes) - set(STEP_MODES))
    if unknown_modes or not modes:
        print(
            f"bench: unknown mode(s) {', '.join(unknown_modes) or '(none given)'}: choose from "
            f"{', '.join(STEP_MODES)}",
            file=sys.stderr,
        )
        return 2
    layouts = [m.strip() for m in args.layouts.split(",") if m.strip()]
    unknown_layouts = sorted(set(layouts) - set(LAYOUTS))
    if unknown_layouts or not layouts or len(set(layouts)) != len(layouts):
        print(
            f"bench: --layouts takes distinct names from {', '.join(LAYOUTS)}, "
            f"got {args.layouts!r}",
            file=sys.stderr,
        )
        return 2
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats or set(formats) - set(FORMATS) or len(set(formats)) != len(formats):
        print(
            f"bench: --formats takes distinct names from {', '.join(FORMATS)}, "
            f"got {args.formats!r}",
            file=sys.stderr,
        )
        return 2
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        print(
            f"bench: unknown section(s) {', '.join(unknown) or '(none given)'}: choose from "
            f"{', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
        print("bench: --threads and --repeats must be at least 1", file=sys.stderr)
        return 2

    # training's allocator setting (lowbit.allocator): FP32 and quantized steps alike
    results: dict[str, Any] = {
        "threads": args.threads,
        "quick": args.quick,
        "keep_freed_memory": keep_freed_memory(),
    }
    if "train_step" in sections:
        results["train_step_modes"] = modes
        results["layouts"] = layouts
    if "deployed" in sections:
        results["deployed_formats"] = formats
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as scratch:
        folder = Path(scratch)
        if "size" in sections:
            results["size"], text = bench_size(folder)
            print(text, flush=True)
        if "latency" in sections:
            repeats = args.repeats or (5 if args.quick else 200)
            results["latency"], text = bench_latency(
                folder,
                args.threads,
                warmup=2 if args.quick else 20,
                repeats=repeats,
                calibration_count=32 if args.quick else 256,
            )
            print(text, flush=True)
        if "deployed" in sections:
            repeats = args.repeats or (3 if args.quick else 50)
            results["deployed"], text = bench_deployed(
                folder,
                args.threads,
                warmup=1 if args.quick else 10,
                repeats=repeats,
                calibration_count=2 if args.quick else 16,
                quick=args.quick,
                formats=tuple(formats),
            )
            print(text, flush=True)
        if "train_step" in sections:
            repeats = args.repeats or (2 if args.quick else 15)
            results["train_step"], text = bench_train_step(
                args.threads,
                warmup=1 if args.quick else 3,
                repeats=repeats,
                modes=modes,
                quick=args.quick,
                models=step_model_names,
                layouts=tuple(layouts),
            )
            print(text, flush=True)
        if "sensitivity" in sections:
            results["sensitivity"], text = bench_sensitivity(
                args.threads, repeats=args.repeats or (1 if args.quick else 3), quick=args.quick
            )
            print(text, flush=True)

    values, intervals = target_values(results), target_intervals(results)
    results["targets"] = {
        name: {
            "value": value,
            "bound": TARGETS[name][1],
            "met": value <= TARGETS[name][1],
            **(
                {"interval": intervals[name][0], "coverage": intervals[name][1]}
                if name in intervals
                else {}
            ),
            "verdict": verdict(value, TARGETS[name][1], intervals.get(name, (None,))[0]),
        }
        for name, value in values.items()
    }
    for name, target in results["targets"].items():
        interval = (
            f" [{target['coverage']:.0%}: {target['interval'][0]:.3f}, {target['interval'][1]:.3f}]"
            if "interval" in target
            else ""
        )
        print(
            f"target {name}: {target['value']:.3f}{interval} <= {target['bound']}: "
            f"{target['verdict']}"
        )
    print(json.dumps(results, sort_keys=True))
    missed = [name for name, target in results["targets"].items() if not target["met"]]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
