"""Issue 32: the W&B service process killed mid-run. The run goes on to its end without W&B: one
warning line on stderr, every metric and the fault in results.json, exit status 6, no hang; and
a sweep's next job gets a W&B service of its own (lowbit.tracker_guard)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import FAST, ROOT
from test_wandb import offline_env
from wandb_offline import records

from lowbit.cli import EXIT_TRACKER_LOST
from lowbit.sweep.outcome import failure_line, job_outcomes, ok_line
from lowbit.tracker_guard import FAULT_KIND, GuardedWandbLogger, tracker_faults, warning_line
from lowbit.tracking import wandb_logger
from lowbit.wandb_log import finish_run

SERVICE = "wandb-core"
EPOCHS, BATCHES = 3, 4
RUN_TIMEOUT_S = 240  # a run that outlives this hangs: the test fails instead of waiting on it


def service_of(pid: int) -> psutil.Process | None:
    """The W&B service process among ``pid``'s descendants, or None while there is none."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    return next((child for child in children if child.name() == SERVICE), None)


def kill_service(pid: int) -> None:
    """SIGKILL ``pid``'s W&B service and wait until it is dead (a zombie until ``pid`` reaps it)."""
    service = service_of(pid)
    assert service is not None, f"no {SERVICE} process under {pid}"
    service.kill()
    deadline = time.monotonic() + 30
    while alive(service):
        assert time.monotonic() < deadline, f"{SERVICE} {service.pid} outlived SIGKILL"
        time.sleep(0.05)


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_run_whose_wandb_service_is_killed_goes_on_to_its_end(tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    stderr_path = tmp_path / "stderr.txt"
    args = [
        *(arg for arg in FAST if "limit_train_batches" not in arg),
        f"trainer.max_epochs={EPOCHS}",
        f"+trainer.limit_train_batches={BATCHES}",  # an epoch 2 long enough to be killed in
        f"hydra.run.dir={run_dir}",
    ]
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**offline_env(tmp_path / "home"), "OMP_NUM_THREADS": "1"},
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not last.is_file():  # epoch 1 is over: kill the service mid-training
                assert child.poll() is None, stderr_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no last.ckpt: epoch 1 never ended"
                time.sleep(0.1)
            kill_service(child.pid)
            status = child.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run hung after its W&B service was killed: {stderr_path.read_text()}")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    error = stderr_path.read_text()
    assert status == EXIT_TRACKER_LOST, error[-3000:]
    assert "Traceback" not in error, error[-3000:]  # neither Lightning's nor W&B's exit hook
    told = [line for line in error.splitlines() if line.startswith("lowbit:")]
    assert len(told) == 1 and "W&B service stopped at step" in told[0], told
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "ok", results.get("error")
    metrics = results["metrics"]
    for key in ("val/acc", "val/acc_best", "test/acc", "model/size_bytes", "latency/ms"):
        assert key in metrics, key
    assert "latency/int8_ms" in metrics  # the export ran after the fault too
    (fault,) = results["faults"]
    assert fault["kind"] == FAULT_KIND and "Connection" in fault["error"], fault
    # lost while training (the failure came from Lightning's logging, not from the end)
    assert BATCHES <= fault["at_step"] < EPOCHS * BATCHES, fault
    # `wandb sync` is offered when the service left records on disk (it buffers its writes)
    (log,) = Path(fault["wandb_dir"]).glob("run-*.wandb")
    offered = f"`wandb sync {fault['wandb_dir']}`" in told[0]
    assert offered == any(records(log)), (told[0], log.stat().st_size)


@pytest.fixture
def own_service(monkeypatch, tmp_path):
    """This test process's W&B settings, without a service inherited from the environment."""
    for key, value in offline_env(tmp_path / "home").items():
        if key.startswith(("WANDB", "NETRC")):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


def test_a_sweeps_next_job_gets_a_fresh_wandb_service(tmp_path, capsys, own_service):
    """In a multirun the jobs share one process: the job after the fault logs to W&B again."""
    first = wandb_logger(project="p", name="job0", save_dir=str(tmp_path / "job0"))
    first.log_metrics({"val/acc": 0.5}, step=1)
    kill_service(os.getpid())
    first.log_metrics({"val/acc": 0.6}, step=2)
    first.finalize("success")
    record = finish_run(first, {"val/acc": 0.6}, "ok")
    told = capsys.readouterr().err.strip().splitlines()
    assert len(told) == 1 and "at step 2" in told[0], told
    assert tracker_faults([first])[0]["wandb_dir"] == record["dir"]

    second = wandb_logger(project="p", name="job1", save_dir=str(tmp_path / "job1"))
    second.log_metrics({"val/acc": 0.7}, step=1)
    finish_run(second, {"val/acc": 0.7}, "ok")
    assert not second.lost and service_of(os.getpid()) is not None
    assert capsys.readouterr().err == ""


def test_the_guard_runs_a_call_until_the_first_failure(tmp_path, capsys):
    logger = GuardedWandbLogger(project="p", save_dir=str(tmp_path), mode="disabled")
    calls = []

    def dead(value):
        calls.append(value)
        raise ConnectionResetError("Connection lost")

    assert logger.guarded(calls.append, 1) is None and not logger.lost
    logger.guarded(dead, 2)
    logger.guarded(dead, 3)  # lost: not called again
    assert calls == [1, 2]
    assert tracker_faults([logger]) == [
        {
            "kind": FAULT_KIND,
            "error": "ConnectionResetError: Connection lost",
            "at_step": 0,
            "wandb_dir": None,
        }
    ]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lowbit: warning: the W&B service stopped at step 0")
    assert "results.json keeps every metric" in line


def test_wandb_sync_is_offered_only_for_what_the_service_wrote(tmp_path):
    fault = {"kind": FAULT_KIND, "error": "EOFError", "at_step": 9, "wandb_dir": str(tmp_path)}
    log = tmp_path / "run-abc.wandb"
    log.write_bytes(b":W&B" + bytes(3))  # the header alone: the service buffered the rest
    assert "W&B wrote nothing of this run to disk" in warning_line(fault)
    log.write_bytes(b":W&B" + bytes(3) + b"a record")
    assert f"`wandb sync {tmp_path}` uploads what W&B wrote before" in warning_line(fault)
    assert "a W&B call failed at step 9" in warning_line(fault, service_gone=False)


def test_the_end_of_sweep_line_names_the_job_that_lost_its_tracker(tmp_path):
    for number, faults in [(0, [{"kind": FAULT_KIND, "at_step": 7}]), (1, [])]:
        job_dir = tmp_path / f"{number}_nin-fp32-w32a32g32-digits"
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text("[]\n")
        (job_dir / "results.json").write_text(json.dumps({"status": "ok", "faults": faults}))
    outcomes = job_outcomes(tmp_path)
    assert failure_line(outcomes) is None  # both jobs have every metric: ok
    assert ok_line(outcomes, tmp_path).startswith(
        "lowbit: 2 of 2 jobs ok; 1 went on past a fault: 0_nin-fp32-w32a32g32-digits (tracker); "
    )
