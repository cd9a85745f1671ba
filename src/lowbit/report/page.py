"""The sweep report on disk: a self-contained HTML page, its figures as PNG, a Markdown table.

The page carries its figures inline (base64 ``data:`` images) and its style in the page, so it
can be mailed, attached to an issue or opened from any folder; the PNGs beside it are the same
figures for slides and READMEs.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lowbit.report.figures import bits_figure, pareto_figure, png_bytes
from lowbit.report.runs import (DEPLOYED_LATENCY, Cost, RunRecord, as_cost, measured_runs,
                                pareto_front)
from lowbit.report.table import markdown_table, stand_in_note, table_cells

ACCURACY_LABELS = {"val/acc_best": "validation accuracy (best epoch)", "test/acc": "test accuracy",
                   "val/map50_best": "validation mAP@0.5 (best epoch)",
                   "test/map50": "test mAP@0.5"}
# (file stem, title, cost, axis label); the fronts minimise cost and maximise accuracy.
PARETO_PLOTS: list[tuple[str, str, str | Cost, str]] = [
    ("pareto_size", "Accuracy vs model size", "model/size_bytes", "model size (bytes, packed file)"),
    ("pareto_latency", "Accuracy vs latency", DEPLOYED_LATENCY,
     "latency, batch 1 (ms, ONNX Runtime int8 model unless marked)"),
    ("pareto_bops", "Accuracy vs bit operations", "model/bops",
     "bit operations (BOPs: MACs x weight bits x activation bits)"),
]
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:nth-child(-n+4), th:nth-child(-n+4) { text-align: left; }
tr.failed td { background: #fde2e2; } img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
"""


@dataclass(frozen=True)
class ReportFigure:
    stem: str
    title: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    figures: list[Path]


def accuracy_label(accuracy: str) -> str:
    return ACCURACY_LABELS.get(accuracy, accuracy)


def stand_in_sentence(runs: Sequence[RunRecord], cost: Cost, accuracy: str) -> str:
    """How many points are the cost's stand-in, so that the caption says it without the figure."""
    points = measured_runs(runs, cost, accuracy)
    marked = sum(cost.falls_back(r) for r in points)
    return f"Hollow markers ({marked} of {len(points)} runs): {cost.fallback_label}." \
        if marked else ""


def front_caption(runs: Sequence[RunRecord], cost: str | Cost, accuracy: str) -> str:
    cost = as_cost(cost)
    front = pareto_front(runs, cost, accuracy)
    if not front:
        return f"No finished run recorded {cost}."
    listed = "On the Pareto front (cheapest first): " + ", ".join(
        f"{r.name} ({r.metric(accuracy):.4f})" for r in front)
    return ". ".join(filter(None, [listed, stand_in_sentence(runs, cost, accuracy)]))


def make_figures(runs: Sequence[RunRecord], accuracy: str) -> list[ReportFigure]:
    label = accuracy_label(accuracy)
    figures = [ReportFigure(stem, title,
                            png_bytes(pareto_figure(runs, cost, axis, accuracy, label)),
                            front_caption(runs, cost, accuracy))
               for stem, title, cost, axis in PARETO_PLOTS]
    figures.append(ReportFigure("accuracy_vs_bits", "Accuracy vs bits, per quantizer",
                                png_bytes(bits_figure(runs, accuracy, label)),
                                "Dashed: the best FP32 run. Finished runs only."))
    return figures


def summary_line(runs: Sequence[RunRecord]) -> str:
    failed = [r for r in runs if not r.ok]
    text = f"{len(runs)} runs, {len(runs) - len(failed)} ok"
    if failed:
        text += f", {len(failed)} failed: " + ", ".join(f"{r.name} ({r.status})" for r in failed)
    return text


def html_table(runs: Sequence[RunRecord]) -> str:
    headers, rows = table_cells(runs)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for run, row in zip(runs, rows):
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        title = f' title="{html.escape(run.error)}"' if run.error else ""
        body.append(f'<tr class="{"ok" if run.ok else "failed"}"{title}>{cells}</tr>')
    note = stand_in_note(runs)
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            + (f'<p class="note">{html.escape(note)}</p>' if note else ""))


def html_page(title: str, runs: Sequence[RunRecord], figures: Sequence[ReportFigure],
              accuracy: str) -> str:
    sections = []
    for figure in figures:
        data = base64.b64encode(figure.png).decode("ascii")
        sections.append(
            f"<h2>{html.escape(figure.title)}</h2>"
            f'<img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
            f'<p class="note">{html.escape(figure.caption)}</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary_line(runs))}. Accuracy: {html.escape(accuracy_label(accuracy))}.
Sizes are each run's packed checkpoint (bits-aware and computed in runs older than the packed
file); latency is the int8 model's in ONNX Runtime at batch 1, or, marked as such, the fake-quant
graph's in PyTorch float32 for runs without an int8 export; BOPs weigh each MAC by its bits.</p>
{''.join(sections)}
<h2>Runs</h2>
{html_table(runs)}
</body></html>
"""


def write_report(runs: Sequence[RunRecord], out_dir: Path, title: str,
                 accuracy: str = "val/acc_best") -> ReportFiles:
    """index.html, runs.md and one PNG per figure in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = make_figures(runs, accuracy)
    pngs = []
    for figure in figures:
        path = out_dir / f"{figure.stem}.png"
        path.write_bytes(figure.png)
        pngs.append(path)
    markdown = out_dir / "runs.md"
    markdown.write_text(f"# {title}\n\n{summary_line(runs)}.\n\n{markdown_table(runs)}",
                        encoding="utf-8")  # the table may carry a dagger
    page = out_dir / "index.html"
    page.write_text(html_page(title, runs, figures, accuracy), encoding="utf-8")
    return ReportFiles(html=page, markdown=markdown, figures=pngs)
