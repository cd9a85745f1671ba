"""Where a training step's time goes: per layer and per quantizer, against the FP32 model.

One step is what training repeats: zero the gradients, forward, loss, backward, optimizer step.
``profile_step`` times it and splits it into rows:

- ``compute``: a layer's own work (conv, linear, BatchNorm, activation, pooling; a container's
  ops between its layers, such as a residual add, are its own row), forward and backward;
- ``weight``, ``activation``, ``gradient``: the layer's quantizers (a quantized layer's weight,
  input and output-gradient quantizer; a quantizer standing on its own is an activation one);
- ``loss``, ``optimizer`` (zero_grad and step), and ``other``: the step minus every row above,
  so the rows add up to the step exactly; ``coverage`` is 1 - other / step.

How. Forward: module pre/post hooks take ``time.perf_counter`` at every boundary and give the
time since the last one to the innermost module running (exclusive time). Backward: each autograd
node belongs to the module whose forward created it (autograd numbers its nodes in creation
order, and the hooks note the number at each boundary; a parameter's gradient accumulation goes
to the module holding the parameter); a hook before each node gives the time since the last
node to the last one's row. The hooks' own time is measured and left out of every row and of the
step, so the step is what it would be without them (``plain_step_ms``, steps timed with no hooks
in the same rounds, shows how close). CPU, eager mode: on a GPU the kernels run asynchronously
and the boundaries would time their launches; compiled code fuses layers into one kernel.

Steps of the quantized model and its FP32 twin (same architecture and initial weights, no
quantizers) alternate, after warm-up. Rows and step are means over the repeats whose step time
is in the middle half: a repeat slowed by another process is left out whole, and the rows still
add up to the step (medians taken row by row would not).
"""

from __future__ import annotations

import bisect
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lowbit.quant.modules import DoReFaGradient, QuantizedLayer, Quantizer

KINDS = ("compute", "weight", "activation", "gradient", "loss", "optimizer", "other")
# A quantized layer's quantizers by attribute (lowbit.quant.modules.QuantizedLayer).
QUANTIZER_KIND = {
    "weight_quantizer": "weight",
    "input_quantizer": "activation",
    "gradient_quantizer": "gradient",
}
LOSS, OPTIMIZER, OTHER = ("loss", "loss"), ("optimizer", "optimizer"), ("other", "other")
FORWARD, BACKWARD = "forward", "backward"

RowKey = tuple[str, str]  # (layer or module name, kind)


def row_keys(model: nn.Module) -> dict[nn.Module, RowKey]:
    """The row each module's own time goes to: a quantizer to its layer's weight/activation/
    gradient row, any other module to its own compute row."""
    modules = dict(model.named_modules())
    keys: dict[nn.Module, RowKey] = {}
    for name, module in modules.items():
        parent_name, _, attribute = name.rpartition(".")
        parent = modules.get(parent_name)
        if isinstance(module, Quantizer):
            if isinstance(parent, QuantizedLayer) and attribute in QUANTIZER_KIND:
                keys[module] = (parent_name, QUANTIZER_KIND[attribute])
            else:
                keys[module] = (
                    name,
                    "gradient" if isinstance(module, DoReFaGradient) else "activation",
                )
        else:
            keys[module] = (name or "model", "compute")
    return keys


def module_types(model: nn.Module) -> dict[RowKey, str]:
    """The class name shown beside each compute row."""
    return {
        (name or "model", "compute"): type(module).__name__
        for name, module in model.named_modules()
    }


class _Clock:
    """Accumulates wall time per (row, phase) between boundaries; what a hook spends on its own
    bookkeeping (between ``switch`` and ``resume``) is counted in ``overhead`` instead."""

    def __init__(self) -> None:
        self.totals: dict[tuple[RowKey, str], float] = defaultdict(float)
        self.current: tuple[RowKey, str] | None = None
        self.last = 0.0
        self.overhead = 0.0

    def switch(self, key: tuple[RowKey, str] | None) -> float:
        now = time.perf_counter()
        if self.current is not None:
            self.totals[self.current] += now - self.last
        self.current = key
        return now

    def resume(self, entered: float) -> None:
        self.last = time.perf_counter()
        self.overhead += self.last - entered


