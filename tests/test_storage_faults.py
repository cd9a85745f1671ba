"""Faults of the output folder during a run (issue 32): a full disk, a folder turned read-only.

Each fault gets one ``lowbit:`` line naming it, the file and what to do, exit status 4
(``lowbit.cli.EXIT_STORAGE_FAULT``), a results.json (or, when even that cannot be written, one
JSON line on stdout) that keeps every metric measured, and no half-written file. The faults
are real where the machine lets a test mount a small filesystem (root), and injected at the
write otherwise (``INJECTING``: the real temporary file, rename and clean-up of
``lowbit.storage.write_atomically``, with the OS error raised by the write itself).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_env
from test_resume import TINY_RUN, comparable, finish, start, wait_for

from lowbit.cli import EXIT_STORAGE_FAULT
from lowbit.storage import StorageFault, storage_fault_of, write_atomically, write_bytes_atomically

# Runs train.py as __main__ with one file's write failing: the ``after``-th write of a file
# named ``name`` (0: the first) raises OSError(code) from inside the write.
INJECTING = """
import errno, os, runpy, sys
from pathlib import Path
import lowbit.checkpoints, lowbit.storage

name, after, code = os.environ["FAULT_FILE"], int(os.environ["FAULT_AFTER"]), os.environ["FAULT"]
writes = {"count": 0}
real = lowbit.storage.write_atomically

def write_atomically(path, write):
    def failing(handle):
        write(handle)
        if Path(path).name == name:
            writes["count"] += 1
            if writes["count"] > after:
                raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    return real(path, failing)

