"""notebooks/compare_runs.ipynb runs top to bottom, offline, on a sweep's results.json files;
online it takes the same records from the W&B API."""

from __future__ import annotations

from types import SimpleNamespace

import nbformat
from conftest import ROOT
from nbclient import NotebookClient
from sweep_results import example_sweep

from lowbit.report.wandb_runs import runs_from_wandb

NOTEBOOK = ROOT / "notebooks" / "compare_runs.ipynb"


def outputs(notebook) -> list:
    return [output for cell in notebook.cells for output in cell.get("outputs", [])]


def test_notebook_compares_a_sweep_from_its_results_files(tmp_path, monkeypatch):
    sweep = example_sweep(tmp_path / "2026-11-01_12-00-00_bits_grid")
    monkeypatch.setenv("LOWBIT_SWEEP_DIR", str(sweep))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Executing raises CellExecutionError on the first cell that fails.
    NotebookClient(notebook, kernel_name="python3", timeout=180,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for o in outputs(notebook) if o.output_type == "stream")
    assert f"6 runs from the results.json files under {sweep}; 1 failed" in text
    assert "W&B group: 2026-11-01_12-00-00_bits_grid" in text  # the group a sweep's runs share
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs(notebook))
    assert markdown.count("| 4_nin-pact-w4a4g32-digits |") == 1
    # The deployed latency and BOPs columns, and what a dagger in the int8 column means.
    assert "| BOPs | latency int8 (ms) |" in markdown and "| 3.00† |" in markdown
    assert "† fake-quant latency (no int8 export): latency/ms" in markdown
    images = [o for o in outputs(notebook) if "image/png" in o.get("data", {})]
    assert len(images) == 4  # Pareto fronts against size, latency and BOPs; accuracy vs bits
    assert "On the Pareto front (cheapest first): 1_nin-dorefa-w2a2g32-digits" in text
    # The latency front by int8 latency (fake-quant for fp32, said so), then the BOPs front.
    assert ("On the Pareto front (cheapest first): 3_nin-dorefa-w8a8g32-digits (0.9200), "
            "4_nin-pact-w4a4g32-digits (0.9300), 0_nin-fp32-w32a32g32-digits (0.9500). "
            "Hollow markers (2 of 5 runs): fake-quant latency (no int8 export).") in text
    assert ("On the Pareto front (cheapest first): 1_nin-dorefa-w2a2g32-digits (0.8000), "
            "4_nin-pact-w4a4g32-digits (0.9300), 0_nin-fp32-w32a32g32-digits (0.9500)\n") in text


def test_wandb_runs_become_the_same_records_as_results_files():
    logged = SimpleNamespace(
        name="3_nin-dorefa-w4a4g8-digits", state="finished",
        config={"quant": {"quantizer": "dorefa", "wbits": 4, "abits": 4, "gbits": 8},
                "quantizer": "dorefa", "model_name": "nin", "dataset_name": "digits"},
        summary={"val/acc_best": 0.9, "model/size_bytes": 508_000, "status": "ok",
                 "_runtime": 12, "model/compression": 7.6})
    crashed = SimpleNamespace(name="4_nin-dorefa-w2a2g8-digits", state="crashed",
                              config={"quant": {"quantizer": "dorefa", "wbits": 2}}, summary={})
    asked = {}

    class Api:
        def runs(self, path, filters):
            asked.update(path=path, filters=filters)
            return [crashed, logged]

    runs = runs_from_wandb("lowbit", "2026-11-01_12-00-00_bits_grid", entity="lab", api=Api())
    assert asked == {"path": "lab/lowbit", "filters": {"group": "2026-11-01_12-00-00_bits_grid"}}
    first, second = runs
    assert (first.name, first.model, first.quantizer, first.bits_label, first.status) == \
        ("3_nin-dorefa-w4a4g8-digits", "nin", "dorefa", "4/4/8", "ok")
    assert first.metric("val/acc_best") == 0.9 and "_runtime" not in first.metrics
    assert second.status == "crashed" and second.metric("val/acc_best") is None
