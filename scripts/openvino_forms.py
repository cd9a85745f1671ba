"""Which part of OpenVINO's form of the integer graph buys what, against OpenVINO's own int8.

    python scripts/openvino_forms.py --out docs/results/openvino_forms
    python scripts/openvino_forms.py --model yolov3_tiny --quick      # small images, a smoke run

Builds each deployed model as ``scripts/bench.py --sections deployed`` does (W8A8 symmetric
PACT, fresh weights: speed does not depend on them) and writes these int8 graphs:

- ``lowbit_qdq``: lowbit's ``qdq`` graph, ONNX Runtime's form (``export.format=qdq``);
- ``signed_grids`` and ``float_clips``: each rewrite of ``lowbit.export.openvino_form`` alone;
- ``openvino_form``: both, the file the export stage gives OpenVINO (model_int8_openvino.onnx);
- ``float_outputs``: the same weights quantized with ``quant.requantize_outputs=false`` (no
  output requantizers), in OpenVINO's form; its ``qdq`` graph in ONNX Runtime;
- ``nncf`` (a reference, where the ``nncf`` package is installed): OpenVINO's own post-training
  quantization of the float graph (``nncf.quantize``, default preset, 16 calibration images).

Every rewrite is checked against the graph it came from with ONNX Runtime's graph
optimizations off (every op as ONNX defines it), bit for bit, on 4 images. All graphs run in
OpenVINO at its defaults (``compiled_runner``), the rewrites of ``lowbit_qdq`` and the float
outputs' graph in ONNX Runtime too, beside OpenVINO's float graph at its default precision (bf16
on an AMX CPU) and f32. All take turns in the same blocks (``interleaved_latency``); each row's
``over_best_float`` is the paired ratio over OpenVINO's default float path (median and 95%
interval of the rounds' ratios, ``paired_ratio``). Writes ``forms.csv`` with ``--out``; the
last line is one JSON object with every row.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lowbit.export.onnx import (
    export_fp32_onnx,
    export_int8_onnx,
    interleaved_latency,
    ort_runner,
)
from lowbit.export.openvino_form import (
    NotExact,
    float_clips,
    openvino_form,
    outputs_op_by_op,
    signed_grids,
    write_openvino_form,
)
from lowbit.export.openvino_run import compiled_runner, openvino_missing
from lowbit.measure.step_time import paired_ratio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import deployed_models  # noqa: E402

MODELS = ("mobilenetv3_small", "yolov3_tiny")
REWRITES: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "signed_grids": signed_grids,
    "float_clips": float_clips,
    "openvino_form": openvino_form,
}


def same_codes(reference: Path, rewritten: Path, shape: tuple[int, ...]) -> bool:
    """Whether both graphs give the same outputs, op by op, bit for bit, on 4 images."""
    images = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    want, got = outputs_op_by_op(reference, images), outputs_op_by_op(rewritten, images)
    return all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def nncf_model(fp32: Path, images: torch.Tensor, out: Path) -> Path | None:
    """OpenVINO's own int8 model of the float graph (module docstring), or None without nncf."""
    try:
        import nncf
        import openvino
    except ImportError:
        return None
    core = openvino.Core()
    dataset = nncf.Dataset([images[i : i + 1].numpy() for i in range(len(images))])
    quantized = nncf.quantize(core.read_model(str(fp32)), dataset, subset_size=len(images))
    openvino.save_model(quantized, str(out))
    return out