lowbit.storage.write_atomically = write_atomically
lowbit.checkpoints.write_atomically = write_atomically
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_with_fault(
    args: list[str], tmp_path: Path, file: str, code: str = "ENOSPC", after: int = 0
) -> subprocess.Popen:
    env = {
        **run_env(),
        "OMP_NUM_THREADS": "1",
        "FAULT_FILE": file,
        "FAULT_AFTER": str(after),
        "FAULT": code,
    }
    return subprocess.Popen(
        [sys.executable, "-c", INJECTING, *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def lowbit_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("lowbit:")]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of ``write_atomically`` left behind."""
    return sorted(folder.rglob(".*.tmp"))


def test_a_full_disk_at_a_checkpoint_keeps_the_metrics_and_resume_ends_as_an_unbroken_run(
    tmp_path,
):
    whole_dir, faulty_dir = tmp_path / "whole", tmp_path / "faulty"
    whole = start([*TINY_RUN, "logger=none", f"hydra.run.dir={whole_dir}"], tmp_path)
    # the second epoch's last.ckpt does not fit: the first epoch's stays
    faulty = run_with_fault(
        [*TINY_RUN, "logger=none", f"hydra.run.dir={faulty_dir}"], tmp_path, "last.ckpt", after=1
    )
    stopped = finish(faulty)
    assert stopped.returncode == EXIT_STORAGE_FAULT, stopped.stderr[-3000:]
    last = faulty_dir / "checkpoints" / "last.ckpt"
    assert lowbit_lines(stopped.stderr) == [
        f"lowbit: error: the disk is full writing {last} (No space left on device); this run "
        f"needs about {line_space(stopped.stderr)}, then continue with: python train.py "
        f"resume={faulty_dir}"
    ]
    assert "Traceback" not in stopped.stderr
    results = json.loads((faulty_dir / "results.json").read_text())
    assert results["status"] == "failed" and results["failed_stage"] == "train"
    assert results["faults"] == [
        {"kind": "storage", "error": "the disk is full", "errno": "ENOSPC", "path": str(last)}
    ]
    assert {"val/acc", "val/loss", "train/loss"} <= set(results["metrics"])
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the first epoch's, whole
    assert leftovers(faulty_dir) == []

    resumed = finish(start([f"resume={faulty_dir}"], tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert finish(whole).returncode == 0
    expected = json.loads((whole_dir / "results.json").read_text())
    results = json.loads((faulty_dir / "results.json").read_text())
    assert results["status"] == "ok" and results["faults"] == []
    assert comparable(results) == comparable(expected)


def line_space(stderr: str) -> str:
    """The need and the free space as the line states them (measured, so read back)."""
    line = lowbit_lines(stderr)[0]
    return line.split("this run needs about ", 1)[1].split(", then continue", 1)[0]


FAST_RUN = [*TINY_RUN, "trainer.max_epochs=1", "logger=none"]


@pytest.mark.parametrize(
    ("file", "stage", "other_stages_metric"),
    [
        ("model_packed.safetensors", "pack", "export/top1_agreement"),
        ("model_int8.onnx", "export", "model/size_bytes"),
    ],
)
def test_a_full_disk_after_testing_keeps_every_metric_and_leaves_no_half_file(
    tmp_path, file, stage, other_stages_metric
):
    run_dir = tmp_path / "run"
    stopped = finish(run_with_fault([*FAST_RUN, f"hydra.run.dir={run_dir}"], tmp_path, file))
    assert stopped.returncode == EXIT_STORAGE_FAULT, stopped.stderr[-3000:]
    (line,) = lowbit_lines(stopped.stderr)
    assert line.startswith(f"lowbit: error: the disk is full writing {run_dir / file} ")
    assert f"resume={run_dir}" in line
    results = json.loads((run_dir / "results.json").read_text())
    assert results["failed_stage"] == stage
    assert [fault["path"] for fault in results["faults"]] == [str(run_dir / file)]
    # trained, tested, and the other stages measured
    assert {"val/acc", "test/acc", "latency/ms", other_stages_metric} <= set(results["metrics"])
    assert not (run_dir / file).exists()
    assert leftovers(run_dir) == []

    if stage != "pack":  # one resume shows it: the same path for every stage after testing
        return
    # resume=: no epoch is left, so it tests, measures, packs and exports again; what the run
    # measured before the fault (val/) stays
    resumed = finish(start([f"resume={run_dir}"], tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = json.loads((run_dir / "results.json").read_text())
    assert again["status"] == "ok" and (run_dir / file).is_file()
    kept = {k: v for k, v in results["metrics"].items() if k.startswith(("val/", "test/"))}
    assert {k: again["metrics"][k] for k in kept} == kept


def test_when_results_json_cannot_be_written_the_results_go_to_stdout(tmp_path):
    run_dir = tmp_path / "run"
    stopped = finish(
        run_with_fault([*FAST_RUN, f"hydra.run.dir={run_dir}"], tmp_path, "results.json")
    )
    assert stopped.returncode == EXIT_STORAGE_FAULT, stopped.stderr[-3000:]
    (line,) = lowbit_lines(stopped.stderr)
    assert "results are on stdout as one JSON line" in line
    assert not (run_dir / "results.json").exists() and leftovers(run_dir) == []
    printed = [json.loads(x) for x in stopped.stdout.splitlines() if x.startswith('{"')]
    assert len(printed) == 1
    assert printed[0]["failed_stage"] == "results" and printed[0]["status"] == "failed"
    assert {"val/acc", "test/acc", "model/size_bytes", "export/top1_agreement"} <= set(
        printed[0]["metrics"]
    )


def test_a_folder_turned_read_only_is_named_as_such(tmp_path):
    run_dir = tmp_path / "run"
    stopped = finish(
        run_with_fault([*FAST_RUN, f"hydra.run.dir={run_dir}"], tmp_path, "last.ckpt", "EROFS")
    )
    assert stopped.returncode == EXIT_STORAGE_FAULT, stopped.stderr[-3000:]
    (line,) = lowbit_lines(stopped.stderr)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line == (
        f"lowbit: error: the output folder is read-only writing {last} (Read-only file system); "
        f"make the folder writable again (or mount it read-write), then run the same command "
        f"again (no checkpoint was written)"
    )
    faults = json.loads((run_dir / "results.json").read_text())["faults"]
    assert [fault["errno"] for fault in faults] == ["EROFS"]


# -- the writes themselves ------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "last.ckpt"
    target.write_bytes(b"the previous checkpoint")

    def half_then_full(handle):
        handle.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageFault) as caught:
        write_atomically(target, half_then_full)
    assert caught.value.path == target and caught.value.needs_space
    assert target.read_bytes() == b"the previous checkpoint"
    assert leftovers(tmp_path) == []


def test_torch_save_s_wrapped_os_error_is_recognised_as_the_fault():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from inner
    except RuntimeError as outer:
        fault = storage_fault_of(outer)
    assert fault is not None and fault.kind == "the disk is full"
    assert storage_fault_of(RuntimeError("a bug")) is None
    assert storage_fault_of(OSError(errno.ENOENT, "missing")) is None  # not the storage's


SLOW_WRITER = """
import sys, time
from lowbit.storage import write_atomically

def slowly(handle):
    for _ in range(200):
        handle.write(b"n" * 1000)
        handle.flush()
        print("writing", flush=True)
        time.sleep(0.01)

write_atomically(sys.argv[1], slowly)
"""


def test_sigkill_in_the_middle_of_a_write_leaves_the_previous_file_whole(tmp_path):
    target = tmp_path / "results.json"
    write_bytes_atomically(target, b'{"status": "ok"}')
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    for _ in range(3):  # some of the new file is on disk
        assert writer.stdout.readline() == "writing\n"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert target.read_bytes() == b'{"status": "ok"}'


# -- checked before the run -----------------------------------------------------------------


def test_a_run_its_filesystem_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    import lowbit.cli
    import lowbit.storage

    monkeypatch.setattr(lowbit.storage, "free_bytes", lambda folder: 3_000_000)
    monkeypatch.setattr(lowbit.cli, "PREPARED", [])
    with pytest.raises(SystemExit) as exit_info:
        lowbit.cli.preflight(["logger=none", f"hydra.run.dir={tmp_path}/run"])
    assert exit_info.value.code == EXIT_STORAGE_FAULT
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"lowbit: error: not enough space: {tmp_path}/run has 3.0 MB free")
    # NIN (970 k parameters, 3.9 MB in float32) with SGD's momentum: 7.8 MB a checkpoint
    assert "checkpoints 3 x 7.8 MB, packed 3.9 MB, ONNX 5.8 MB" in line
    assert not (tmp_path / "run").exists()


# -- a real small filesystem, where the machine lets the test mount one ---------------------


def mount_small_filesystem(folder: Path, megabytes: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
        capture_output=True,
    )
    return mounted.returncode == 0


# Slow: two runs on a real filesystem (about 25 s); the same faults are injected in the fast suite.
@pytest.mark.slow
def test_a_real_disk_that_fills_mid_run_then_resume(tmp_path):
    disk = tmp_path / "disk"
    if not mount_small_filesystem(disk, 60):
        pytest.skip("cannot mount a small filesystem here (needs root); injected faults above")
    try:
        run_dir = disk / "run"
        args = [*TINY_RUN, "logger=none", f"hydra.run.dir={run_dir}"]
        process = start(args, tmp_path)
        wait_for(run_dir / "checkpoints" / "last.ckpt", process)
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler = disk / "filler"
        with filler.open("wb") as handle:  # leaves 200 kB: no checkpoint fits any more
            os.posix_fallocate(handle.fileno(), 0, free - 200_000)
        stopped = finish(process)
        assert stopped.returncode == EXIT_STORAGE_FAULT, stopped.stderr[-3000:]
        (line,) = lowbit_lines(stopped.stderr)
        assert line.startswith("lowbit: error: the disk is full writing ")
        assert line.endswith(f"then continue with: python train.py resume={run_dir}")
        assert json.loads((run_dir / "results.json").read_text())["metrics"]["val/acc"] >= 0
        assert leftovers(run_dir) == []
        filler.unlink()
        time.sleep(0.1)
        resumed = finish(start([f"resume={run_dir}"], tmp_path))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads((run_dir / "results.json").read_text())["status"] == "ok"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_run_folder_removed_mid_run_leaves_the_results_on_stdout(make_cfg, monkeypatch, capsys):
    import shutil

    import lowbit.train

    cfg = make_cfg("logger=none", "callbacks=none")
    run_dir = Path(cfg.paths.output_dir)
    # the scratch folder goes away after testing, before anything else is written
    monkeypatch.setattr(lowbit.train, "measure", lambda *args: shutil.rmtree(run_dir))
    lowbit.train.run(cfg)
    captured = capsys.readouterr()
    assert not run_dir.exists()
    printed = [json.loads(x) for x in captured.out.splitlines() if x.startswith('{"')]
    assert len(printed) == 1 and {"val/acc", "test/acc"} <= set(printed[0]["metrics"])
    assert f"lowbit: error: the run folder {run_dir} is gone" in captured.err
