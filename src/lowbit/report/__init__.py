"""Comparing runs from what they recorded: results.json files (or the W&B API), never the code
that trained them. runs.py reads runs and finds Pareto fronts, table.py makes the rows,
figures.py the plots, page.py writes the HTML page, PNGs and Markdown; wandb_runs.py maps W&B
runs onto the same records."""

from lowbit.report.page import write_report
from lowbit.report.runs import (DEPLOYED_LATENCY, Cost, RunRecord, default_accuracy, load_runs,
                                load_runs_or_explain, pareto_front)
from lowbit.report.table import markdown_table

__all__ = ["DEPLOYED_LATENCY", "Cost", "RunRecord", "default_accuracy", "load_runs",
           "load_runs_or_explain", "markdown_table", "pareto_front", "write_report"]