class _SequenceProbe:
    """The number autograd gives the next node it creates: read by creating one."""

    def __init__(self) -> None:
        self.leaf = torch.zeros((), requires_grad=True)

    def __call__(self) -> int:
        with torch.enable_grad():
            return self.leaf.view_as(self.leaf).grad_fn._sequence_nr()


class StepProfiler:
    """Hooks on every module of ``model``; ``step()`` runs one instrumented training step and
    returns the seconds per (row, phase) and the step's seconds without the hooks' own time."""

    def __init__(self, model: nn.Module, run_step: Callable[[StepProfiler], None]):
        self.model = model
        self.keys = row_keys(model)
        self.params = {
            id(p): self.keys[m] for m in model.modules() for p in m.parameters(recurse=False)
        }
        self.run_step = run_step
        self.probe = _SequenceProbe()
        self.clock = _Clock()
        self.stack: list[RowKey] = []
        self.boundaries: list[int] = []  # node numbers at which the owning row changes
        self.owners: list[RowKey | None] = []  # the owner from that boundary on
        self.handles = []
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(self._enter))
            self.handles.append(module.register_forward_hook(self._leave))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    # forward -------------------------------------------------------------------------------
    def _enter(self, module: nn.Module, args: Any) -> None:
        key = self.keys[module]
        entered = self.clock.switch((key, FORWARD))
        self.stack.append(key)
        self._boundary(key)
        self.clock.resume(entered)

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self.stack.pop()
        outer = self.stack[-1] if self.stack else None
        entered = self.clock.switch((outer, FORWARD) if outer else (OTHER, FORWARD))
        self._boundary(outer)
        self.clock.resume(entered)

    def _boundary(self, owner: RowKey | None) -> None:
        self.boundaries.append(self.probe())
        self.owners.append(owner)

    def owner(self, node) -> RowKey:
        """The row of an autograd node: the module whose forward created it, the parameter's
        module for a gradient accumulation, the loss for nodes made after the model's forward."""
        variable = getattr(node, "variable", None)
        if variable is not None:
            return self.params.get(id(variable), OTHER)
        index = bisect.bisect_right(self.boundaries, node._sequence_nr()) - 1
        if index < 0:
            return OTHER
        owner = self.owners[index]
        return owner if owner is not None else LOSS

    # backward ------------------------------------------------------------------------------
    def hook_backward(self, loss: torch.Tensor) -> None:
        """A pre-hook on every node of ``loss``'s graph, each naming its row."""
        seen, pending = set(), [loss.grad_fn]
        while pending:
            node = pending.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            node.register_prehook(self._node_hook(self.owner(node)))
            pending.extend(next_node for next_node, _ in node.next_functions)

    def _node_hook(self, key: RowKey):
        def before_node(grad_outputs):
            entered = self.clock.switch((key, BACKWARD))
            self.clock.resume(entered)

        return before_node

    # one step ------------------------------------------------------------------------------
    def step(self) -> tuple[dict[tuple[RowKey, str], float], float]:
        self.clock = _Clock()
        self.stack, self.boundaries, self.owners = [], [], []
        start = time.perf_counter()
        self.clock.last = start
        self.run_step(self)
        self.clock.switch(None)
        wall = time.perf_counter() - start
        return dict(self.clock.totals), wall - self.clock.overhead

    # what the training step calls at its phase boundaries
    def phase(self, key: RowKey, phase: str = FORWARD) -> None:
        entered = self.clock.switch((key, phase))
        self.clock.resume(entered)

    def pause(self) -> float:
        return self.clock.switch(None)

    def resume(self, entered: float, key: RowKey, phase: str) -> None:
        self.clock.current = (key, phase)
        self.clock.resume(entered)


