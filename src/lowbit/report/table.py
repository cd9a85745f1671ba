"""One row per run, as text cells: the table of the HTML report, runs.md and results_table.py.

A value a run did not record is shown as "-", never filled in: ``model/bops`` (issue 6's bit
operations) appears for runs whose results.json has it. Latency columns are every
``latency/*ms`` metric any run recorded, so a new latency (e.g. an int8 one) gets its column.
"""

from __future__ import annotations

from typing import Callable, Sequence

from lowbit.report.runs import RunRecord

Column = tuple[str, Callable[[RunRecord], str]]


def fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def metric_column(header: str, key: str, pattern: str) -> Column:
    return header, lambda run: fmt(run.metric(key), pattern)


def latency_keys(runs: Sequence[RunRecord]) -> list[str]:
    keys = {k for run in runs for k in run.metrics
            if k.startswith("latency/") and k.endswith("ms")}
    return sorted(keys, key=lambda k: (k != "latency/ms", k))  # the batch-1 latency first


def latency_header(key: str) -> str:
    kind = key.removeprefix("latency/").removesuffix("ms").strip("_")
    return f"latency {kind} (ms)" if kind else "latency (ms)"


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
        *(metric_column(latency_header(k), k, "{:.2f}") for k in latency_keys(runs)),
        ("duration (s)", lambda r: fmt(r.duration_s, "{:.0f}")),
        ("status", lambda r: r.status),
    ]


def table_cells(runs: Sequence[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of text cells per run."""
    cols = columns(runs)
    return [h for h, _ in cols], [[get(run) for _, get in cols] for run in runs]


def markdown_table(runs: Sequence[RunRecord]) -> str:
    headers, rows = table_cells(runs)
    escape = lambda cell: cell.replace("|", "\\|")  # noqa: E731 (a cell may name a file)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"
