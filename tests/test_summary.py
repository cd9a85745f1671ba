"""scripts/model_summary.py: the per-layer table adds up and its JSON matches what runs report."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, nin_macs, nin_params, run_env

from lowbit.measure import model_size
from lowbit.measure.summary import summarize
from lowbit.models import NIN
from lowbit.quant import quantize_model


def test_rows_add_up_to_the_model_totals():
    model = quantize_model(NIN(), quantizer="pact", wbits=2, abits=2, input_shape=(3, 32, 32))
    rows, totals = summarize(model, (3, 32, 32))
    assert len(rows) == 9
    assert totals["size_bytes"] == model_size(model).size_bytes
    assert totals["macs"] == sum(r.macs for r in rows) == nin_macs()
    # the 8 alphas and BatchNorm are the only parameters outside the conv rows
    assert totals["params"] - sum(r.params for r in rows) == 8 + 2 * sum(
        m.num_features for m in model.modules() if hasattr(m, "num_features")
    )
    assert rows[1].bits == "2/2/fp32" and rows[0].bits == "8/fp32/fp32"


def test_script_prints_a_table_and_a_last_json_line():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "model_summary.py"),
            "model=nin",
            "quantizer=dorefa",
            "quant.wbits=4",
            "dataset=cifar100",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    last = json.loads(lines[-1])
    assert set(last) >= {"params", "macs", "size_bytes"}
    assert last["params"] == nin_params(num_classes=100)
    assert any(line.startswith("features.4.0") and "4/4/fp32" in line for line in lines)


def test_script_bad_input_is_one_line():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "model_summary.py"), "model=nope"],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown model 'nope'" in result.stderr


def test_the_bits_summary_callback_prints_the_table_when_fit_starts(make_cfg, caplog):
    """callbacks=default prints the model's per-layer bits as fit starts; it can be removed."""
    import logging
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from lowbit.build import build_datamodule, build_quantized_model, build_task
    from lowbit.callbacks import BitsSummary

    cfg = make_cfg("quantizer=dorefa", "quant.wbits=4")
    callback = instantiate(cfg.callbacks.bits_summary)
    assert isinstance(callback, BitsSummary)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, build_quantized_model(cfg, datamodule))
    with caplog.at_level(logging.INFO):
        callback.on_fit_start(SimpleNamespace(datamodule=datamodule), task)
    rows, totals = summarize(task.model, datamodule.image_shape)
    printed = caplog.text
    assert all(row.name in printed for row in rows) and "4/4/fp32" in printed
    assert f"{totals['size_bytes']:,}" in printed
    assert "bits_summary" not in make_cfg("~callbacks.bits_summary").callbacks


def test_the_end_of_run_table_says_where_the_wandb_run_is_in_each_mode():
    from lowbit.console import summary_lines

    def wandb_row(wandb: dict) -> str:
        lines = summary_lines({"metrics": {}, "status": "ok", "run_dir": "r", "wandb": wandb})
        return next(line for line in lines if line.startswith("wandb"))

    assert wandb_row({"mode": "online", "url": "https://wandb.ai/x/y/runs/z"}).endswith(
        "https://wandb.ai/x/y/runs/z"
    )
    assert wandb_row({"mode": "offline", "dir": "runs/w"}).endswith("wandb sync runs/w")
    assert "disabled" in wandb_row({"mode": "disabled", "dir": "runs/w"})
    assert "sync" not in wandb_row({"mode": "disabled", "dir": "runs/w"})
