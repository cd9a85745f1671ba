"""Where a deployed model's int8 time goes, layer by layer, against its float model.

    python scripts/deployed_profile.py --model mobilenetv3_small
    python scripts/deployed_profile.py --model yolov3_tiny --out docs/results/deployed_profile
    python scripts/deployed_profile.py --float-outputs --out docs/results/deployed_profile
    python scripts/deployed_profile.py --ort-form      # the int8 graph as written for ORT

Builds the model as ``scripts/bench.py --sections deployed`` does (W8A8, fresh weights: speed
does not depend on them; ``--float-outputs``: without output requantizers,
``quant.requantize_outputs=false``), writes lowbit's int8 ONNX (``export.format``'s default),
its OpenVINO form (``lowbit.export.openvino_form``) and the float ONNX, and runs them with
per-node counters on:

- OpenVINO's CPU plugin, each model compiled as the export measures it (``lowbit.export.
  openvino_run.compiled_model``) with ``PERF_COUNT`` on: the int8 graph in OpenVINO's form at
  the plugin's defaults, the float graph at its default precision (bf16 on CPUs with AMX or
  AVX-512 BF16) and with the f32 hint. ``get_profiling_info()`` gives each executed node's
  time, kernel (exec type, such as ``brgconv_avx512_amx_I8``) and type after each run.
- ONNX Runtime (``lowbit.export.onnx.session`` with its profiler on): the int8 graph (its own
  form) and the float graph, by op type.

The five take turns in blocks of ``--block`` runs after ``--warmup`` untimed runs each, so a
loaded machine slows them alike; every figure is a median over the ``--repeats`` runs.

A layer is a Conv or Gemm of the ONNX graphs (the int8 and the float graph hold the same ones in
the same order). In OpenVINO its time is its own node (with what the plugin fused into it:
activation, requantization, residual sum) and every node that runs after it until the next
layer's: the dequantization, float activations, quantization and reorders that hand its output
on. Nodes before the first layer are the ``input`` row. Node kinds: the layer's (conv, dwconv,
gemm), ``reorder`` (layout or precision changes the plugin inserts), ``convert``, ``quantize``
(FakeQuantize), ``clip`` (a Clamp on integer codes: lowbit's clip of a grid tighter than the
integer type), ``eltwise`` and ``other``; the kinds table names the int8 graph's kernels of each.
The counters' own cost is in every configuration alike.

Prints three tables (OpenVINO per layer, OpenVINO per node kind, ONNX Runtime per op type) and,
with ``--out``, writes them as ``<model>_openvino_layers.csv``, ``<model>_openvino_kinds.csv``
and ``<model>_onnxruntime_ops.csv``. Times are ms per run; shares are of the configuration's
summed node times. The last line is one JSON object with every row.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch

from lowbit.export.onnx import INPUT, export_fp32_onnx, export_int8_onnx, session
from lowbit.export.openvino_form import write_openvino_form
from lowbit.export.openvino_run import chosen_precision, compiled_model, openvino_missing

MODELS = ("mobilenetv3_small", "yolov3_tiny")
LAYER_OPS = {"Conv": "conv", "Gemm": "gemm", "MatMul": "gemm"}
ELTWISE = {
    "Add", "Subtract", "Multiply", "Divide", "Eltwise", "Clamp", "Relu", "PRelu", "HSwish",
    "HSigmoid", "HardSigmoid", "Sigmoid", "Swish", "PowerStatic", "Power", "Subgraph", "Maximum",
    "Minimum", "Exp", "Tanh", "Gelu", "Mish", "Elu",
}  # fmt: skip
OVERHEAD = ("reorder", "convert", "quantize", "clip")  # what an int8 graph adds to a float one
KINDS = ("conv", "dwconv", "gemm", "eltwise", "quantize", "clip", "convert", "reorder", "other")


class Layer(NamedTuple):
    name: str  # the int8 graph's node name without its op (lowbit's module path, "_" for ".")
    kind: str  # conv, dwconv or gemm
    # its ONNX node's names in the int8 and in the float graph (``names_of``: OpenVINO names
    # a node that makes a model output after the output)
    names: tuple[tuple[str, ...], tuple[str, ...]]


def names_of(node, graph) -> tuple[str, ...]:
    """A node's name, its outputs' names and those of the Identity nodes that pass them on."""
    names = [node.name, *node.output]
    for other in graph.node:  # in topological order: a chain of Identities is followed
        if other.op_type == "Identity" and other.input[0] in names:
            names.extend(other.output)
    return tuple(names)


def layers_of(int8_path: Path, fp32_path: Path) -> list[Layer]:
    """The Conv and Gemm nodes of the two graphs, paired in order; a depthwise conv (one input
    channel per group, more than one group) is ``dwconv``."""
    int8, fp32 = (onnx.load(str(path)).graph for path in (int8_path, fp32_path))
    pairs = list(
        zip(
            [n for n in int8.node if n.op_type in LAYER_OPS],
            [n for n in fp32.node if n.op_type in LAYER_OPS],
        )
    )
    counts = [sum(n.op_type in LAYER_OPS for n in g.node) for g in (int8, fp32)]
    if counts[0] != counts[1] or any(a.op_type != b.op_type for a, b in pairs):
        raise ValueError(f"the int8 and float graphs hold different layers ({counts})")
    shapes = {tensor.name: tuple(tensor.dims) for tensor in fp32.initializer}
    layers = []
    for quantized, plain in pairs:
        kind = LAYER_OPS[plain.op_type]
        group = next((a.i for a in plain.attribute if a.name == "group"), 1)
        weight = shapes.get(plain.input[1], ())
        if kind == "conv" and group > 1 and len(weight) > 1 and weight[1] == 1:
            kind = "dwconv"
        layers.append(
            Layer(
                quantized.name.removesuffix(f"_{quantized.op_type}"),
                kind,
                (names_of(quantized, int8), names_of(plain, fp32)),
            )
        )
    return layers


# -- OpenVINO -------------------------------------------------------------------------------


def node_kind(node_type: str, exec_type: str) -> str:
    if node_type == "Reorder":
        return "reorder"
    if node_type == "Convert":
        return "convert"
    if node_type == "FakeQuantize":
        return "quantize"
    if node_type == "Clamp" and exec_type.endswith("_I8"):
        return "clip"  # on integer codes: lowbit's clip of a grid tighter than 8 bits
    return "eltwise" if node_type in ELTWISE else "other"


def owner_of(original: str, owners: dict[str, Layer]) -> Layer | None:
    """The layer an OpenVINO node's original name comes from: an ONNX node's name or output
    name, or one with the plugin's suffixes ("/WithoutBiases")."""
    while original:
        if original in owners:
            return owners[original]
        original = original.rpartition("/")[0]
    return None