def measure_model(
    name: str,
    models: dict[str, torch.nn.Module],
    shape: tuple[int, ...],
    folder: Path,
    threads: int,
    warmup: int,
    repeats: int,
    block: int,
) -> list[dict[str, Any]]:
    """Every graph's row for one model (module docstring); ``models``: the model quantized with
    output requantizers ("requantized") and without ("float_outputs")."""
    import openvino

    images = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    requantized, float_outputs = (models[k].eval() for k in ("requantized", "float_outputs"))
    fp32 = export_fp32_onnx(requantized, shape, folder / f"{name}_fp32.onnx")
    qdq = export_int8_onnx(requantized, shape, folder / f"{name}_int8.onnx", images, form="qdq")
    fo_qdq = export_int8_onnx(float_outputs, shape, folder / f"{name}_fo.onnx", images, form="qdq")
    graphs = {"lowbit_qdq": qdq}
    for form, rewrite in REWRITES.items():
        graphs[form] = folder / f"{name}_{form}.onnx"
        onnx.save(rewrite(onnx.load(str(qdq))), str(graphs[form]))
    graphs["float_outputs"] = write_openvino_form(fo_qdq, folder / f"{name}_fo_openvino.onnx")
    for form, path in graphs.items():
        source = fo_qdq if form == "float_outputs" else qdq
        if path != source and not same_codes(source, path, shape):
            raise NotExact(f"{name}: the {form} rewrite changed the graph's outputs")
    reference = nncf_model(fp32, images, folder / f"{name}_nncf.xml")
    core = openvino.Core()
    runners, labels = {}, {}
    runners["openvino_float_default"], precision = compiled_runner(core, fp32, threads)
    runners["openvino_float_f32"], _ = compiled_runner(core, fp32, threads, "f32")
    labels["openvino_float_default"] = ("openvino", f"float {precision} (default)")
    labels["openvino_float_f32"] = ("openvino", "float fp32")
    for form, path in graphs.items():
        runners[f"openvino_{form}"], _ = compiled_runner(core, path, threads)
        labels[f"openvino_{form}"] = ("openvino", f"int8 {form}")
    for form, path in {**graphs, "float_outputs": fo_qdq}.items():
        if form != "openvino_form":  # both rewrites: their costs in ORT add up
            runners[f"onnxruntime_{form}"] = ort_runner(path, threads)
            labels[f"onnxruntime_{form}"] = ("onnxruntime", f"int8 {form}")
    labels["onnxruntime_float_outputs"] = ("onnxruntime", "int8 float_outputs (qdq)")
    if reference is not None:
        runners["openvino_nncf"], _ = compiled_runner(core, reference, threads)
        labels["openvino_nncf"] = ("openvino", "int8 nncf (reference)")
    timings = interleaved_latency(
        runners, shape, threads, warmup=warmup, repeats=repeats, block=block
    )
    rounds = {key: [statistics.median(r) for r in t["rounds_ms"]] for key, t in timings.items()}
    base = rounds["openvino_float_default"]
    rows = []
    for key, timing in timings.items():
        runtime, graph = labels[key]
        paired = paired_ratio(rounds[key], base)
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "graph": graph,
                "ms": round(timing["ms"], 3),
                "over_best_float": round(paired["median"], 3),
                "interval_low": round(paired["interval"][0], 3),
                "interval_high": round(paired["interval"][1], 3),
                "rounds": len(base),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, action="append", help="default: both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="small images (a smoke run)")
    parser.add_argument("--out", type=Path, help="a folder for forms.csv")
    args = parser.parse_args(argv)
    missing = openvino_missing()
    if missing is not None:
        print(f"openvino_forms: error: {missing}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.block < 1 or args.warmup < 0 or args.threads < 1:
        print("openvino_forms: error: --repeats, --block, --threads >= 1, --warmup >= 0",
              file=sys.stderr)  # fmt: skip
        return 2
    chosen = args.model or list(MODELS)
    rows = []
    timing = {"threads": args.threads, "warmup": args.warmup, "repeats": args.repeats}
    timing["block"] = args.block
    float_outputs = deployed_models(args.quick, requantize_outputs=False)
    with tempfile.TemporaryDirectory() as scratch:
        for name, (model, shape) in deployed_models(args.quick).items():
            if name in chosen:
                models = {"requantized": model, "float_outputs": float_outputs[name][0]}
                rows += measure_model(name, models, shape, Path(scratch), **timing)
    for row in rows:
        print(
            f"{row['model']:18s} {row['runtime']:11s} {row['graph']:28s} "
            f"{row['ms']:8.2f} ms  {row['over_best_float']:.3f} "
            f"[{row['interval_low']:.3f}, {row['interval_high']:.3f}]"
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "forms.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
