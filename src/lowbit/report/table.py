"""The report's tables as text cells: one row per configuration (means, standard deviations and
95% intervals over its seeds: configurations.md, the page and results_table.py), and one row per
run (runs.md, the page, results_table.py --runs).

A value a run did not record is shown as "-", never filled in: ``model/bops`` (issue 6's bit
operations) appears for runs whose results.json has it. The first latency column is the deployed
one, the int8 model's in the fastest runtime the run measured (``latency/int8_ms``, ONNX Runtime,
and ``latency/openvino_int8_ms`` where OpenVINO ran: "latency best int8 (ms)", with an "int8
runtime" column naming the one it took); a run without either shows its fake-quant latency
there, marked with a dagger that a note under the table explains. Every other ``latency/*ms``
metric any run recorded gets its own column after it. A mixed-precision run's W/A/G reads
"mixed" for its weights (mixed/4/32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lowbit.report.configs import Configuration
from lowbit.report.runs import DEPLOYED_LATENCY, INT8_PATHS, Cost, RunRecord
from lowbit.report.stats import Summary

Column = tuple[str, Callable[[RunRecord], str]]
STAND_IN_MARK = "†"  # a dagger: the value is the cost's stand-in (see stand_in_note)
LATENCY_HEADERS = {
    "latency/ms": "latency fake-quant (ms)",
    "latency/best_float_ms": "latency best float (ms)",
}
# The deployed column's value per run already (lowbit.export.onnx_run.best_paths): not twice.
SHOWN_AS_DEPLOYED = "latency/best_int8_ms"


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def metric_column(header: str, key: str, pattern: str) -> Column:
    return header, lambda run: fmt(run.metric(key), pattern)


def cost_cell(cost: Cost, pattern: str) -> Callable[[RunRecord], str]:
    """A cost's value per run; a stand-in value carries the dagger, so it is never mistaken for
    the cost's own."""
    return lambda run: (
        fmt(cost.value(run), pattern) + (STAND_IN_MARK if cost.falls_back(run) else "")
    )


def latency_keys(runs: Sequence[RunRecord]) -> list[str]:
    """The latencies recorded besides the deployed one (which has its own column; where it is
    the best of several runtimes, each runtime's has its own too), the fake-quant one first."""
    keys = {k for run in runs for k in run.metrics if k.startswith("latency/") and k.endswith("ms")}
    keys -= {SHOWN_AS_DEPLOYED}
    if not DEPLOYED_LATENCY.chooses(runs):
        keys -= {DEPLOYED_LATENCY.key}
    return sorted(keys, key=lambda k: (k != "latency/ms", k))


def latency_header(key: str) -> str:
    if key in INT8_PATHS:  # "latency onnxruntime int8 (ms)", beside the best of them
        return f"latency {INT8_PATHS[key]} (ms)"
    kind = key.removeprefix("latency/").removesuffix("ms").strip("_")
    return LATENCY_HEADERS.get(key, f"latency {kind} (ms)")


def deployed_columns(runs: Sequence[RunRecord], value: Callable[[Any], str]) -> list[Column]:
    """The deployed latency's column ("latency int8 (ms)"), and where some run measured int8
    in more than one runtime, "latency best int8 (ms)" and the runtime each value comes from."""
    if not DEPLOYED_LATENCY.chooses(runs):
        return [("latency int8 (ms)", value)]
    return [
        ("latency best int8 (ms)", value),
        ("int8 runtime", lambda r: (DEPLOYED_LATENCY.path(r) or "-").removesuffix(" int8")),
    ]


def stand_in_note(runs: Sequence[RunRecord]) -> str | None:
    """What the dagger means, for a table where some run has no int8 latency of its own."""
    if not any(DEPLOYED_LATENCY.falls_back(run) for run in runs):
        return None
    return (
        f"{STAND_IN_MARK} {DEPLOYED_LATENCY.fallback_label}: {DEPLOYED_LATENCY.fallback}, "
        "measured in PyTorch float32, not on a deployed integer model."
    )


# The quality columns of each task; a report shows those of the tasks its runs have.
QUALITY_COLUMNS = {
    "classification": [("val acc (best)", "val/acc_best"), ("test acc", "test/acc")],
    "detection": [
        ("val mAP@0.5 (best)", "val/map50_best"),
        ("test mAP@0.5", "test/map50"),
        ("test mAP@0.5:0.95", "test/map"),
    ],
}


def quality_columns(runs: Sequence[RunRecord]) -> list[Column]:
    shown = [
        (header, key)
        for headers in QUALITY_COLUMNS.values()
        for header, key in headers
        if any(key in run.metrics for run in runs)
    ]
    return [
        metric_column(header, key, "{:.4f}")
        for header, key in shown or QUALITY_COLUMNS["classification"]
    ]


def columns(runs: Sequence[RunRecord]) -> list[Column]:
    return [
        ("run", lambda r: r.name),
        ("model", lambda r: r.model or "-"),
        ("quantizer", lambda r: r.quantizer or "-"),
        ("W/A/G", lambda r: r.bits_label),
        *quality_columns(runs),
        metric_column("size (bytes)", "model/size_bytes", "{:,.0f}"),
        metric_column("compression", "model/compression", "{:.2f}x"),
        metric_column("BOPs", "model/bops", "{:,.0f}"),
        *deployed_columns(runs, cost_cell(DEPLOYED_LATENCY, "{:.2f}")),
        *(metric_column(latency_header(k), k, "{:.2f}") for k in latency_keys(runs)),
        ("duration (s)", lambda r: fmt(r.duration_s, "{:.0f}")),
        ("status", lambda r: r.status),
    ]


