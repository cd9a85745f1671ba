"""notebooks/compare_runs.ipynb runs top to bottom, offline, on sweeps' results.json files and
shows the report's aggregated table, verdicts and figures; online it merges the W&B API's records
with the local ones."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import nbformat
from conftest import ROOT
from nbclient import NotebookClient
from sweep_results import example_sweep, seeded_sweep, write_job

from lowbit.report import build_report, configurations_markdown, load_runs, markdown_table
from lowbit.report.wandb_runs import merge_runs, run_from_wandb, runs_from_wandb

NOTEBOOK = ROOT / "notebooks" / "compare_runs.ipynb"


def outputs(notebook) -> list:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


def test_notebook_aggregates_sweeps_over_seeds_from_their_results_files(tmp_path, monkeypatch):
    first = seeded_sweep(tmp_path / "2026-11-01_12-00-00_bits_grid", seeds=(0, 1))
    second = seeded_sweep(tmp_path / "2026-11-02_09-00-00_bits_grid", seeds=(2,))
    example_sweep(tmp_path / "not_chosen")
    monkeypatch.setenv("LOWBIT_SWEEP_DIR", f"{first}{os.pathsep}{second}")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Executing raises CellExecutionError on the first cell that fails.
    NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=180,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    text = "".join(o.get("text", "") for o in outputs(notebook) if o.output_type == "stream")
    assert f"12 runs (12 from results.json) under {first}, {second}; 0 failed" in text
    # The groups a sweep's runs share in W&B.
    assert "W&B groups: 2026-11-01_12-00-00_bits_grid, 2026-11-02_09-00-00_bits_grid" in text
    assert "4 configurations, 3 seeds each" in text
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs(notebook))
    # The same aggregated table, verdicts and figures as the report.
    runs = load_runs([first, second])
    report = build_report(runs, "val/acc_best")
    assert configurations_markdown(report.configurations) in markdown
    assert markdown_table(runs) in markdown
    assert report.verdicts in text and "4 comparisons: 3 exceed the noise" in text
    assert "Welch's t test" in text
    images = [o for o in outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # Pareto fronts against size, latency and BOPs; accuracy vs bits
    for figure in report.figures:
        assert figure.caption in text


def wandb_record(name: str, run_id: str, acc: float, complete: bool, run_dir: str = ""):
    return run_from_wandb(
        name,
        {
            "quant": {"quantizer": "dorefa", "wbits": 2, "abits": 2, "gbits": 32},
            "seed": 0,
            "paths": {"output_dir": run_dir},
        },
        {"val/acc_best": acc, **({"status": "ok"} if complete else {})},
        "finished" if complete else "running",
        run_id,
    )


def test_merged_runs_come_from_wandb_when_complete_and_from_results_json_otherwise(tmp_path):
    synced = write_job(tmp_path, 0, "dorefa", 2, 2, acc=0.8, size=2e5, latency=5.0, seed=0)
    partial = write_job(tmp_path, 1, "dorefa", 2, 2, acc=0.7, size=2e5, latency=5.0, seed=1)
    unsynced = write_job(tmp_path, 2, "dorefa", 2, 2, acc=0.6, size=2e5, latency=5.0, seed=2)
    for job, run_id in [(synced, "aaa"), (partial, "bbb")]:
        payload = json.loads((job / "results.json").read_text())
        payload["wandb"] = {"id": run_id, "mode": "offline"}
        (job / "results.json").write_text(json.dumps(payload))
    local = load_runs([tmp_path])
    remote = [
        wandb_record(synced.name, "aaa", 0.81, complete=True),
        # Only partly synced: W&B has its first epochs, not its final summary.
        wandb_record(partial.name, "bbb", 0.3, complete=False),
        # Matched by its folder (no id in its results.json), complete in W&B.
        wandb_record(unsynced.name, "ccc", 0.61, complete=True, run_dir=str(unsynced)),
        wandb_record("9_elsewhere", "ddd", 0.5, complete=True),
    ]  # only W&B has it
    merged = merge_runs(local, remote)
    assert [(r.name, r.source, r.metric("val/acc_best")) for r in merged] == [
        (synced.name, "W&B", 0.81),
        (partial.name, "results.json", 0.7),
        (unsynced.name, "W&B", 0.61),
        ("9_elsewhere", "W&B", 0.5),
    ]
    # Before the merge, a partly synced W&B run hid the local ones: no longer.
    assert merge_runs(local, []) == local


def test_wandb_runs_become_the_same_records_as_results_files():
    logged = SimpleNamespace(
        name="3_nin-dorefa-w4a4g8-digits",
        state="finished",
        id="1x2y3z",
        config={
            "quant": {"quantizer": "dorefa", "wbits": 4, "abits": 4, "gbits": 8},
            "seed": 2,
            "quantizer": "dorefa",
            "model_name": "nin",
            "dataset_name": "digits",
        },
        summary={
            "val/acc_best": 0.9,
            "model/size_bytes": 508_000,
            "status": "ok",
            "_runtime": 12,
            "model/compression": 7.6,
        },
    )
    crashed = SimpleNamespace(
        name="4_nin-dorefa-w2a2g8-digits",
        state="crashed",
        id="4a5b6c",
        config={"quant": {"quantizer": "dorefa", "wbits": 2}},
        summary={},
    )
    asked = {}

    class Api:
        def runs(self, path, filters):
            asked.update(path=path, filters=filters)
            return [crashed, logged]

    runs = runs_from_wandb("lowbit", "2026-11-01_12-00-00_bits_grid", entity="lab", api=Api())
    assert asked == {"path": "lab/lowbit", "filters": {"group": "2026-11-01_12-00-00_bits_grid"}}
    first, second = runs
    assert (first.name, first.model, first.quantizer, first.bits_label, first.status) == (
        "3_nin-dorefa-w4a4g8-digits",
        "nin",
        "dorefa",
        "4/4/8",
        "ok",
    )
    assert first.metric("val/acc_best") == 0.9 and "_runtime" not in first.metrics
    assert (first.seed, first.run_id, first.source) == (2, "1x2y3z", "W&B")
    assert second.status == "crashed" and second.metric("val/acc_best") is None
    assert second.source == "W&B (incomplete)"  # no final summary: not taken over local runs
