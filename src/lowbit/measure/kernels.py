"""Where a compiled training step's time goes, kernel by kernel, against its compiled FP32 twin.

torch.compile fuses layers and quantizers into generated kernels that no module hook sees, so
the per-layer profile (``lowbit.measure.profile``) is eager only. Here torch.profiler records
the compiled step instead, with inductor's kernel profiling on: each generated CPU kernel is an
event named after the ops it fuses (``graph_1_cpp_fused_..._eq12_gradient_hardtanh_backward_...``
fuses a BatchNorm backward with the STE of an activation quantizer, next to Eq. 12's
operator). Every event's self time, per step, is one row; the rows fall into four kinds:

- ``generated``: inductor's fused kernels (events ``graph_<n>_cpp_fused_*``);
- ``lowbit``: lowbit's own operators (``lowbit::eq12_gradient``), opaque to the compiler;
- ``aten``: what the compiled code hands to torch's own kernels (convolutions and their
  backward, reductions such as ``aten::amax``);
- ``other``: the rest, Python and the calls between graphs.

Self times do not overlap, so the rows add up to the profiled time; ``coverage`` is their sum
over the wall time of the profiled steps. The quantized step and its twin are profiled one
after the other (``repeats`` steps each, after ``warmup`` steps that compile), both under the
profiler, which costs each step some time of its own: compare kinds and shares, and take step
ratios from ``scripts/bench.py``. Inductor's kernel profiling changes the generated code's cache
key, so the first profile of a model compiles from scratch (minutes on 2 cores).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lowbit.compiled import compile_model
from lowbit.measure.profile import TrainingStep, aligned

GENERATED, LOWBIT, ATEN, OTHER = "generated", "lowbit", "aten", "other"
KINDS = (GENERATED, LOWBIT, ATEN, OTHER)


def kind_of_event(name: str) -> str:
    if name.startswith("graph_") and "_cpp_fused" in name:
        return GENERATED
    if name.startswith("lowbit::"):
        return LOWBIT
    if name.startswith("aten::"):
        return ATEN
    return OTHER


def enable_kernel_events() -> None:
    """Name each generated CPU kernel in torch.profiler's events; before the first compile."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True


def compiled_step(step: TrainingStep) -> Callable[[], None]:
    """One SGD step of ``step`` with its model's forward (and so its backward) compiled, as
    ``compile=true`` trains."""
    forward = compile_model(step.model)

    def run() -> None:
        step.optimizer.zero_grad(set_to_none=True)
        step.loss(forward(step.inputs), step.targets).backward()
        step.optimizer.step()

    return run


def profile_kernels(step: Callable[[], None], warmup: int, repeats: int) -> dict[str, Any]:
    """Self milliseconds per step of every event of ``repeats`` profiled steps, after ``warmup``
    unprofiled ones: ``{"step_ms", "events": {name: ms}, "coverage"}``."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        step_ms = (time.perf_counter() - start) * 1000 / repeats
    events = {
        event.key: event.self_cpu_time_total / 1000 / repeats
        for event in profiler.key_averages()
        if event.self_cpu_time_total > 0
    }
    return {"step_ms": step_ms, "events": events, "coverage": sum(events.values()) / step_ms}


def kernel_table(quantized: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """Rows (every event of either step: name, kind, ms of each, share of the quantized step)
    and the totals per kind, from two ``profile_kernels`` results."""
    names = sorted(
        set(quantized["events"]) | set(fp32["events"]),
        key=lambda name: -max(quantized["events"].get(name, 0.0), fp32["events"].get(name, 0.0)),
    )
    rows = [
        {
            "event": name,
            "kind": kind_of_event(name),
            "ms": quantized["events"].get(name, 0.0),
            "fp32_ms": fp32["events"].get(name, 0.0),
            "share": quantized["events"].get(name, 0.0) / quantized["step_ms"],
        }
        for name in names
    ]
    kinds = {
        kind: {
            "ms": sum(row["ms"] for row in rows if row["kind"] == kind),
            "fp32_ms": sum(row["fp32_ms"] for row in rows if row["kind"] == kind),
        }
        for kind in KINDS
    }
    return {
        "rows": rows,
        "kinds": kinds,
        "step_ms": quantized["step_ms"],
        "fp32_step_ms": fp32["step_ms"],
        "coverage": quantized["coverage"],
        "fp32_coverage": fp32["coverage"],
    }


def format_kernel_table(result: dict[str, Any], top: int | None = None, width: int = 90) -> str:
    """The rows, largest first (``top`` of them), then the kinds and the steps; event names
    longer than ``width`` are cut in the middle, where fused op lists are longest."""

    def cut(name: str) -> str:
        if len(name) <= width:
            return name
        half = (width - 3) // 2
        return f"{name[:half]}...{name[-half:]}"

    lines = [["event", "kind", "ms", "share", "FP32 ms"]]
    for row in result["rows"][:top]:
        lines.append(
            [
                cut(row["event"]),
                row["kind"],
                f"{row['ms']:.1f}",
                f"{row['share']:.1%}",
                f"{row['fp32_ms']:.1f}",
            ]
        )
    hidden = result["rows"][len(lines) - 1 :]
    if hidden:
        ms = sum(row["ms"] for row in hidden)
        fp32_ms = sum(row["fp32_ms"] for row in hidden)
        share = ms / result["step_ms"]
        lines.append(
            [f"({len(hidden)} smaller rows)", "", f"{ms:.1f}", f"{share:.1%}", f"{fp32_ms:.1f}"]
        )
    lines.append(["", "", "", "", ""])
    for kind, totals in result["kinds"].items():
        share = totals["ms"] / result["step_ms"]
        lines.append(
            [f"all {kind}", kind, f"{totals['ms']:.1f}", f"{share:.1%}", f"{totals['fp32_ms']:.1f}"]
        )
    lines.append(
        ["step (profiled)", "", f"{result['step_ms']:.1f}", "", f"{result['fp32_step_ms']:.1f}"]
    )
    lines.append(
        ["coverage", "", f"{result['coverage']:.1%}", "", f"{result['fp32_coverage']:.1%}"]
    )
    return aligned(lines, text_columns=2)