def table_cells(runs: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of text cells per run."""
    cols = columns(runs)
    return [h for h, _ in cols], [[get(run) for _, get in cols] for run in runs]


def markdown_table(runs: Sequence[RunRecord]) -> str:
    """The table, and under it the dagger's note when a cell carries one."""
    headers, rows = table_cells(runs)
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731 (a cell may name a file)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    note = stand_in_note(runs)
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


# One row per configuration (the runs that differ only in their seed): the report's main table.
ConfigurationColumn = tuple[str, Callable[[Configuration], str]]


def seeds_cell(configuration: Configuration) -> str:
    """Seeds counted, and the runs that were not: failed, or repeating a counted seed."""
    extra = [f"{len(configuration.failed)} failed"] if configuration.failed else []
    extra += [f"{len(configuration.repeats)} repeated"] if configuration.repeats else []
    return str(configuration.n) + (f" ({', '.join(extra)})" if extra else "")


def spread_columns(header: str, key: str, pattern: str) -> list[ConfigurationColumn]:
    """Mean, standard deviation and 95% interval of a metric over seeds ("-" with one seed)."""

    def part(configuration: Configuration, field: str) -> str:
        summary = configuration.summary(key)
        return fmt(None if summary is None else getattr(summary, field), pattern)

    def interval(configuration: Configuration) -> str:
        summary = configuration.summary(key)
        if summary is None or summary.ci_low is None:
            return "-"
        return f"[{pattern.format(summary.ci_low)}, {pattern.format(summary.ci_high)}]"

    return [
        (f"{header} mean", lambda c: part(c, "mean")),
        ("sd", lambda c: part(c, "sd")),
        ("95% CI", interval),
    ]


def mean_cell(summary: Summary | None, pattern: str) -> str:
    """A cost's mean, with its standard deviation where seeds disagree (latency does)."""
    if summary is None:
        return "-"
    if summary.sd:
        return f"{pattern.format(summary.mean)} ± {pattern.format(summary.sd)}"
    return pattern.format(summary.mean)


def mean_column(header: str, key: str, pattern: str) -> ConfigurationColumn:
    return header, lambda c: mean_cell(c.summary(key), pattern)


def deployed_latency_cell(configuration: Configuration) -> str:
    """The mean of the runtime with the lowest mean int8 latency (else the stand-in's)."""
    key = DEPLOYED_LATENCY.source(configuration)
    cell = mean_cell(configuration.summary(key) if key else None, "{:.2f}")
    return cell + (STAND_IN_MARK if DEPLOYED_LATENCY.falls_back(configuration) else "")


def configuration_columns(configurations: Sequence[Configuration]) -> list[ConfigurationColumn]:
    runs = [run for c in configurations for run in c.runs]
    shown = [
        (header, key)
        for headers in QUALITY_COLUMNS.values()
        for header, key in headers
        if any(key in run.metrics for run in runs)
    ] or QUALITY_COLUMNS["classification"]
    return [
        ("configuration", lambda c: c.name),
        ("model", lambda c: f"{c.model or '-'}/{c.dataset or '-'}"),
        ("W/A/G", lambda c: c.bits_label),
        ("seeds", seeds_cell),
        *(column for header, key in shown for column in spread_columns(header, key, "{:.4f}")),
        mean_column("size (bytes)", "model/size_bytes", "{:,.0f}"),
        mean_column("BOPs", "model/bops", "{:,.0f}"),
        *deployed_columns(runs, deployed_latency_cell),
        ("duration (s)", lambda c: mean_cell(c.duration, "{:.0f}")),
    ]


def configuration_cells(
    configurations: Sequence[Configuration],
) -> tuple[list[str], list[list[str]]]:
    cols = configuration_columns(configurations)
    return [h for h, _ in cols], [[get(c) for _, get in cols] for c in configurations]


def markdown_rows(headers: list[str], rows: list[list[str]]) -> str:
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731 (a cell may name a file)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(escape, row)) + " |" for row in rows]) + "\n"


def configurations_note(configurations: Sequence[Configuration]) -> str | None:
    """What the dagger means in the aggregated table, where some configuration has it."""
    if not any(DEPLOYED_LATENCY.falls_back(c) for c in configurations):
        return None
    return (
        f"{STAND_IN_MARK} {DEPLOYED_LATENCY.fallback_label}: {DEPLOYED_LATENCY.fallback}, "
        "measured in PyTorch float32, not on a deployed integer model."
    )


def configurations_markdown(configurations: Sequence[Configuration]) -> str:
    """The aggregated table: one row per configuration, means, sd and 95% intervals over seeds."""
    headers, rows = configuration_cells(configurations)
    note = configurations_note(configurations)
    return markdown_rows(headers, rows) + (f"\n{note}\n" if note else "")


SUMMARY_FIELDS = [
    "configuration",
    "model",
    "dataset",
    "quantizer",
    "wbits",
    "abits",
    "gbits",
    "seeds",
    "metric",
    "n",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
]


def summary_rows(configurations: Sequence[Configuration]) -> list[dict[str, object]]:
    """Every numeric metric of every configuration, one row each (configurations.csv)."""
    rows = []
    for c in configurations:
        for key, summary in sorted(c.summaries.items()):
            rows.append(
                {
                    "configuration": c.name,
                    "model": c.model,
                    "dataset": c.dataset,
                    "quantizer": c.quantizer,
                    "wbits": c.bits("wbits"),
                    "abits": c.bits("abits"),
                    "gbits": c.bits("gbits"),
                    "seeds": " ".join(str(s) for s in c.seeds),
                    "metric": key,
                    "n": summary.n,
                    "mean": summary.mean,
                    "sd": summary.sd,
                    "ci_low": summary.ci_low,
                    "ci_high": summary.ci_high,
                }
            )
    return rows
