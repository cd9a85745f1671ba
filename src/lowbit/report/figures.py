"""The report's figures: accuracy against a cost with its Pareto front, and accuracy against bits.

Each point is a configuration (``lowbit.report.configs``): the mean over its seeds, with error
bars of the mean's 95% confidence interval (none with one seed); the fronts join the means.
Mixed-precision configurations (trained from an allocation) are diamonds on the same fronts as
the uniform ones' circles. A reference line (``ReferenceLine``) marks a cost a figure's points
are read against, such as the best float path's latency (``best_float_references``).

Figures are built on ``matplotlib.figure.Figure`` directly, never through pyplot, so making a
report neither needs a display nor changes the backend of a notebook that calls it.
"""

from __future__ import annotations

import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lowbit.report.configs import FULL_PRECISION, Configuration
from lowbit.report.runs import (
    BEST_FLOAT_LATENCY,
    BEST_FLOAT_PATH,
    BIT_KINDS,
    Cost,
    as_cost,
    measured_runs,
    pareto_front,
    tied_bit_kinds,
    varying_bit_kind,
)

# One colour per quantizer, the same in every figure; others take the next free colour.
QUANTIZER_COLOURS = {
    "fp32": "#333333",
    "dorefa": "#1f77b4",
    "pact": "#ff7f0e",
    "pact_symmetric": "#2ca02c",
    "lsq": "#9467bd",
    "lsq_plus": "#8c564b",
}
# Red is the Pareto front's, so no quantizer gets it.
SPARE_COLOURS = ("#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a")
BIT_NAMES = {"wbits": "W", "abits": "A", "gbits": "G"}
# A uniform configuration's marker, and a mixed-precision one's (one weight width per layer).
UNIFORM_MARKER, MIXED_MARKER = "o", "D"
MIXED_LABEL = "mixed precision (allocation)"
REFERENCE_STYLES = ("--", ":", "-.")  # one per model, when a figure holds several


def quantizer_colours(runs: Sequence[Configuration]) -> dict[str, str]:
    colours = dict(QUANTIZER_COLOURS)
    spare = iter(SPARE_COLOURS * 4)
    for run in runs:
        name = run.quantizer or "?"
        if name not in colours:
            colours[name] = next(spare)
    return colours


def quantizer_order(names: set[str]) -> list[str]:
    known = [q for q in QUANTIZER_COLOURS if q in names]
    return known + sorted(names - set(known))


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def empty_note(axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#666")
    axes.set_xticks([])
    axes.set_yticks([])


def half_width(configuration: Configuration, key: str | None) -> float:
    """The 95% interval's half width of a mean, 0 where there is none (one seed)."""
    summary = configuration.summary(key) if key else None
    return (summary.half_width or 0.0) if summary is not None else 0.0


def cost_half_width(configuration: Configuration, cost: Cost) -> float:
    return half_width(configuration, cost.source(configuration))


def scatter_runs(
    axes,
    configurations: Sequence[Configuration],
    cost: Cost,
    accuracy: str,
    colour: str,
    stand_in: bool,
    marker: str = UNIFORM_MARKER,
) -> None:
    """Filled markers for a cost's own values, hollow ones for its stand-in's; error bars for
    the 95% intervals of both means."""
    if not configurations:
        return
    xs = [cost.value(c) for c in configurations]
    ys = [c.metric(accuracy) for c in configurations]
    xerr = [cost_half_width(c, cost) for c in configurations]
    yerr = [half_width(c, accuracy) for c in configurations]
    if any(xerr) or any(yerr):  # none with one seed each, nor along a cost that never varies
        axes.errorbar(
            xs,
            ys,
            xerr=xerr if any(xerr) else None,
            yerr=yerr if any(yerr) else None,
            fmt="none",
            ecolor=colour,
            elinewidth=1,
            capsize=3,
            alpha=0.8,
            zorder=2,
        )
    axes.scatter(
        xs,
        ys,
        s=46,
        marker=marker,
        facecolors="none" if stand_in else colour,
        edgecolors=colour,
        linewidths=1.5,
        zorder=3,
    )


def marker_handle(
    label: str, colour: str, hollow: bool = False, marker: str = UNIFORM_MARKER
) -> Line2D:
    """A legend entry for points drawn by ``scatter_runs`` (scatter calls carry no labels)."""
    return Line2D(
        [],
        [],
        linestyle="none",
        marker=marker,
        markersize=7,
        color=colour,
        markerfacecolor="none" if hollow else colour,
        markeredgewidth=1.5,
        label=label,
    )


@dataclass(frozen=True)
class ReferenceLine:
    """A cost drawn across a Pareto figure as a vertical line: ``value`` with its legend label,
    and the runs it was taken from (for the caption)."""

    value: float
    label: str
    runs: int
    group: str  # whose runs: "nin/digits"


def best_float_references(configurations: Sequence[Configuration]) -> list[ReferenceLine]:
    """The best float path's latency (``latency/best_float_ms``) of each model and data set: the
    median over the counted runs of its configurations that measured it, whatever their
    quantizer (each exports the same float architecture), labelled with the path most of them
    found fastest, e.g. "best float (openvino bf16)". None for runs made before it was recorded.
    """
    groups: dict[str, list] = defaultdict(list)
    for configuration in configurations:
        for run in configuration.counted:
            if run.metric(BEST_FLOAT_LATENCY) is not None:
                groups[f"{configuration.model}/{configuration.dataset}"].append(run)
    several = len(groups) > 1 or any(c.show_model for c in configurations)
    lines = []
    for group, runs in sorted(groups.items()):
        paths = Counter(str(r.metrics.get(BEST_FLOAT_PATH) or "path not recorded") for r in runs)
        path, count = paths.most_common(1)[0]
        if count < len(runs):  # the runs disagree on which path is fastest: say how many agree
            path += f" in {count} of {len(runs)} runs"
        value = statistics.median(r.metric(BEST_FLOAT_LATENCY) for r in runs)
        label = f"best float ({path})" + (f", {group}" if several else "") + f": {value:.3g} ms"
        lines.append(ReferenceLine(value, label, len(runs), group))
    return lines


def pareto_figure(
    runs: Sequence[Configuration],
    cost: str | Cost,
    cost_label: str,
    accuracy: str,
    accuracy_label: str,
    references: Sequence[ReferenceLine] = (),
) -> Figure:
    """Every configuration with a finished run as a point at its means, with 95% error bars
    (colour: quantizer, label: W/A/G, hollow: the cost's stand-in value, diamond: mixed
    precision, each with its own legend entry); the front of the means as a line, mixed and
    uniform configurations on one front; each reference as a grey vertical line."""
    cost = as_cost(cost)
    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.add_subplot()
    colours = quantizer_colours(runs)
    points = measured_runs(runs, cost, accuracy)
    if not points:
        empty_note(axes, f"no finished run has both {accuracy} and {cost}")
        return figure
    quantizers = quantizer_order({r.quantizer or "?" for r in points})
    for quantizer in quantizers:
        mine = [r for r in points if (r.quantizer or "?") == quantizer]
        for mixed in (False, True):
            for stand_in in (False, True):
                scatter_runs(
                    axes,
                    [r for r in mine if r.mixed == mixed and cost.falls_back(r) == stand_in],
                    cost,
                    accuracy,
                    colours[quantizer],
                    stand_in,
                    MIXED_MARKER if mixed else UNIFORM_MARKER,
                )
    for run in points:
        axes.annotate(
            run.bits_label,
            (cost.value(run), run.metric(accuracy)),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
            color="#444",
        )
    front = pareto_front(points, cost, accuracy)
    (front_line,) = axes.step(
        [cost.value(r) for r in front],
        [r.metric(accuracy) for r in front],
        where="post",
        color="#d62728",
        linewidth=1.5,
        zorder=2,
        label="Pareto front",
    )
    handles = [marker_handle(q, colours[q]) for q in quantizers] + [front_line]
    if any(r.mixed for r in points):
        handles.append(marker_handle(MIXED_LABEL, "#444444", marker=MIXED_MARKER))
    if any(cost.falls_back(r) for r in points):
        handles.append(marker_handle(cost.fallback_label, "#444444", hollow=True))
    for reference, style in zip(references, REFERENCE_STYLES * len(references)):
        handles.append(
            axes.axvline(
                reference.value,
                color="#555555",
                linestyle=style,
                linewidth=1.2,
                zorder=1,
                label=reference.label,
            )
        )
    values = [cost.value(r) for r in points] + [r.value for r in references]
    if max(values) > 8 * min(values):
        axes.set_xscale("log")  # sizes and BOPs from 2-bit to FP32 span over a decade
    axes.set_xlabel(cost_label)
    axes.set_ylabel(accuracy_label)
    axes.grid(True, alpha=0.3)
    axes.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0)
    )  # off the points
    return figure


