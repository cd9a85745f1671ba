"""Resume after a kill: a real training process is killed and continued to the same metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_env
from wandb_offline import read_offline_run

from lowbit.cli import expand_resume
from lowbit.errors import ConfigError
from lowbit.resume import WANDB_ID_FILE, resume_overrides

# A real run in miniature: PACT with calibrated alphas (buffers in the checkpoint), DoReFa
# gradient noise (its own generator), SGD momentum and a cosine schedule (optimizer and
# scheduler state), 3 epochs of 3 batches, W&B offline.
TINY_RUN = [
    "quantizer=pact",
    "quant.gbits=8",
    "quant.alpha_calibration=99",
    "seed=0",
    "trainer.max_epochs=3",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "dataset.batch_size=16",
    "latency.warmup=1",
    "latency.repeats=2",
    "trainer.enable_progress_bar=false",
]
START_TIMEOUT_S = 120


def train_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *args]


def start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**run_env(), "OMP_NUM_THREADS": "1"}  # one thread: the same float sums every time
    return subprocess.Popen(
        train_command(*args),
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before writing {path}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"no {path} after {START_TIMEOUT_S} s"
        time.sleep(0.02)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def comparable(results: dict) -> dict:
    """Everything a run computes, minus the wall-clock measurements."""
    return {
        "metrics": {k: v for k, v in results["metrics"].items() if not k.startswith("latency/")},
        "alpha": results["alpha"],
    }


# Slow: three runs (about 30 s); the SIGTERM-and-resume path is in the fast suite.
@pytest.mark.slow
def test_a_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(tmp_path):
    whole_dir, killed_dir = tmp_path / "whole", tmp_path / "killed"
    # The uninterrupted run and the doomed one run side by side (each on one thread).
    whole = start([*TINY_RUN, "logger=none", f"hydra.run.dir={whole_dir}"], tmp_path)
    doomed = start([*TINY_RUN, "logger=wandb", f"hydra.run.dir={killed_dir}"], tmp_path)
    wait_for(killed_dir / "checkpoints" / "last.ckpt", doomed)
    doomed.send_signal(signal.SIGKILL)
    assert finish(doomed).returncode == -signal.SIGKILL
    assert not (killed_dir / "results.json").exists()  # it really died before the end
    run_id = (killed_dir / WANDB_ID_FILE).read_text().strip()

    resumed = finish(start([f"resume={killed_dir}"], tmp_path))  # its overrides come back
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert finish(whole).returncode == 0
    expected = json.loads((whole_dir / "results.json").read_text())
    results = json.loads((killed_dir / "results.json").read_text())
    assert results["status"] == "ok"
    assert results["resumed_from"] == str(killed_dir / "checkpoints" / "last.ckpt")
    assert comparable(results) == comparable(expected)
    assert results["metrics"]["latency/ms"] > 0  # and measured again after resuming
    # The same W&B run, continued: every offline log in the folder carries the one id.
    assert results["wandb"]["id"] == run_id
    logs = sorted((killed_dir / "wandb").glob("offline-run-*"))
    assert len(logs) == 2 and all(log.name.endswith(run_id) for log in logs)
    assert read_offline_run(Path(results["wandb"]["dir"])).summary["status"] == "ok"


def stop_with_sigterm(tmp_path: Path) -> Path:
    """A run stopped by SIGTERM after its first epoch; checks what it leaves; its folder."""
    run_dir = tmp_path / "run"
    args = [*TINY_RUN, "logger=none", "trainer.max_epochs=20", f"hydra.run.dir={run_dir}"]
    process = start(args, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, process)
    saved_at_epoch_end = last.stat().st_mtime_ns
    process.send_signal(signal.SIGTERM)
    stopped = finish(process)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("lowbit:")]
    assert lines == [
        f"lowbit: error: run stopped by SIGTERM; continue it with: python train.py resume={run_dir}"
    ]
    assert "Traceback" not in stopped.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    # Saved again when the signal came (after the batch that was running), not only at the
    # end of the epoch before.
    assert last.stat().st_mtime_ns > saved_at_epoch_end
    assert torch.load(last, weights_only=True)["global_step"] >= 3
    return run_dir


def test_sigterm_saves_last_checkpoint_and_exits_with_a_line_saying_how_to_resume(tmp_path):
    stop_with_sigterm(tmp_path)


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_mid_epoch_resumes_to_the_end(tmp_path):
    run_dir = stop_with_sigterm(tmp_path)
    resumed = finish(start([f"resume={run_dir}", "trainer.max_epochs=3"], tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "ok"


def make_run_dir(tmp_path: Path, overrides: list[str]) -> Path:
    run_dir = tmp_path / "some run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {override}\n" for override in overrides)
    )
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run_dir


def test_resume_brings_back_the_runs_overrides_and_folder(tmp_path):
    run_dir = make_run_dir(
        tmp_path, ["quantizer=pact", "trainer.max_epochs=3", "+trainer.limit_train_batches=3"]
    )
    argv = ["--config-name", "train", f"resume={run_dir}", "trainer.max_epochs=10"]
    assert expand_resume(argv) == [
        "--config-name",
        "train",
        "quantizer=pact",
        "+trainer.limit_train_batches=3",  # kept; max_epochs given anew wins
        f"resume='{run_dir}'",
        "trainer.max_epochs=10",
        f"hydra.run.dir='{run_dir}'",
    ]
    assert expand_resume(["quantizer=dorefa"]) == ["quantizer=dorefa"]
    assert expand_resume(["resume=null"]) == ["resume=null"]


@pytest.mark.parametrize(
    "overrides, multirun, message",
    [
        (["resume={missing}"], False, "no such run dir"),
        (["resume={empty}"], False, "has no checkpoints/last.ckpt to continue from"),
        (["resume={run}"], True, "resume= continues one run: drop -m"),
        (["resume={run}", "ckpt_path=/x.ckpt"], False, "resume= and ckpt_path= both given"),
    ],
)
def test_resume_refuses_what_it_cannot_continue(tmp_path, overrides, multirun, message):
    run_dir = make_run_dir(tmp_path, [])
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "run": run_dir}
    with pytest.raises(ConfigError, match=message):
        resume_overrides([o.format(**paths) for o in overrides], multirun)


def test_ctrl_c_stops_after_the_current_batch_and_a_second_one_at_once():
    from types import SimpleNamespace

    from lowbit.checkpoints import SaveOnInterrupt

    callback = SaveOnInterrupt("unused")
    trainer = SimpleNamespace(world_size=1)
    callback.on_train_batch_end(trainer)  # nothing asked: training goes on
    callback._defer_interrupt(signal.SIGINT, None)  # the first Ctrl-C only takes note
    with pytest.raises(KeyboardInterrupt):
        callback.on_train_batch_end(trainer)  # ... and stops at the batch's end
    with pytest.raises(KeyboardInterrupt):
        callback._defer_interrupt(signal.SIGINT, None)  # the second one stops at once


def test_last_ckpt_holds_the_last_epoch_even_when_the_metric_stopped_improving(make_cfg):
    # Lightning's save_last writes last.ckpt only in an epoch that also saved a best checkpoint;
    # a run killed (SIGKILL, preemption) after its metric stopped improving then resumed from
    # an old epoch. A learning rate of ~0 keeps val/acc flat: only epoch 0 is ever "best".
    from lowbit.train import run

    cfg = make_cfg("logger=none", "trainer.max_epochs=3", "optimizer.lr=1e-12")
    run(cfg)
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    best = [p.name for p in folder.glob("epoch*.ckpt")]
    assert best == ["epoch000.ckpt"]  # the metric never improved after the first epoch
    last = torch.load(folder / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 2 and last["global_step"] == 3 * 2  # 3 epochs of 2 batches
    assert sorted(p.name for p in folder.iterdir()) == ["epoch000.ckpt", "last.ckpt"]
