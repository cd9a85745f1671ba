"""Where a compiled training step's time goes, kernel by kernel, against its compiled FP32 twin.

torch.compile fuses layers and quantizers into generated kernels that no module hook sees, so
the per-layer profile (``lowbit.measure.profile``) is eager only. Here torch.profiler records
the compiled step instead, with inductor's kernel profiling on: each generated CPU kernel is an
event named after the ops it fuses (``graph_1_cpp_fused_..._ceil_clamp_..._native_batch_norm_
backward_...`` fuses a BatchNorm backward with the straight-through gate of an activation
quantizer, ``lowbit.quant.gates``). Every event's self time, per step, is one row; the rows
fall into four kinds:

- ``generated``: inductor's fused kernels (events ``graph_<n>_cpp_fused_*``);
- ``lowbit``: lowbit's own operators (``lowbit::eq12_gradient``), opaque to the compiler;
- ``aten``: what the compiled code hands to torch's own kernels (convolutions and their
  backward, reductions such as ``aten::amax``);
- ``other``: the rest, Python and the calls between graphs.

Self times do not overlap, so the rows add up to the profiled time; ``coverage`` is their sum
over the wall time of the profiled steps (the time a step spends between the events it
records is its row ``python between ops``). The quantized step and its twin take turns under
one profiler (``repeats`` rounds, after ``warmup`` rounds that compile), so a slow stretch of
the machine falls on both alike; the profiler costs each step some time of its own, so take
step ratios from ``scripts/bench.py``. Inductor's kernel profiling changes the generated
code's cache key, so the first profile of a model compiles from scratch (minutes on 2 cores).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Mapping
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


STEP_RANGE = "lowbit.profiled_step."  # the record_function range around each profiled step


def profile_kernels(
    steps: Mapping[str, Callable[[], None]], warmup: int, repeats: int
) -> dict[str, dict[str, Any]]:
    """Self milliseconds per step of every event, for each of ``steps``: ``{name: {"step_ms",
    "events": {event: ms}, "coverage"}}``.

    After ``warmup`` unprofiled rounds, ``repeats`` rounds run every step in turn (A, B, A, B,
    ...) under one profiler, each step inside a ``record_function`` range; an event belongs to
    the step whose range it starts in. Interleaved like the bench's rounds, so a slow stretch
    of the machine falls on both steps alike instead of on whichever was profiled second.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        for step in steps.values():
            step()
    wall_ms = dict.fromkeys(steps, 0.0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                with record_function(STEP_RANGE + name):
                    step()
                wall_ms[name] += (time.perf_counter() - start) * 1000
    events = list(profiler.events())
    ranges = sorted(
        (event.time_range.start, event.time_range.end, event.name[len(STEP_RANGE) :])
        for event in events
        if event.name.startswith(STEP_RANGE)
    )
    starts = [start for start, _, _ in ranges]
    self_ms: dict[str, dict[str, float]] = {name: {} for name in steps}
    for event in events:
        index = bisect.bisect_right(starts, event.time_range.start) - 1
        if index < 0 or event.time_range.start > ranges[index][1] or event.self_cpu_time_total <= 0:
            continue  # outside every step (the profiler's own start and stop)
        owner = self_ms[ranges[index][2]]
        key = event.key if not event.name.startswith(STEP_RANGE) else "python between ops"
        owner[key] = owner.get(key, 0.0) + event.self_cpu_time_total / 1000 / repeats
    return {
        name: {
            "step_ms": wall_ms[name] / repeats,
            "events": self_ms[name],
            "coverage": sum(self_ms[name].values()) / (wall_ms[name] / repeats),
        }
        for name in steps
    }


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