class OpenVINOProfile:
    """One compiled model with counters on: per run, each executed node's ms, attributed to
    the layers (module docstring)."""

    def __init__(self, core, path: Path, threads: int, precision: str | None, graph: int, layers):
        self.compiled = compiled_model(core, path, threads, precision, perf_count=True)
        self.precision = chosen_precision(self.compiled)
        self.request = self.compiled.create_infer_request()
        owners = {name: layer for layer in layers for name in layer.names[graph]}
        self.order, self.layer_node = {}, {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            name = op.get_friendly_name()
            self.order[name] = int(info["execOrder"].astype(str))
            for original in info["originalLayersNames"].astype(str).split(","):
                owner = owner_of(original, owners)
                if owner is not None:
                    self.layer_node.setdefault(name, owner)
        found = {layer.name for layer in self.layer_node.values()}
        missing = [layer.name for layer in layers if layer.name not in found]
        if missing:
            raise ValueError(f"OpenVINO's runtime graph of {path.name} lost layers {missing}")
        self.runs: list[list[tuple[str, float]]] = []
        self.kernels: dict[str, tuple[str, str]] = {}  # node: (node type, exec type)

    def __call__(self, x: np.ndarray, keep: bool) -> None:
        self.request.infer({0: x})
        if not keep:
            return
        times = []
        for node in self.request.get_profiling_info():
            if node.status.name != "EXECUTED":
                continue
            self.kernels.setdefault(node.node_name, (node.node_type, node.exec_type))
            times.append((node.node_name, node.real_time.total_seconds() * 1000))
        self.runs.append(sorted(times, key=lambda item: self.order.get(item[0], -1)))

    def kind_kernels(self, kind: str) -> str:
        """The exec types of the nodes of ``kind`` outside the layers, most time first."""
        spent: dict[str, float] = defaultdict(float)
        for times in self.runs:
            for name, ms in times:
                if name not in self.layer_node and node_kind(*self.kernels[name]) == kind:
                    spent[self.kernels[name][1]] += ms
        return " ".join(sorted(spent, key=lambda kernel: -spent[kernel]))

    def attributed(self) -> list[dict[tuple[str, str], float]]:
        """Per run: ms per (layer name, node kind); the layer's own node has its layer's kind."""
        runs = []
        for times in self.runs:
            current, spent = "input", defaultdict(float)
            for name, ms in times:
                layer = self.layer_node.get(name)
                if layer is not None:
                    current, kind = layer.name, layer.kind
                else:
                    kind = node_kind(*self.kernels[name])
                spent[current, kind] += ms
            runs.append(spent)
        return runs

    def kernel_of(self, layer: Layer) -> str:
        """The exec types of the layer's own nodes (usually one)."""
        names = sorted(n for n, owner in self.layer_node.items() if owner == layer)
        return "+".join(self.kernels[n][1] for n in names if n in self.kernels)


def median_of(runs: list[dict], select: Callable[[Any], bool]) -> float:
    return statistics.median(sum(ms for key, ms in spent.items() if select(key)) for spent in runs)


def labels(profiles: dict[str, OpenVINOProfile]) -> dict[str, str]:
    """Each configuration's column label: int8, the default precision by name (bf16 on this
    CPU) and fp32 (the f32 hint; "f32" where the default is fp32 too)."""
    default = profiles["default"].precision
    return {"int8": "int8", "default": default, "fp32": "fp32" if default != "fp32" else "f32"}


def layer_rows(layers: list[Layer], profiles: dict[str, OpenVINOProfile]) -> list[dict[str, Any]]:
    """One row per layer (and the input): ms in each configuration, its own node's ms, the
    int8 overhead (``OVERHEAD``), the kernels, and which configuration is fastest."""
    runs = {name: profile.attributed() for name, profile in profiles.items()}
    label = labels(profiles)
    rows = []
    for layer in [Layer("input", "input", ((), ())), *layers]:
        row: dict[str, Any] = {"layer": layer.name, "kind": layer.kind}
        total = {
            name: median_of(spent, lambda key, n=layer.name: key[0] == n)
            for name, spent in runs.items()
        }
        for name in profiles:
            row[f"{label[name]} ms"] = round(total[name], 4)
        for name in ("int8", "default"):
            row[f"{label[name]} own ms"] = round(
                median_of(runs[name], lambda key, n=layer.name, k=layer.kind: key == (n, k)), 4
            )
        row["int8 overhead ms"] = round(
            median_of(runs["int8"], lambda key, n=layer.name: key[0] == n and key[1] in OVERHEAD),
            4,
        )
        if layer.kind != "input":
            row["int8 kernel"] = profiles["int8"].kernel_of(layer)
            row["float kernel"] = profiles["default"].kernel_of(layer)
        else:
            row["int8 kernel"] = row["float kernel"] = ""
        best_float = min(total["default"], total["fp32"])
        row["int8 / best float"] = round(total["int8"] / best_float, 3) if best_float else ""
        row["faster"] = label[min(total, key=total.get)]
        rows.append(row)
    return rows


def kind_rows(profiles: dict[str, OpenVINOProfile]) -> list[dict[str, Any]]:
    """One row per node kind and the total: ms and share of each configuration's node time."""
    label = labels(profiles)
    runs = {name: profile.attributed() for name, profile in profiles.items()}
    totals = {name: median_of(spent, lambda key: True) for name, spent in runs.items()}
    rows = []
    for kind in (*KINDS, "total"):
        row: dict[str, Any] = {"kind": kind}
        for name, spent in runs.items():
            ms = totals[name] if kind == "total" else median_of(spent, lambda k, w=kind: k[1] == w)
            row[f"{label[name]} ms"] = round(ms, 4)
            row[f"{label[name]} share"] = round(ms / totals[name], 3)
        row["int8 kernels"] = (
            ""
            if kind in ("conv", "dwconv", "gemm", "total")
            else (profiles["int8"].kind_kernels(kind))
        )
        rows.append(row)
    return rows


# -- ONNX Runtime ---------------------------------------------------------------------------


class ORTProfile:
    """One ONNX Runtime session with its profiler on; ``op_runs()`` reads the profile."""

    def __init__(self, path: Path, threads: int, prefix: Path):
        self.session = session(path, threads, profile_prefix=prefix)
        self.kept: list[bool] = []

    def __call__(self, x: np.ndarray, keep: bool) -> None:
        self.session.run(None, {INPUT: x})
        self.kept.append(keep)

    def op_runs(self) -> tuple[list[dict[str, float]], dict[str, int]]:
        """Per kept run, ms per op type (the kernels ORT ran, after its fusions); and how many
        nodes of each op type one run executes."""
        events = json.loads(Path(self.session.end_profiling()).read_text())
        starts = sorted(
            (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run"
        )
        runs: list[dict[str, float]] = [defaultdict(float) for _ in starts]
        nodes: list[dict[str, int]] = [defaultdict(int) for _ in starts]
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            index = next(i for i, (a, b) in enumerate(starts) if a <= event["ts"] <= b)
            runs[index][event["args"]["op_name"]] += event["dur"] / 1000
            nodes[index][event["args"]["op_name"]] += 1
        kept = [run for run, keep in zip(runs, self.kept) if keep]
        return kept, dict(nodes[-1]) if nodes else {}


def op_rows(profiles: dict[str, ORTProfile]) -> list[dict[str, Any]]:
    """One row per op type ORT ran: ms, share and node count in each graph; largest int8 first."""
    found = {name: profile.op_runs() for name, profile in profiles.items()}
    totals = {
        name: statistics.median(sum(r.values()) for r in runs) for name, (runs, _) in found.items()
    }
    ops = {op for runs, _ in found.values() for run in runs for op in run}
    rows = []
    for op in ops:
        row: dict[str, Any] = {"op": op}
        for name, (runs, nodes) in found.items():
            ms = statistics.median(run.get(op, 0.0) for run in runs)
            row.update(
                {
                    f"{name} ms": round(ms, 4),
                    f"{name} share": round(ms / totals[name], 3),
                    f"{name} nodes": nodes.get(op, 0),
                }
            )
        rows.append(row)
    rows.sort(key=lambda row: -row["int8 ms"])
    total = {"op": "total"}
    for name in found:
        total.update({f"{name} ms": round(totals[name], 4), f"{name} share": 1.0})
        total[f"{name} nodes"] = sum(found[name][1].values())
    return [*rows, total]


# -- the run --------------------------------------------------------------------------------


def take_turns(
    runners: dict[str, Callable[[np.ndarray, bool], None]],
    input_shape: tuple[int, ...],
    warmup: int,
    repeats: int,
    block: int,
) -> None:
    """Each runner ``repeats`` kept runs, in turns of ``block`` after ``warmup`` untimed ones
    (lowbit.export.onnx.interleaved_latency's order: no runtime's spinning threads in another's
    block)."""
    x = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
    done = dict.fromkeys(runners, 0)
    while any(count < repeats for count in done.values()):
        for name, run in runners.items():
            for _ in range(warmup):
                run(x, False)
            for _ in range(min(block, repeats - done[name])):
                run(x, True)
                done[name] += 1


def profile(
    model: torch.nn.Module,
    input_shape: tuple[int, ...],
    folder: Path,
    threads: int = 2,
    warmup: int = 10,
    repeats: int = 50,
    block: int = 10,
    calibration_count: int = 16,
    openvino_form: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """The three tables of a quantized ``model`` (module docstring): {"layers", "kinds",
    "ops"}; the ONNX files and ORT's profiles are written into ``folder``. ``openvino_form``
    False: OpenVINO runs the int8 graph as written for ONNX Runtime (``--ort-form``)."""
    import openvino

    model.eval()
    images = torch.randn(
        calibration_count, *input_shape, generator=torch.Generator().manual_seed(0)
    )
    int8 = export_int8_onnx(model, input_shape, folder / "int8.onnx", images)
    fp32 = export_fp32_onnx(model, input_shape, folder / "fp32.onnx")
    layers = layers_of(int8, fp32)
    # OpenVINO runs the same integers in its own form, as the export stage gives them to it
    int8_openvino = (
        write_openvino_form(int8, folder / "int8_openvino.onnx") if openvino_form else int8
    )
    core = openvino.Core()
    openvino_profiles = {
        "int8": OpenVINOProfile(core, int8_openvino, threads, None, 0, layers),
        "default": OpenVINOProfile(core, fp32, threads, None, 1, layers),
        "fp32": OpenVINOProfile(core, fp32, threads, "f32", 1, layers),
    }
    ort_profiles = {
        "int8": ORTProfile(int8, threads, folder / "ort_int8"),
        "fp32": ORTProfile(fp32, threads, folder / "ort_fp32"),
    }
    runners = {f"openvino_{k}": v for k, v in openvino_profiles.items()}
    runners.update({f"onnxruntime_{k}": v for k, v in ort_profiles.items()})
    take_turns(runners, input_shape, warmup, repeats, block)
    return {
        "layers": layer_rows(layers, openvino_profiles),
        "kinds": kind_rows(openvino_profiles),
        "ops": op_rows(ort_profiles),
    }


def text_table(title: str, rows: list[dict[str, Any]]) -> str:
    headers = list(rows[0])
    cells = [[str(row.get(h, "")) for h in headers] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([title, line(headers), line(["-" * w for w in widths]), *map(line, cells), ""])


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default=MODELS[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=50, help="kept runs each (default 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per turn")
    parser.add_argument("--block", type=int, default=10, help="runs per turn (default 10)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the three CSV files")
    parser.add_argument(
        "--float-outputs",
        action="store_true",
        help="the model without output requantizers (quant.requantize_outputs=false); the CSV "
        "files' names end in _float_outputs",
    )
    parser.add_argument(
        "--ort-form",
        action="store_true",
        help="OpenVINO runs the int8 graph in ONNX Runtime's form, as the export gave it to "
        "OpenVINO before its own form (lowbit.export.openvino_form) existed",
    )
    args = parser.parse_args(argv)
    if min(args.threads, args.repeats, args.block) < 1 or args.warmup < 0:
        print(
            "deployed_profile: --threads, --repeats and --block must be at least 1, "
            "--warmup at least 0",
            file=sys.stderr,
        )
        return 2
    missing = openvino_missing()
    if missing is not None:
        print(f"deployed_profile: {missing}", file=sys.stderr)
        return 2
    from bench import deployed_models  # scripts/bench.py, beside this file

    model, shape = deployed_models(requantize_outputs=not args.float_outputs)[args.model]
    with tempfile.TemporaryDirectory(prefix="lowbit-profile-") as scratch:
        tables = profile(
            model,
            shape,
            Path(scratch),
            args.threads,
            args.warmup,
            args.repeats,
            args.block,
            openvino_form=not args.ort_form,
        )
    titles = {
        "layers": f"OpenVINO per layer, {args.model} {shape}, batch 1, {args.threads} threads, "
        f"median of {args.repeats} runs (ms)",
        "kinds": "OpenVINO per node kind (ms, share of the configuration's node time)",
        "ops": "ONNX Runtime per op type (ms, share, nodes per run)",
    }
    for key, rows in tables.items():
        print(text_table(titles[key], rows), flush=True)
    if args.out is not None:
        names = {"layers": "openvino_layers", "kinds": "openvino_kinds", "ops": "onnxruntime_ops"}
        for key, rows in tables.items():
            suffix = "_float_outputs" if args.float_outputs else ""
            write_csv(args.out / f"{args.model}_{names[key]}{suffix}.csv", rows)
    print(json.dumps({"model": args.model, "threads": args.threads, **tables}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
