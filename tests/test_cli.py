"""The command line: bad input gets one clear line and a non-zero exit before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_env
from wandb_offline import read_offline_run

BAD_INPUTS = [
    (["model=resnet9000"], "unknown model 'resnet9000': available are mobilenetv3_large, "
                            "mobilenetv3_small, nin"),
    (["quantizer=ternary"], "unknown quantizer 'ternary'"),
    (["dataset=imagenet22k"], "unknown dataset 'imagenet22k'"),
    (["quantizer=dorefa", "quant.wbits=0"], "quant.wbits=0 is not supported: use 1-16, or 32"),
    (["quantizer=dorefa", "quant.abits=64"], "quant.abits=64 is not supported"),
    (["quantizer=dorefa", "quant.wbits=four"], "quant.wbits must be an integer bit width"),
    (["quant.wbits=4"], "quantizer=fp32 cannot quantize to quant.wbits=4"),
    (["-m", "quantizer=dorefa", "quant.wbits=2,4,40"], "quant.wbits=40 is not supported"),
    (["quantizer=dorefa", "quant.overrides={nope.*:{wbits:2}}"], "matches no Conv2d/Linear"),
    (["dataset=cifar10", "dataset.download=false", "dataset.data_dir=/nonexistent/cifar"],
     "/nonexistent/cifar"),
    (["seed=-3"], "seed must be a non-negative integer"),
    (["quant.wbits=2,4", "-m"], "-m must come before the overrides"),
    (["-m", "quantizer=pact,pact_symmetric", "quant.alpha_lr_mult=10"],
     "write ++key=value for a key that only some of the swept options have"),
    (["quant.wbitz=4"], "unknown setting 'quant.wbitz'"),
    (["quantizer=dorefa", "quant.alpha_init=3"], "unknown setting 'quant.alpha_init'"),
    (["quantizer=pact_symmetric", "quant.abits=1"], "cannot quantize to quant.abits=1"),
    (["quantizer=pact", "quant.weight_quantizer=lsq"], "quant.weight_quantizer='lsq' is unknown"),
]


def run_train(args, tmp_path):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/run",
         f"hydra.sweep.dir={tmp_path}/sweep", "logger=none"],
        capture_output=True, text=True, env=run_env(), timeout=300, cwd=tmp_path,
    )


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, message):
    result = run_train(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lowbit: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing ran: no run dir, so no results.json could claim anything.
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


FAST_ARGS = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2",
             "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
             "dataset.batch_size=16", "latency.repeats=2", "trainer.enable_progress_bar=false"]


def test_multirun_sweeps_bits_and_finishes_each_wandb_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "quantizer=dorefa", "quant.wbits=2,4",
         *FAST_ARGS, f"hydra.sweep.dir={tmp_path}/sweep", "callbacks=none"],
        capture_output=True, text=True, env=run_env(), timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    loaded = [json.loads(path.read_text()) for path in results]
    assert sorted(r["quant"]["wbits"] for r in loaded) == [2, 4]
    assert all(r["status"] == "ok" for r in loaded)
    # One W&B run per job, each finished with its own summary.
    ids = {r["wandb"]["id"] for r in loaded}
    assert len(ids) == 2
    for r in loaded:
        logged = read_offline_run(next(Path(r["run_dir"], "wandb").glob("offline-run-*")))
        assert logged.config["quant"]["wbits"] == r["quant"]["wbits"]
        assert logged.summary["model/size_bytes"] == r["metrics"]["model/size_bytes"]
    assert "nin-dorefa-w2a4g32-digits" in result.stdout  # the end-of-run table names the run


@pytest.mark.parametrize("logger, produced", [("csv", "csv/version_0/metrics.csv"),
                                              ("tensorboard", "tensorboard/version_0")])
def test_csv_and_tensorboard_loggers_write_their_files(tmp_path, logger, produced):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"logger={logger}", *FAST_ARGS,
         f"hydra.run.dir={tmp_path}/run", "callbacks=none"],
        capture_output=True, text=True, env=run_env(), timeout=600, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / produced).exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "ok"
