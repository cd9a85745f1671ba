"""One row per run, as text cells: the table of the HTML report, runs.md and results_table.py.

A value a run did not record is shown as "-", never filled in: ``model/bops`` (issue 6's bit
operations) appears for runs whose results.json has it. The first latency column is the deployed
one, ``latency/int8_ms``; a run without it shows its fake-quant latency there, marked with a
dagger that a note under the table explains. Every other ``latency/*ms`` metric any run recorded
gets its own column after it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from lowbit.report.runs import DEPLOYED_LATENCY, Cost, RunRecord

Column = tuple[str, Callable[[RunRecord], str]]
STAND_IN_MARK = "†"  # a dagger: the value is the cost's stand-in (see stand_in_note)
LATENCY_HEADERS = {"latency/ms": "latency fake-quant (ms)"}


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def metric_column(header: str, key: str, pattern: str) -> Column:
    return header, lambda run: fmt(run.metric(key), pattern)


def cost_column(header: str, cost: Cost, pattern: str) -> Column:
    """A cost's value per run; a stand-in value carries the dagger, so it is never mistaken for
    the cost's own."""
    return header, lambda run: (fmt(cost.value(run), pattern)
                                + (STAND_IN_MARK if cost.falls_back(run) else ""))


def latency_keys(runs: Sequence[RunRecord]) -> list[str]:
    """The latencies recorded besides the deployed one (which has its own column), the
    fake-quant one first."""
    keys = {k for run in runs for k in run.metrics
            if k.startswith("latency/") and k.endswith("ms")} - {DEPLOYED_LATENCY.key}
    return sorted(keys, key=lambda k: (k != "latency/ms", k))


def latency_header(key: str) -> str:
    kind = key.removeprefix("latency/").removesuffix("ms").strip("_")
    return LATENCY_HEADERS.get(key, f"latency {kind} (ms)")


def stand_in_note(runs: Sequence[RunRecord]) -> str | None:
    """What the dagger means, for a table where some run has no int8 latency of its own."""
    if not any(DEPLOYED_LATENCY.falls_back(run) for run in runs):
        return None
    return (f"{STAND_IN_MARK} {DEPLOYED_LATENCY.fallback_label}: {DEPLOYED_LATENCY.fallback}, "
            "measured in PyTorch float32, not on a deployed integer model.")


# The quality columns of each task; a report shows those of the tasks its runs have.
QUALITY_COLUMNS = {
    "classification": [("val acc (best)", "val/acc_best"), ("test acc", "test/acc")],
    "detection": [("val mAP@0.5 (best)", "val/map50_best"), ("test mAP@0.5", "test/map50"),
                  ("test mAP@0.5:0.95", "test/map")],
}


def quality_columns(runs: Sequence[RunRecord]) -> list[Column]:
    shown = [(header, key) for headers in QUALITY_COLUMNS.values() for header, key in headers
             if any(key in run.metrics for run in runs)]
    return [metric_column(header, key, "{:.4f}")
            for header, key in shown or QUALITY_COLUMNS["classification"]]


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
        cost_column(latency_header(DEPLOYED_LATENCY.key), DEPLOYED_LATENCY, "{:.2f}"),
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
