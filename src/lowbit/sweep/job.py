"""One job of a multirun: what it shares with its sweep, and what it must not share.

A job of a sweep differs from a single run in four ways, all settled here before ``run`` starts:

- its W&B ``group`` defaults to the sweep folder's name (``2026-11-01_12-00-00_bits_grid``:
  start time and preset), so the dashboard shows one sweep as one group; ``job_type`` is
  ``sweep``;
- with the joblib launcher, jobs run side by side, so each takes an equal share of the CPU
  cores instead of all of them: ``threads = max(1, cores // parallel jobs)``, where the
  parallel jobs are joblib's ``n_jobs`` (-1: one per core, -2: one fewer, as joblib counts);
  in a Slurm job (submitit) the share is the allocation's ``SLURM_CPUS_PER_TASK``;
  an explicit ``threads=N`` always wins;
- with the joblib launcher and a GPU trainer on a machine with several GPUs, each job holds one
  GPU for its whole run (a lock file per GPU in the sweep folder), so no two jobs share one;
- a job that fails is recorded (results.json, a W&B tag) and the sweep goes on (``lowbit.cli``).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, open_dict

SWEEP_JOB_TYPE = "sweep"
GPU_LOCKS_DIR = ".gpu_locks"


def hydra_settings():
    """Hydra's own config of the current job, or None outside ``@hydra.main``."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def in_multirun() -> bool:
    from hydra.types import RunMode

    settings = hydra_settings()
    return settings is not None and settings.mode == RunMode.MULTIRUN


def uses_joblib(settings) -> bool:
    return str(settings.launcher.get("_target_", "")).endswith("JoblibLauncher")


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parallel_jobs(n_jobs: int, cores: int) -> int:
    """How many jobs joblib runs at once for its ``n_jobs`` setting (negative counts from cores)."""
    if n_jobs == 0:
        raise ValueError("hydra.launcher.n_jobs=0 runs nothing: use a positive count or -1")
    return n_jobs if n_jobs > 0 else max(cores + 1 + n_jobs, 1)


def threads_per_job(cores: int, jobs_at_once: int) -> int:
    """An equal share of the cores, at least one: 2 cores, 2 jobs -> 1 thread each."""
    return max(1, cores // max(1, jobs_at_once))


def job_threads(settings) -> int | None:
    """This job's CPU threads when it shares the machine or has an allocation, else None."""
    if uses_joblib(settings):
        cores = cpu_cores()
        return threads_per_job(cores, parallel_jobs(int(settings.launcher.n_jobs), cores))
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm_cpus and slurm_cpus.isdigit():
        return int(slurm_cpus)
    return None


def settle_job_settings(cfg: DictConfig) -> None:
    """Fill in the sweep-dependent settings the user left null (see the module docstring)."""
    settings = hydra_settings()
    with open_dict(cfg):
        if cfg.get("group") is None:
            cfg.group = Path(str(settings.sweep.dir)).name
        if cfg.get("job_type") is None:
            cfg.job_type = SWEEP_JOB_TYPE
        if cfg.get("threads") is None:
            cfg.threads = job_threads(settings)


def wants_gpu(cfg: DictConfig) -> bool:
    return str(cfg.trainer.get("accelerator", "cpu")) in ("gpu", "cuda")


@contextmanager
def hold_free_device(lock_dir: Path, count: int, poll_s: float = 2.0) -> Iterator[int]:
    """Hold the first of ``count`` devices that no other process holds; wait while all are held.

    ``flock`` locks vanish with the process that held them, so a crashed job frees its GPU.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(count):
            handle = open(lock_dir / f"gpu{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)


@contextmanager
def job_device(cfg: DictConfig) -> Iterator[None]:
    """With joblib and several GPUs, run this job on a GPU no other job of the sweep is using."""
    settings = hydra_settings()
    if not (settings is not None and uses_joblib(settings) and wants_gpu(cfg)):
        yield
        return
    import torch

    count = torch.cuda.device_count()
    if count < 2 or cfg.trainer.get("devices") not in (1, "1", None):
        yield  # one GPU, or the user placed the job: nothing to share out
        return
    with hold_free_device(Path(str(settings.sweep.dir)) / GPU_LOCKS_DIR, count) as index:
        with open_dict(cfg):
            cfg.trainer.devices = [index]
        yield
