"""trainer=ddp: two CPU processes (gloo) stay in sync, and only rank 0 leaves records behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_env
from wandb_offline import read_offline_run

from lowbit.resume import WANDB_ID_FILE
from lowbit.train import RESULTS_FILE, run

# PACT with calibrated alphas: each process calibrates on its own first batch, so without the
# all-reduce in LearnedClip the two replicas would start, and stay, with different alphas.
DDP_RUN = [
    "trainer=ddp",
    "quantizer=pact",
    "quant.gbits=8",
    "quant.alpha_calibration=99",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "dataset.batch_size=16",
    "latency.warmup=1",
    "latency.repeats=2",
    "trainer.enable_progress_bar=false",
    "logger=wandb",
]


@pytest.mark.slow  # two processes of a whole run (about 25 s quiet); make test-slow runs it
def test_two_cpu_processes_keep_alphas_and_bn_statistics_in_sync(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *DDP_RUN, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env={**run_env(), "OMP_NUM_THREADS": "1"},
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout  # two processes ran
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["status"] == "ok"
    assert results["distributed"] == {
        "world_size": 2,
        "alpha_max_diff": 0.0,
        "bn_max_diff": 0.0,
        "in_sync": True,
    }
    assert len(results["alpha"]) == 8 and len(set(results["alpha"].values())) > 1  # calibrated
    # One W&B run (rank 0's), one summary table.
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert read_offline_run(offline).summary["status"] == "ok"
    assert results["wandb"]["id"] == (run_dir / WANDB_ID_FILE).read_text().strip()
    assert result.stdout.count("lowbit: nin-pact-w4a4g8-digits finished") == 1


def test_a_process_other_than_rank_zero_writes_no_results_and_no_wandb_run(
    make_cfg, monkeypatch, capsys
):
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from lowbit.console import print_summary

    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what LOCAL_RANK=1 gives the second process
    cfg = make_cfg("logger=wandb", "callbacks=none", "+trainer.fast_dev_run=true")
    results = run(cfg)
    print_summary(results)
    output_dir = Path(cfg.paths.output_dir)
    assert results["status"] == "ok"
    assert not (output_dir / RESULTS_FILE).exists()
    assert not (output_dir / WANDB_ID_FILE).exists()
    assert not list(output_dir.glob("wandb/offline-run-*"))
    assert "latency/ms" not in results["metrics"]  # measuring is rank 0's job too
    assert "finished" not in capsys.readouterr().out