@dataclass
class TrainingStep:
    """What one step needs: the model, its optimizer, a batch and the loss of (output, batch)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    inputs: torch.Tensor
    targets: Any
    loss: Callable[[Any, Any], torch.Tensor]

    def plain(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(self.inputs), self.targets).backward()
        self.optimizer.step()

    def instrumented(self, profiler: StepProfiler) -> None:
        profiler.phase(OPTIMIZER)
        self.optimizer.zero_grad(set_to_none=True)
        profiler.phase(OTHER)
        output = self.model(self.inputs)
        profiler.phase(LOSS)
        loss = self.loss(output, self.targets)
        entered = profiler.pause()  # walking the graph is the profiler's own time
        profiler.hook_backward(loss)
        profiler.resume(entered, OTHER, BACKWARD)
        loss.backward()
        profiler.phase(OPTIMIZER)
        self.optimizer.step()


def profile_step(
    quantized: TrainingStep, fp32: TrainingStep, warmup: int = 3, repeats: int = 10
) -> dict[str, Any]:
    """Rows of the quantized step with the FP32 twin's beside them (module doc), in ms.

    Returns ``step_ms``, ``fp32_step_ms``, ``ratio``, ``plain_step_ms``/``plain_fp32_step_ms``/
    ``plain_ratio`` (steps without hooks, same rounds), ``other_ms``, ``coverage`` and
    ``rows``: dicts with ``name``, ``kind``, ``module``, ``forward_ms``, ``backward_ms``, ``ms``
    (forward + backward, middle-half mean), ``share`` (of ``step_ms``) and ``fp32_ms`` (the same
    row of the FP32 twin, None where it has none), sorted by ``ms``; the last row is ``other``.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError("profiling needs warmup >= 0 and repeats >= 1")
    profilers = {
        name: StepProfiler(step.model, step.instrumented)
        for name, step in (("quantized", quantized), ("fp32", fp32))
    }
    samples: dict[str, list] = {name: [] for name in profilers}
    plain: dict[str, list[float]] = {name: [] for name in profilers}
    steps = {"quantized": quantized, "fp32": fp32}
    try:
        for round_index in range(warmup + repeats):
            for name, profiler in profilers.items():
                measured = profiler.step()
                start = time.perf_counter()
                _without_hooks(profiler, steps[name].plain)
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    samples[name].append(measured)
                    plain[name].append(elapsed)
    finally:
        for profiler in profilers.values():
            profiler.remove()

    quantized_rows, step_s = _middle_rows(samples["quantized"])
    fp32_rows, fp32_step_s = _middle_rows(samples["fp32"])
    types = {**module_types(fp32.model), **module_types(quantized.model)}
    rows = [_row(key, phases, step_s, fp32_rows, types) for key, phases in quantized_rows.items()]
    rows.sort(key=lambda row: row["ms"], reverse=True)
    other_s = step_s - sum(sum(phases.values()) for phases in quantized_rows.values())
    fp32_other_s = fp32_step_s - sum(sum(p.values()) for p in fp32_rows.values())
    rows.append(
        {
            "name": "other",
            "kind": "other",
            "module": "",
            "forward_ms": None,
            "backward_ms": None,
            "ms": other_s * 1000,
            "share": other_s / step_s,
            "fp32_ms": fp32_other_s * 1000,
        }
    )
    plain_ms = statistics.median(plain["quantized"]) * 1000
    plain_fp32_ms = statistics.median(plain["fp32"]) * 1000
    return {
        "step_ms": step_s * 1000,
        "fp32_step_ms": fp32_step_s * 1000,
        "ratio": step_s / fp32_step_s,
        "plain_step_ms": plain_ms,
        "plain_fp32_step_ms": plain_fp32_ms,
        "plain_ratio": plain_ms / plain_fp32_ms,
        "other_ms": other_s * 1000,
        "coverage": 1 - other_s / step_s,
        "warmup": warmup,
        "repeats": repeats,
        "rows": rows,
        "kinds": kind_totals(rows),
    }


def _without_hooks(profiler: StepProfiler, run: Callable[[], None]) -> None:
    """One step with the forward hooks off (no node hooks are registered outside ``step``)."""
    profiler.remove()
    try:
        run()
    finally:
        profiler.handles = []
        for module in profiler.model.modules():
            profiler.handles.append(module.register_forward_pre_hook(profiler._enter))
            profiler.handles.append(module.register_forward_hook(profiler._leave))