def bits_figure(runs: Sequence[Configuration], accuracy: str, accuracy_label: str) -> Figure:
    """Mean accuracy (95% error bars) against the swept bit width, one panel per quantizer, one
    line per setting of the other bit widths (those swept together with it share its axis:
    "W = A bits"); the best FP32 mean as a dashed reference line."""
    finished = [r for r in runs if r.ok and r.metric(accuracy) is not None]
    quantized = [r for r in finished if r.quantizer != FULL_PRECISION]
    baseline = max(
        (r.metric(accuracy) for r in finished if r.quantizer == FULL_PRECISION), default=None
    )
    names = quantizer_order({r.quantizer or "?" for r in quantized})
    figure = Figure(figsize=(max(4.0, 3.6 * max(1, len(names))), 4.2))
    if not quantized:
        empty_note(figure.add_subplot(), "no finished quantized run")
        return figure
    kind = varying_bit_kind(quantized)
    tied = tied_bit_kinds(quantized, kind)
    others = [k for k in BIT_KINDS if k != kind and k not in tied]
    axis_name = " = ".join(BIT_NAMES[k] for k in BIT_KINDS if k == kind or k in tied)
    panels = figure.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for axes, quantizer in zip(panels, names):
        lines: dict[tuple, list[Configuration]] = defaultdict(list)
        for run in quantized:
            if (run.quantizer or "?") == quantizer:
                lines[(*(run.bits(k) for k in others), run.distinct)].append(run)
        for setting, members in sorted(lines.items(), key=lambda item: str(item[0])):
            members.sort(key=lambda r: r.bits(kind) or 0)
            label = (
                " ".join(
                    [*(f"{BIT_NAMES[k]}{v}" for k, v in zip(others, setting)), setting[-1]]
                ).strip()
                or quantizer
            )
            axes.errorbar(
                [r.bits(kind) for r in members],
                [r.metric(accuracy) for r in members],
                yerr=[half_width(r, accuracy) for r in members],
                marker="o",
                capsize=3,
                label=label,
            )
        if baseline is not None:
            axes.axhline(
                baseline,
                color=QUANTIZER_COLOURS[FULL_PRECISION],
                linestyle="--",
                linewidth=1,
                label="fp32",
            )
        values = sorted({r.bits(kind) for r in quantized if r.bits(kind) is not None})
        axes.set_xscale("log", base=2)
        axes.set_xticks(values, [str(v) for v in values])
        axes.minorticks_off()
        axes.set_title(quantizer)
        axes.set_xlabel(f"{axis_name} bits")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    panels[0].set_ylabel(accuracy_label)
    return figure
