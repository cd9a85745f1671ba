"""A multirun's outcome, read from its jobs' results.json files, and the sweep's exit status.

Jobs of a sweep never stop it (``lowbit.cli.main_job`` records a failure and returns), so the
sweep's verdict comes at its end, from what the jobs wrote into the sweep folder. Reading files
rather than Hydra's return values works for every launcher: jobs that ran in this process, in
joblib's worker processes or on a Slurm cluster all leave a results.json behind.

``SweepOutcome`` is a Hydra callback (``hydra.callbacks`` in conf/train.yaml): after the last job
it prints one line and, when any job failed, exits with status 1:

    lowbit: 1 of 9 jobs failed: 4_nin-dorefa-w4a4g32-digits (diverged)

A job that went on past a fault (results.json's ``faults``, such as a W&B service that died:
``lowbit.tracker_guard``) is ok, and named in that line with the kinds of its faults.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from lowbit.results import RESULTS_FILE, STATUS_OK, read_results

HYDRA_JOB_MARKER = Path(".hydra") / "overrides.yaml"  # Hydra writes it into every job's folder
EXIT_JOBS_FAILED = 1
# Files written this long before the sweep started still count as this sweep's (clock steps).
CLOCK_SLACK_S = 1.0


@dataclass(frozen=True)
class JobOutcome:
    name: str  # the job's folder, e.g. 4_nin-dorefa-w4a4g32-digits
    status: str  # ok, failed, diverged, or "no results.json" for a job that died unrecorded
    faults: tuple[str, ...] = ()  # the kinds of the faults it went on past ("tracker")

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def job_outcomes(sweep_dir: Path, since: float = 0.0) -> list[JobOutcome]:
    """One outcome per job folder written since ``since``: earlier sweeps into the same folder
    are left out, and a job whose config is fresh but whose results.json is missing or older
    died unrecorded. A job folder is one with Hydra's ``.hydra/`` or a results.json.
    """
    since -= CLOCK_SLACK_S
    fresh = lambda path: path.is_file() and path.stat().st_mtime >= since  # noqa: E731
    job_dirs = {
        marker.parent.parent
        for marker in sweep_dir.glob(f"**/{HYDRA_JOB_MARKER.as_posix()}")
        if fresh(marker)
    }
    job_dirs |= {
        results.parent for results in sweep_dir.glob(f"**/{RESULTS_FILE}") if fresh(results)
    }
    outcomes = []
    for job_dir in sorted(job_dirs, key=job_order):
        results = job_dir / RESULTS_FILE
        record = read_results(results) if fresh(results) else {"status": f"no {RESULTS_FILE}"}
        outcomes.append(
            JobOutcome(
                job_dir.relative_to(sweep_dir).as_posix(),
                str(record.get("status", "unknown")),
                tuple(str(fault.get("kind")) for fault in record.get("faults") or ()),
            )
        )
    return outcomes


def job_order(job_dir: Path) -> tuple[int, str]:
    """Hydra's job number first (``10_`` after ``9_``), then the name."""
    number = job_dir.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else sys.maxsize, job_dir.as_posix())


def fault_note(outcomes: list[JobOutcome]) -> str:
    """``; 1 went on past a fault: 0_nin-...-digits (tracker)``, or "" when none did."""
    faulted = [o for o in outcomes if o.faults]
    if not faulted:
        return ""
    names = ", ".join(f"{o.name} ({', '.join(o.faults)})" for o in faulted)
    return f"; {len(faulted)} went on past a fault: {names}"


def ok_line(outcomes: list[JobOutcome], sweep_dir: Path) -> str:
    return (
        f"lowbit: {len(outcomes)} of {len(outcomes)} jobs ok{fault_note(outcomes)}; compare "
        f"them with python scripts/report.py {sweep_dir}"
    )


def failure_line(outcomes: list[JobOutcome]) -> str | None:
    failed = [o for o in outcomes if not o.ok]
    if not failed:
        return None
    names = ", ".join(f"{o.name} ({o.status})" for o in failed)
    return f"lowbit: {len(failed)} of {len(outcomes)} jobs failed: {names}{fault_note(outcomes)}"


class SweepOutcome(Callback):
    """At the end of a multirun: one line with the outcome; exit status 1 if any job failed."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcomes = job_outcomes(sweep_dir, since=self.started)
        line = failure_line(outcomes)
        if line is None:
            print(ok_line(outcomes, sweep_dir), flush=True)
            return
        sys.stdout.flush()
        print(line, file=sys.stderr, flush=True)
        # SystemExit passes through Hydra's callback guard (it catches Exception only).
        raise SystemExit(EXIT_JOBS_FAILED)