def _middle_rows(samples: list) -> tuple[dict[RowKey, dict[str, float]], float]:
    """Per row and phase, the mean over the repeats whose step time is in the middle half
    (interquartile, at least one): means add up, so the rows sum to the step exactly, and a
    repeat slowed by another process is left out whole. Time the step charged to no row
    (``OTHER``) is not a row: it is in the step minus the rows."""
    ordered = sorted(samples, key=lambda sample: sample[1])
    quarter = len(ordered) // 4
    middle = ordered[quarter : len(ordered) - quarter]
    rows: dict[RowKey, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for totals, _ in middle:
        for (row, phase), seconds in totals.items():
            if row is not None and row != OTHER:
                rows[row][phase] += seconds / len(middle)
    return {row: dict(phases) for row, phases in rows.items()}, statistics.fmean(
        step for _, step in middle
    )


def _row(
    key: RowKey,
    phases: dict[str, float],
    step_s: float,
    fp32_rows: dict[RowKey, dict[str, float]],
    types: dict[RowKey, str],
) -> dict[str, Any]:
    name, kind = key
    total = sum(phases.values())
    fp32_phases = fp32_rows.get(key)
    return {
        "name": name,
        "kind": kind,
        "module": types.get(key, "") if kind == "compute" else "",
        "forward_ms": phases.get(FORWARD, 0.0) * 1000,
        "backward_ms": phases.get(BACKWARD, 0.0) * 1000,
        "ms": total * 1000,
        "share": total / step_s,
        "fp32_ms": None if fp32_phases is None else sum(fp32_phases.values()) * 1000,
    }


def kind_totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ms and share of the step per kind (compute, weight, ..., other), FP32's ms beside."""
    totals = {kind: {"ms": 0.0, "share": 0.0, "fp32_ms": 0.0} for kind in KINDS}
    for row in rows:
        entry = totals[row["kind"]]
        entry["ms"] += row["ms"]
        entry["share"] += row["share"]
        entry["fp32_ms"] += row["fp32_ms"] or 0.0
    return totals


def format_profile(result: dict[str, Any], top: int | None = None) -> str:
    """The rows as a table (largest first; ``top`` of them, the rest summed in one line), then
    the totals per kind and the step."""

    def cell(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    layer_rows = result["rows"][:-1]
    shown = layer_rows if top is None else layer_rows[:top]
    lines = [["layer", "kind", "module", "fwd ms", "bwd ms", "ms", "share", "FP32 ms"]]
    for row in shown + [result["rows"][-1]]:
        lines.append(
            [
                row["name"],
                row["kind"],
                row["module"],
                cell(row["forward_ms"]),
                cell(row["backward_ms"]),
                cell(row["ms"]),
                f"{row['share']:.1%}",
                cell(row["fp32_ms"]),
            ]
        )
    hidden = layer_rows[len(shown) :]
    if hidden:
        lines.insert(
            len(shown) + 1,
            [
                f"({len(hidden)} smaller rows)",
                "",
                "",
                "",
                "",
                cell(sum(r["ms"] for r in hidden)),
                f"{sum(r['share'] for r in hidden):.1%}",
                "",
            ],
        )
    lines.append(
        ["step", "", "", "", "", cell(result["step_ms"]), "100.0%", cell(result["fp32_step_ms"])]
    )
    kinds = [["kind", "ms", "share", "FP32 ms"]] + [
        [kind, cell(entry["ms"]), f"{entry['share']:.1%}", cell(entry["fp32_ms"])]
        for kind, entry in result["kinds"].items()
    ]
    summary = (
        f"step {result['step_ms']:.1f} ms, FP32 {result['fp32_step_ms']:.1f} ms: "
        f"{result['ratio']:.3f}x; without hooks {result['plain_step_ms']:.1f} / "
        f"{result['plain_fp32_step_ms']:.1f} ms ({result['plain_ratio']:.3f}x); "
        f"coverage {result['coverage']:.1%} (other {result['other_ms']:.2f} ms); "
        f"means of the middle half of {result['repeats']} steps after {result['warmup']} "
        f"warm-up (without hooks: medians)"
    )
    return "\n".join([aligned(lines), "", aligned(kinds), "", summary])


def aligned(lines: list[list[str]], text_columns: int = 3) -> str:
    """Rows of cells as a table: the first ``text_columns`` left-aligned, numbers right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            value.ljust(w) if i < text_columns else value.rjust(w)
            for i, (value, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    )
