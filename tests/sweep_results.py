"""Synthetic sweep folders: results.json files as lowbit.train writes them, with chosen numbers.

For the report and notebook tests, which read results only: the numbers are picked so that the
Pareto fronts and the table can be checked by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_job(sweep_dir: Path, number: int, quantizer: str, wbits: int, abits: int,
              gbits: int = 32, acc: float | None = None, size: float | None = None,
              latency: float | None = None, status: str = "ok", model: str = "nin",
              **extra_metrics: float) -> Path:
    """One job folder ``<number>_<run name>`` with its results.json; returns the folder."""
    run_name = f"{model}-{quantizer}-w{wbits}a{abits}g{gbits}-digits"
    job_dir = sweep_dir / f"{number}_{run_name}"
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(f"- quant.wbits={wbits}\n")
    metrics: dict[str, Any] = dict(extra_metrics)
    if status == "ok":
        metrics.update({"val/acc_best": acc, "test/acc": acc, "model/size_bytes": size,
                        "model/size_fp32_bytes": 3_879_288,
                        "model/compression": 3_879_288 / size, "latency/ms": latency})
    payload = {"status": status, "run_name": run_name, "model": model, "dataset": "digits",
               "run_dir": str(job_dir), "metrics": metrics, "duration_s": 12.5,
               "quant": {"quantizer": quantizer, "wbits": wbits, "abits": abits,
                         "gbits": gbits}}
    if status != "ok":
        payload["error"] = "loss is nan at step 3"
    (job_dir / "results.json").write_text(json.dumps(payload, indent=2))
    return job_dir


def example_sweep(sweep_dir: Path) -> Path:
    """Six jobs: FP32, DoReFa at W=A=2/4/8, PACT at 4, and one diverged DoReFa job.

    Accuracy vs size front, cheapest first: dorefa w2 (0.80), dorefa w4 (0.90), pact w4 (0.93,
    100 bytes larger), fp32 (0.95); dorefa w8 (0.92) is larger and less accurate than pact w4.
    Accuracy vs latency front: fp32 alone (the fastest and the most accurate).
    """
    write_job(sweep_dir, 0, "fp32", 32, 32, acc=0.95, size=3_879_288, latency=3.0)
    write_job(sweep_dir, 1, "dorefa", 2, 2, acc=0.80, size=270_000, latency=5.0)
    write_job(sweep_dir, 2, "dorefa", 4, 4, acc=0.90, size=508_000, latency=5.5)
    write_job(sweep_dir, 3, "dorefa", 8, 8, acc=0.92, size=982_000, latency=4.0)
    write_job(sweep_dir, 4, "pact", 4, 4, acc=0.93, size=508_100, latency=6.0)
    write_job(sweep_dir, 5, "dorefa", 4, 2, status="diverged")
    return sweep_dir
