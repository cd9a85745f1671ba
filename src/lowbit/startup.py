"""How long a run takes to start: seconds from the process's start to its first training step.

The start is the operating system's record of when the process began (``/proc/self/stat`` and
the boot time in ``/proc/stat`` on Linux), so the figure includes the interpreter, the imports
of torch, Lightning and Hydra, the command line's checks and every part the run builds. Where
``/proc`` is missing (macOS, Windows) it counts from the import of this module instead, which
comes right after Hydra's, and says so in results.json (``startup.from``); a job of a multirun
counts from its own start (``job start``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

IMPORTED_AT = time.time()


def process_start_time() -> float | None:
    """When this process started, in seconds since the epoch, or None without Linux's /proc."""
    try:
        stat = Path("/proc/self/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    # The command name (field 2) may hold spaces: the fields after its closing parenthesis,
    # where starttime is field 22 of the whole line, in clock ticks since boot (proc(5)).
    fields = stat.rsplit(")", 1)[1].split()
    return boot + int(fields[22 - 3]) / os.sysconf("SC_CLK_TCK")


class FirstStepTime(pl.Callback):
    """Records the seconds from the process's start to the first training batch of this fit
    (``record``: what results.json keeps under ``startup``). A job of a multirun shares its
    process with the jobs before it, so it counts from ``job_started_at``, its own start."""

    def __init__(self, job_started_at: float | None = None) -> None:
        started = process_start_time()
        if job_started_at is not None:
            self.origin, self.started_at = "job start", job_started_at
        elif started is not None:
            self.origin, self.started_at = "process start", started
        else:
            self.origin, self.started_at = "lowbit.startup import", IMPORTED_AT
        self.first_step_s: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_s is None:
            self.first_step_s = round(time.time() - self.started_at, 2)

    def record(self) -> dict[str, Any] | None:
        if self.first_step_s is None:  # post-training quantization, or a resumed finished fit
            return None
        return {"first_step_s": self.first_step_s, "from": self.origin}
