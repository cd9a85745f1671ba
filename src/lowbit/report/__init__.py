"""Comparing runs from what they recorded: results.json files (or the W&B API), never the code
that trained them. runs.py reads runs and finds Pareto fronts; configs.py groups the runs that
differ only in their seed and summarises their metrics (stats.py: means, 95% intervals, Welch's
test); comparisons.py states each comparison's verdict; table.py makes the rows, figures.py the
plots, page.py the HTML page, PNGs, Markdown and CSV; wandb_runs.py maps W&B runs onto the same
records and merges them with the local ones."""

from lowbit.report.configs import Configuration, group_configurations
from lowbit.report.page import build_report, write_report
from lowbit.report.runs import (
    DEPLOYED_LATENCY,
    Cost,
    RunRecord,
    default_accuracy,
    load_runs,
    load_runs_or_explain,
    pareto_front,
)
from lowbit.report.table import configurations_markdown, markdown_table

__all__ = [
    "DEPLOYED_LATENCY",
    "Configuration",
    "Cost",
    "RunRecord",
    "build_report",
    "configurations_markdown",
    "default_accuracy",
    "group_configurations",
    "load_runs",
    "load_runs_or_explain",
    "markdown_table",
    "pareto_front",
    "write_report",
]
