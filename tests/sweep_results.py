"""Synthetic sweep folders: results.json files as lowbit.train writes them, with chosen numbers.

For the report and notebook tests, which read results only: the numbers are picked so that the
Pareto fronts and the table can be checked by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_job(
    sweep_dir: Path,
    number: int,
    quantizer: str,
    wbits: int,
    abits: int,
    gbits: int = 32,
    acc: float | None = None,
    size: float | None = None,
    latency: float | None = None,
    int8_latency: float | None = None,
    bops: float | None = None,
    status: str = "ok",
    model: str = "nin",
    seed: int | None = None,
    allocation: str | None = None,
    **extra_metrics: float | str,
) -> Path:
    """One job folder ``<number>_<run name>`` with its results.json; returns the folder.
    ``seed`` None leaves the seed out, as runs did before results.json recorded it.
    ``allocation``: a mixed-precision run trained from that allocation file (``quant.allocation``
    and the ``allocation`` record, as lowbit.train writes them).

    A metric given as None is left out of results.json, as training leaves out what it did not
    measure: ``int8_latency`` in a run whose export failed, ``acc`` in a detection run."""
    run_name = (
        f"{model}-{quantizer}-{'mixed' if allocation else f'w{wbits}'}a{abits}g{gbits}-digits"
    )
    job_dir = sweep_dir / f"{number}_{run_name}"
    (job_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(f"- quant.wbits={wbits}\n")
    metrics: dict[str, Any] = dict(extra_metrics)
    if status == "ok":
        measured = {
            "val/acc_best": acc,
            "test/acc": acc,
            "model/size_bytes": size,
            "model/size_fp32_bytes": 3_879_288,
            "model/compression": 3_879_288 / size,
            "latency/ms": latency,
            "latency/int8_ms": int8_latency,
            "model/bops": bops,
        }
        metrics.update({k: v for k, v in measured.items() if v is not None})
    payload = {
        "status": status,
        "run_name": run_name,
        "model": model,
        "dataset": "digits",
        "run_dir": str(job_dir),
        "metrics": metrics,
        "duration_s": 12.5,
        "quant": {"quantizer": quantizer, "wbits": wbits, "abits": abits, "gbits": gbits},
    }
    if allocation is not None:
        payload["quant"]["allocation"] = allocation
        payload["allocation"] = {
            "path": allocation,
            "quantizer": quantizer,
            "wbits": {"features.1.0": 2, "features.2.0": 4},
        }
    if seed is not None:
        payload["seed"] = seed
    if status != "ok":
        payload["error"] = "loss is nan at step 3"
    (job_dir / "results.json").write_text(json.dumps(payload, indent=2))
    return job_dir


def example_sweep(sweep_dir: Path) -> Path:
    """Six jobs: FP32, DoReFa at W=A=2/4/8, PACT at 4, and one diverged DoReFa job. BOPs are
    1e6 MACs x wbits x abits; FP32 (no int8 form) and DoReFa w2 (its export failed) have no int8
    latency, so their fake-quant latency stands in.

    Accuracy vs size front, cheapest first: dorefa w2 (0.80), dorefa w4 (0.90), pact w4 (0.93,
    100 bytes larger), fp32 (0.95); dorefa w8 (0.92) is larger and less accurate than pact w4.
    Accuracy vs latency front (int8, else fake-quant): dorefa w8 (int8 0.48 ms), pact w4 (int8
    0.60 ms), fp32 (fake-quant 3.0 ms); by fake-quant latency alone it would be fp32 alone.
    Accuracy vs BOPs front: dorefa w2 (4e6), pact w4 (16e6, as many as dorefa w4 and more
    accurate), fp32 (1.024e9); dorefa w8 (64e6, 0.92) is costlier and less accurate than pact w4.
    """
    write_job(
        sweep_dir, 0, "fp32", 32, 32, acc=0.95, size=3_879_288, latency=3.0, bops=1_024_000_000
    )
    write_job(sweep_dir, 1, "dorefa", 2, 2, acc=0.80, size=270_000, latency=5.0, bops=4_000_000)
    write_job(
        sweep_dir,
        2,
        "dorefa",
        4,
        4,
        acc=0.90,
        size=508_000,
        latency=5.5,
        int8_latency=0.55,
        bops=16_000_000,
    )
    write_job(
        sweep_dir,
        3,
        "dorefa",
        8,
        8,
        acc=0.92,
        size=982_000,
        latency=4.0,
        int8_latency=0.48,
        bops=64_000_000,
    )
    write_job(
        sweep_dir,
        4,
        "pact",
        4,
        4,
        acc=0.93,
        size=508_100,
        latency=6.0,
        int8_latency=0.60,
        bops=16_000_000,
    )
    write_job(sweep_dir, 5, "dorefa", 4, 2, status="diverged")
    return sweep_dir


# The seeded study's validation accuracies, by (quantizer, bits), seeds 0, 1, 2. Welch's 95% test
# (checked by hand in test_report.py): PACT beats DoReFa at 2 bits (+5.0 points), not at 4 (+0.5,
# within noise); 4 bits beat 2 for both quantizers.
SEEDED_ACCURACIES = {
    ("dorefa", 2): [0.80, 0.82, 0.84],
    ("dorefa", 4): [0.90, 0.91, 0.92],
    ("pact", 2): [0.85, 0.87, 0.89],
    ("pact", 4): [0.905, 0.915, 0.925],
}


def seeded_sweep(sweep_dir: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    """DoReFa and PACT at W = A = 2 and 4 bits, each with every seed: 12 jobs, 4 configurations.
    Sizes and BOPs follow the bits; the int8 latency differs from seed to seed, as measured
    latencies do."""
    number = 0
    for (quantizer, bits), accuracies in SEEDED_ACCURACIES.items():
        for seed in seeds:
            write_job(
                sweep_dir,
                number,
                quantizer,
                bits,
                bits,
                acc=accuracies[seed],
                size=30_000 * bits + 200_000,
                latency=5.0,
                int8_latency=0.5 + 0.01 * seed,
                bops=1_000_000 * bits * bits,
                seed=seed,
            )
            number += 1
    return sweep_dir
