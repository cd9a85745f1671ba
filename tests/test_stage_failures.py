"""Nothing measured is ever lost: a stage after testing that fails (measure, pack, export) leaves
results.json and the W&B summary with every metric measured, names the stage, and exits 1."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from wandb_offline import read_offline_run

import lowbit.export.onnx_run
import lowbit.train
from lowbit.cli import EXIT_STAGE_FAILED, main_job
from lowbit.export.onnx_graph import UnsupportedModel
from lowbit.sweep import job
from lowbit.train import RESULTS_FILE, StageFailed, run

MEASURED = {"model/params", "model/macs", "model/bops", "latency/ms"}
PACKED = {"model/size_bytes", "model/compression"}
EXPORTED = {"export/top1_agreement"}
# Each stage broken where it calls out, as a real failure would come; the error it raises.
BREAKS = {
    "measure": (lowbit.train, "measure_latency", RuntimeError("CUDA error: illegal access")),
    "pack": (lowbit.train, "save_packed", OSError("No space left on device")),
    "export": (lowbit.export.onnx_run, "export_model", AssertionError("Mul: shapes\ndiffer")),
}
ERRORS = {
    "measure": "RuntimeError: CUDA error: illegal access",
    "pack": "OSError: No space left on device",
    "export": "AssertionError: Mul: shapes differ",
}  # one line
STAGE_METRICS = {"measure": MEASURED, "pack": PACKED, "export": EXPORTED}


def fake_export(model, datamodule, output_dir, threads, **settings):
    """The integer export's metric without the minutes an ONNX Runtime measurement takes."""
    return {"export/top1_agreement": 1.0}


def break_stage(monkeypatch, stage: str) -> None:
    monkeypatch.setattr(lowbit.export.onnx_run, "export_model", fake_export)
    module, name, error = BREAKS[stage]

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, name, fail)


def stage_cfg(make_cfg, *overrides: str):
    return make_cfg(
        "quantizer=dorefa", "quant.wbits=4", "callbacks=none", "export.onnx=true", *overrides
    )


@pytest.mark.parametrize("stage", ["measure", "pack", "export"])
def test_a_failed_stage_keeps_every_metric_measured_and_names_itself(
    make_cfg, monkeypatch, caplog, stage
):
    break_stage(monkeypatch, stage)
    cfg = stage_cfg(make_cfg, "logger=wandb")
    with (
        caplog.at_level(logging.ERROR, logger="lowbit.train"),
        pytest.raises(StageFailed) as raised,
    ):
        run(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / RESULTS_FILE).read_text())
    assert written["metrics"] == raised.value.results["metrics"]
    assert written["status"] == "failed" and written["failed_stage"] == stage
    assert written["error"] == ERRORS[stage]
    metrics = written["metrics"]
    assert {"test/acc", "val/acc", "val/acc_best", "train/loss"} <= set(metrics)
    succeeded = set().union(*(keys for name, keys in STAGE_METRICS.items() if name != stage))
    assert succeeded <= set(metrics), sorted(metrics)  # the later stages ran too
    assert not STAGE_METRICS[stage] & set(metrics)
    (logged_failure,) = [r for r in caplog.records if r.exc_info]  # the traceback: in the log
    assert f"the {stage} stage failed" in logged_failure.getMessage()

    (wandb_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    summary = read_offline_run(wandb_dir).summary
    assert summary["status"] == "failed"
    assert summary["test/acc"] == pytest.approx(metrics["test/acc"])
    assert succeeded <= set(summary)


def test_a_model_without_an_integer_form_is_a_warning_not_a_failure(make_cfg, monkeypatch, caplog):
    def unsupported(*args, **kwargs):
        raise UnsupportedModel("HardSwish has no integer form yet")

    monkeypatch.setattr(lowbit.export.onnx_run, "export_model", unsupported)
    with caplog.at_level(logging.WARNING, logger="lowbit.train"):
        results = run(stage_cfg(make_cfg, "logger=none"))
    assert results["status"] == "ok" and "failed_stage" not in results
    assert (MEASURED | PACKED) <= set(results["metrics"])
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "no integer ONNX export: HardSwish has no integer form yet"
    ]


def test_a_single_run_with_a_failed_stage_exits_1_with_one_line(make_cfg, monkeypatch, capsys):
    break_stage(monkeypatch, "pack")
    cfg = stage_cfg(make_cfg, "logger=none")
    with pytest.raises(SystemExit) as exited:
        main_job(cfg)
    assert exited.value.code == EXIT_STAGE_FAILED == 1
    captured = capsys.readouterr()
    results_file = Path(cfg.paths.output_dir) / RESULTS_FILE
    assert [line for line in captured.err.splitlines() if line.startswith("lowbit:")] == [
        f"lowbit: error: the pack stage failed: OSError: No space left on device; "
        f"the metrics measured are kept in {results_file}"
    ]
    assert "Traceback" not in captured.err  # that is the log's
    assert "test/acc" in captured.out and "failed" in captured.out  # the table of what was kept


def test_a_sweep_job_with_a_failed_stage_still_reports_what_it_measured(
    make_cfg, monkeypatch, capsys
):
    cfg = make_cfg("logger=none", "objectives=[val/acc_best,model/size_bytes]")
    monkeypatch.setattr(job, "in_multirun", lambda: True)
    monkeypatch.setattr(job, "settle_job_settings", lambda cfg: None)
    results = {
        "metrics": {"val/acc_best": 0.75},
        "failed_stage": "pack",
        "error": "OSError: No space left on device",
    }

    def pack_failed(cfg):
        raise StageFailed(results)

    monkeypatch.setattr(lowbit.train, "run", pack_failed)
    accuracy, size = main_job(cfg)
    assert accuracy == 0.75 and math.isnan(size)
    assert (
        "the pack stage failed: OSError: No space left on device; the sweep goes on"
        in capsys.readouterr().err
    )
