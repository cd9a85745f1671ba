"""One CSV row per finished run: how far its integer export and its model part, layer by layer.

    python scripts/parity_summary.py RUN_DIR [RUN_DIR ...] [--images N] > parity.csv

For each run the integer ONNX model is written anew and compared with the PyTorch model in
evaluation on the first N val images (``lowbit.export.onnx_run.parity_run``, what
``scripts/export.py --parity`` prints per layer). Columns: the run's model, quantizer, bits and
seed, its ``arithmetic`` version, how many layers have an integer input and how many of those
differ anywhere, the largest share of differing codes and the largest difference in steps (with
the layer), how many codes were compared, and the run's own ``val/acc_best`` and
``export/top1_agreement`` (the whole val set, measured by the run's export stage), and how many
layers' worst-case accumulation bound reaches 2^24 (``lowbit.quant.integer.worst_case_bounds``:
there evaluation accumulates in float64 when a batch needs it) with the largest bound. Bad input
is one line on stderr and exit status 2, before any work.
"""

from __future__ import annotations

import argparse
import csv
import sys

from lowbit.cli import fail
from lowbit.errors import ConfigError
from lowbit.export.onnx_graph import UnsupportedModel
from lowbit.export.onnx_run import (
    PARITY_IMAGES,
    THREADS,
    finished_run_dir,
    load_run_model,
    parity_run,
)
from lowbit.quant.integer import FLOAT32_EXACT, worst_case_bounds
from lowbit.results import RESULTS_FILE, read_results

COLUMNS = [
    "run",
    "model",
    "quantizer",
    "wbits",
    "abits",
    "seed",
    "arithmetic",
    "integer_layers",
    "layers_differing",
    "largest_share_differing",
    "at_layer",
    "largest_difference_steps",
    "codes_compared",
    "images",
    "val_acc_best",
    "top1_agreement",
    "layers_past_float32",
    "largest_bound",
]


def summary(run_dir, images: int, threads: int) -> dict:
    rows = parity_run(run_dir, threads=threads, images=images)
    bounds = worst_case_bounds(load_run_model(run_dir)[0])
    record = read_results(run_dir / RESULTS_FILE)
    compared = [row for row in rows if row["differ"] is not None]
    worst = max(compared, key=lambda row: row["differ"], default=None)
    metrics = record.get("metrics") or {}
    quant = record.get("quant") or {}
    return {
        "run": run_dir.name,
        "model": record.get("model"),
        "quantizer": quant.get("quantizer"),
        "wbits": quant.get("wbits"),
        "abits": quant.get("abits"),
        "seed": record.get("seed"),
        "arithmetic": (record.get("arithmetic") or {}).get("version", 1),
        "integer_layers": len(compared),
        "layers_differing": sum(1 for row in compared if row["differ"]),
        "largest_share_differing": f"{worst['differ']:.6f}" if worst else "",
        "at_layer": worst["layer"] if worst and worst["differ"] else "",
        "largest_difference_steps": max((row["max_steps"] for row in compared), default=""),
        "codes_compared": sum(row.get("codes", 0) for row in compared),
        "images": rows[0].get("images", "") if rows else "",
        "val_acc_best": metrics.get("val/acc_best", ""),
        "top1_agreement": metrics.get("export/top1_agreement", ""),
        "layers_past_float32": sum(bound >= FLOAT32_EXACT for bound in bounds.values()),
        "largest_bound": max(bounds.values(), default=""),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="finished runs' folders")
    parser.add_argument("--images", type=int, default=PARITY_IMAGES)
    parser.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args(argv)
    if args.images < 1 or args.threads < 1:
        fail("--images and --threads must be >= 1")
    try:
        run_dirs = [finished_run_dir(path) for path in args.run_dirs]
        writer = csv.DictWriter(sys.stdout, COLUMNS)
        writer.writeheader()
        for run_dir in run_dirs:
            writer.writerow(summary(run_dir, args.images, args.threads))
            sys.stdout.flush()
    except (ConfigError, UnsupportedModel) as error:
        fail(str(error))


if __name__ == "__main__":
    main(sys.argv[1:])
