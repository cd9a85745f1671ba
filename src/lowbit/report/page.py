"""The sweep report on disk: a self-contained HTML page, its figures as PNG, Markdown tables and
CSV files; ``build_report`` is the same content in memory, for the notebook.

The page carries its figures inline (base64 ``data:`` images) and its style in the page, so it
can be mailed, attached to an issue or opened from any folder; the PNGs beside it are the same
figures for slides and READMEs.
"""

from __future__ import annotations

import base64
import csv
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lowbit.report.comparisons import (
    TEST_NAME,
    Comparison,
    draw_comparisons,
    verdict_counts,
    verdict_lines,
)
from lowbit.report.configs import Configuration, group_configurations, seed_counts
from lowbit.report.figures import (
    MIXED_LABEL,
    ReferenceLine,
    best_float_references,
    bits_figure,
    pareto_figure,
    png_bytes,
)
from lowbit.report.runs import (
    DEPLOYED_LATENCY,
    Cost,
    RunRecord,
    as_cost,
    measured_runs,
    pareto_front,
)
from lowbit.report.table import (
    SUMMARY_FIELDS,
    configuration_cells,
    configurations_markdown,
    configurations_note,
    markdown_table,
    stand_in_note,
    summary_rows,
    table_cells,
)

ACCURACY_LABELS = {
    "val/acc_best": "validation accuracy (best epoch)",
    "test/acc": "test accuracy",
    "val/map50_best": "validation mAP@0.5 (best epoch)",
    "test/map50": "test mAP@0.5",
}
# (file stem, title, cost, axis label); the fronts minimise cost and maximise accuracy.
PARETO_PLOTS: list[tuple[str, str, str | Cost, str]] = [
    (
        "pareto_size",
        "Accuracy vs model size",
        "model/size_bytes",
        "model size (bytes, packed file)",
    ),
    (
        "pareto_latency",
        "Accuracy vs latency",
        DEPLOYED_LATENCY,
        "latency, batch 1 (ms, int8 model in its fastest runtime unless marked)",
    ),
    (
        "pareto_bops",
        "Accuracy vs bit operations",
        "model/bops",
        "bit operations (BOPs: MACs x weight bits x activation bits)",
    ),
]
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; } td:nth-child(-n+4), th:nth-child(-n+4) { text-align: left; }
tr.failed td { background: #fde2e2; } img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
ul.verdicts { font-family: ui-monospace, monospace; font-size: 0.85em; }
li.exceeds { color: #1a5e1a; } li.within { color: #555; } li.cannot { color: #8a6d00; }
"""
STATISTICS = (
    "Runs that differ only in their seed are one configuration. Each configuration shows n (its "
    "finished seeds), the mean, the standard deviation and the 95% confidence interval of the "
    "mean (Student's t with n - 1 degrees of freedom); figures draw the means with these "
    "intervals as error bars, and the Pareto fronts are computed on the means. Each comparison "
    f"is judged on {{metric}} by {TEST_NAME}, with Welch-Satterthwaite degrees of freedom: it "
    "exceeds the noise when the 95% interval of the difference leaves out zero (p < 0.05), and "
    "is within noise otherwise, which means the seeds cannot separate the two, not that they "
    "are equal. With one seed on either side there is no spread to judge by: cannot tell."
)


@dataclass(frozen=True)
class ReportFigure:
    stem: str
    title: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path  # runs.md, one row per run
    figures: list[Path]
    configurations: Path  # configurations.md, one row per configuration
    tables: list[Path]  # configurations.csv (every metric's n, mean, sd, CI), comparisons.csv


@dataclass(frozen=True)
class Report:
    """What the page shows: configurations, comparisons with verdicts, figures; no files."""

    runs: list[RunRecord]
    accuracy: str
    configurations: list[Configuration]
    comparisons: list[Comparison]
    figures: list[ReportFigure]

    @property
    def statistics(self) -> str:
        """How the numbers were made: which test, which interval, what "within noise" means."""
        return STATISTICS.format(metric=self.accuracy)

    @property
    def verdicts(self) -> str:
        """The comparisons as text: their counts, then one line each (truncated past a few
        dozen)."""
        if not self.comparisons:
            return "No comparison to draw: no two quantizers at the same bits, no adjacent bits."
        return "\n".join(
            [
                verdict_counts(self.comparisons) + f" ({self.accuracy}).",
                *verdict_lines(self.comparisons),
            ]
        )


def build_report(runs: Sequence[RunRecord], accuracy: str) -> Report:
    """The runs grouped into configurations over seeds, compared, and drawn."""
    configurations = group_configurations(runs)
    return Report(
        list(runs),
        accuracy,
        configurations,
        draw_comparisons(configurations, accuracy),
        make_figures(configurations, accuracy),
    )


def accuracy_label(accuracy: str) -> str:
    return ACCURACY_LABELS.get(accuracy, accuracy)


def stand_in_sentence(configurations: Sequence[Configuration], cost: Cost, accuracy: str) -> str:
    """How many points are the cost's stand-in, so that the caption says it without the figure."""
    points = measured_runs(configurations, cost, accuracy)
    marked = sum(cost.falls_back(c) for c in points)
    return (
        f"Hollow markers ({marked} of {len(points)} configurations): {cost.fallback_label}."
        if marked
        else ""
    )


def mixed_sentence(configurations: Sequence[Configuration], cost: Cost, accuracy: str) -> str:
    """How many points are mixed precision, so that the caption says it without the figure."""
    points = measured_runs(configurations, cost, accuracy)
    mixed = sum(c.mixed for c in points)
    return f"Diamonds ({mixed} of {len(points)} configurations): {MIXED_LABEL}." if mixed else ""


def reference_sentence(references: Sequence[ReferenceLine]) -> str:
    """What each reference line is, and over which runs its median was taken."""
    return " ".join(
        f"Grey line: {r.label}, the median of latency/best_float_ms over the {r.runs} "
        f"run{'s' if r.runs != 1 else ''} of {r.group} that measured it (every configuration "
        "of the model: each exports the same float model); the float path to beat."
        for r in references
    )


def front_caption(
    configurations: Sequence[Configuration],
    cost: str | Cost,
    accuracy: str,
    references: Sequence[ReferenceLine] = (),
) -> str:
    cost = as_cost(cost)
    front = pareto_front(configurations, cost, accuracy)
    if not front:
        return f"No finished run recorded {cost}."
    # where the cost is the lowest of several runtimes', each point names the one it took
    named = cost.chooses(measured_runs(configurations, cost, accuracy))
    listed = "On the Pareto front of the means (cheapest first): " + ", ".join(
        f"{c.name} ({c.metric(accuracy):.4f}, n = {c.n}"
        + (f", {cost.path(c) or cost.fallback_label}" if named else "")
        + ")"
        for c in front
    )
    return " ".join(
        filter(
            None,
            [
                ". ".join(
                    filter(None, [listed, stand_in_sentence(configurations, cost, accuracy)])
                ),
                mixed_sentence(configurations, cost, accuracy),
                reference_sentence(references),
            ],
        )
    )


ERROR_BARS = "Points are means over seeds; error bars, their 95% confidence intervals."


def references_of(
    configurations: Sequence[Configuration], cost: str | Cost, accuracy: str
) -> list[ReferenceLine]:
    """The reference lines of a Pareto figure: on the deployed latency's, the best float path's
    latency of each model among its points (none for runs made before it was recorded)."""
    if as_cost(cost) != DEPLOYED_LATENCY:
        return []
    return best_float_references(measured_runs(configurations, cost, accuracy))


def make_figures(configurations: Sequence[Configuration], accuracy: str) -> list[ReportFigure]:
    label = accuracy_label(accuracy)
    figures = []
    for stem, title, cost, axis in PARETO_PLOTS:
        references = references_of(configurations, cost, accuracy)
        figure = pareto_figure(configurations, cost, axis, accuracy, label, references)
        caption = front_caption(configurations, cost, accuracy, references)
        figures.append(ReportFigure(stem, title, png_bytes(figure), f"{ERROR_BARS} {caption}"))
    figures.append(
        ReportFigure(
            "accuracy_vs_bits",
            "Accuracy vs bits, per quantizer",
            png_bytes(bits_figure(configurations, accuracy, label)),
            f"{ERROR_BARS} Dashed: the best FP32 mean. Finished runs only.",
        )
    )
    return figures


def summary_line(runs: Sequence[RunRecord]) -> str:
    failed = [r for r in runs if not r.ok]
    text = f"{len(runs)} runs, {len(runs) - len(failed)} ok"
    if failed:
        text += f", {len(failed)} failed: " + ", ".join(f"{r.name} ({r.status})" for r in failed)
    return text


def configurations_line(configurations: Sequence[Configuration]) -> str:
    """E.g. "4 configurations, 3 seeds each; 1 repeated seed left out: 2_nin-... (seed 0)"."""
    text = f"{len(configurations)} configurations, {seed_counts(configurations)}"
    repeats = [r for c in configurations for r in c.repeats]
    if repeats:
        text += (
            f"; {len(repeats)} repeated seed{'s' if len(repeats) > 1 else ''} left out: "
            + ", ".join(f"{r.name} (seed {r.seed})" for r in repeats)
        )
    return text


def html_rows(
    headers: list[str], rows: list[list[str]], classes: list[str], titles: list[str | None]
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for row, css, title in zip(rows, classes, titles):
        cells = "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
        hover = f' title="{html.escape(title)}"' if title else ""
        body.append(f'<tr class="{css}"{hover}>{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_configurations(configurations: Sequence[Configuration]) -> str:
    headers, rows = configuration_cells(configurations)
    seeds = [f"seeds {' '.join(str(s) for s in c.seeds)}" for c in configurations]
    note = configurations_note(configurations)
    return html_rows(
        headers, rows, ["configuration" if c.ok else "failed" for c in configurations], seeds
    ) + (f'<p class="note">{html.escape(note)}</p>' if note else "")


def html_verdicts(report: Report) -> str:
    if not report.comparisons:
        return f"<p>{html.escape(report.verdicts)}</p>"
    counts, *lines = report.verdicts.split("\n")
    css = {"exceeds noise": "exceeds", "within noise": "within", "cannot tell": "cannot"}
    items = [
        f'<li class="{css[c.difference.verdict]}">{html.escape(line)}</li>'
        for c, line in zip(report.comparisons, lines)
    ]
    items += [f"<li>{html.escape(line)}</li>" for line in lines[len(items) :]]  # truncation
    return f'<p>{html.escape(counts)}</p><ul class="verdicts">{"".join(items)}</ul>'


def html_table(runs: Sequence[RunRecord]) -> str:
    headers, rows = table_cells(runs)
    note = stand_in_note(runs)
    return html_rows(
        headers, rows, ["ok" if r.ok else "failed" for r in runs], [r.error for r in runs]
    ) + (f'<p class="note">{html.escape(note)}</p>' if note else "")


def html_page(title: str, report: Report) -> str:
    runs, accuracy = report.runs, report.accuracy
    sections = []
    for figure in report.figures:
        data = base64.b64encode(figure.png).decode("ascii")
        sections.append(
            f"<h2>{html.escape(figure.title)}</h2>"
            f'<img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
            f'<p class="note">{html.escape(figure.caption)}</p>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary_line(runs))}; {html.escape(configurations_line(report.configurations))}.
Accuracy: {html.escape(accuracy_label(accuracy))}.
Sizes are each run's packed checkpoint (bits-aware and computed in runs older than the packed
file); latency is the int8 model's at batch 1 in the fastest runtime the run measured it in
(ONNX Runtime, or OpenVINO where it ran), or, marked as such, the fake-quant graph's in PyTorch
float32 for runs without an int8 export; BOPs weigh each MAC by its bits. Mixed-precision
configurations (trained from an allocation) read "mixed" in their W/A/G and are diamonds in the
figures.</p>
<h2>Configurations</h2>
{html_configurations(report.configurations)}
<h2>Comparisons</h2>
{html_verdicts(report)}
<p class="note">{html.escape(report.statistics)}</p>
{"".join(sections)}
<h2>Runs</h2>
{html_table(runs)}
</body></html>
"""


def write_report(
    runs: Sequence[RunRecord], out_dir: Path, title: str, accuracy: str = "val/acc_best"
) -> ReportFiles:
    """index.html, configurations.md, runs.md, configurations.csv, comparisons.csv and one PNG
    per figure in ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = build_report(runs, accuracy)
    pngs = []
    for figure in report.figures:
        path = out_dir / f"{figure.stem}.png"
        path.write_bytes(figure.png)
        pngs.append(path)
    markdown = out_dir / "runs.md"
    markdown.write_text(
        f"# {title}\n\n{summary_line(runs)}.\n\n{markdown_table(runs)}", encoding="utf-8"
    )  # the table may carry a dagger
    aggregated = out_dir / "configurations.md"
    aggregated.write_text(
        f"# {title}\n\n{configurations_line(report.configurations)}.\n\n"
        f"{configurations_markdown(report.configurations)}\n## Comparisons\n\n"
        + "".join(f"- {line}\n" for line in report.verdicts.split("\n"))
        + f"\n{report.statistics}\n",
        encoding="utf-8",
    )
    tables = [
        write_csv(
            out_dir / "configurations.csv", SUMMARY_FIELDS, summary_rows(report.configurations)
        ),
        write_csv(
            out_dir / "comparisons.csv", COMPARISON_FIELDS, comparison_rows(report.comparisons)
        ),
    ]
    page = out_dir / "index.html"
    page.write_text(html_page(title, report), encoding="utf-8")
    return ReportFiles(
        html=page, markdown=markdown, figures=pngs, configurations=aggregated, tables=tables
    )


COMPARISON_FIELDS = [
    "kind",
    "better",
    "worse",
    "metric",
    "n_better",
    "n_worse",
    "difference",
    "ci_low",
    "ci_high",
    "dof",
    "p_value",
    "verdict",
    "reason",
]


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict[str, object]]:
    return [
        {
            "kind": c.kind,
            "better": c.better.name,
            "worse": c.worse.name,
            "metric": c.metric,
            "n_better": c.better.n,
            "n_worse": c.worse.n,
            "difference": c.difference.delta,
            "ci_low": c.difference.ci_low,
            "ci_high": c.difference.ci_high,
            "dof": c.difference.dof,
            "p_value": c.difference.p_value,
            "verdict": c.difference.verdict,
            "reason": c.difference.reason,
        }
        for c in comparisons
    ]


def write_csv(path: Path, fields: list[str], rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
