"""Export a finished run to integer and float ONNX, measure them, record the metrics.

    python scripts/export.py outputs/runs/<date>_<time>_<name> [--threads 2]
    python scripts/export.py --parity outputs/runs/<date>_<time>_<name>

Writes RUN_DIR/model_int8.onnx and RUN_DIR/model_fp32.onnx, prints one line per metric
(``latency/fp32_ms`` PyTorch eager FP32, ``latency/int8_ms`` ONNX Runtime int8, both batch 1
with ``latency/export_threads`` threads; ``export/top1_agreement`` on the val set, ...) and merges
them into RUN_DIR/results.json and into the run's W&B summary: the same W&B run, reopened by its
id (RUN_DIR/wandb_id.txt) in the mode it ran in, offline as a new offline-run-* folder with
that id for ``wandb sync``, with the new model_int8.onnx as its artifact's next version
(``--no-wandb`` skips it; a run without W&B has nothing to update).
``--parity`` instead prints, layer by layer, the share of
activation codes where ONNX Runtime and the PyTorch model in evaluation (integer arithmetic,
``lowbit.quant.integer``) differ and the largest difference in steps (``lowbit.export.parity``),
on the first ``--images`` val images, then the rows as one JSON line. Bad input (missing dir,
unfinished run, no weights) is one line on stderr and exit status 2, before any work
(``lowbit.export.onnx_run``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lowbit.cli import fail
from lowbit.errors import ConfigError
from lowbit.export.onnx_graph import UnsupportedModel
from lowbit.export.onnx_run import PARITY_IMAGES, THREADS, export_run, finished_run_dir, parity_run
from lowbit.export.parity import parity_table
from lowbit.wandb_log import recorded_run, update_run_summary


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run's folder (holds results.json)")
    parser.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"torch and ONNX Runtime threads for the latencies (default {THREADS})",
    )
    parser.add_argument(
        "--parity",
        action="store_true",
        help=f"print where the integer export and the fake-quant model differ, "
        f"layer by layer, on the first {PARITY_IMAGES} val images",
    )
    parser.add_argument(
        "--images",
        type=int,
        default=PARITY_IMAGES,
        help=f"--parity: how many val images, from the first (default {PARITY_IMAGES}; "
        f"more than the val set has: all of them)",
    )
    parser.add_argument(
        "--no-wandb", action="store_true", help="leave the run's W&B summary as it is"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    if args.images < 1:
        fail(f"--images must be >= 1, got {args.images}")
    try:
        finished_run_dir(args.run_dir)
        if args.parity:
            rows = parity_run(args.run_dir, threads=args.threads, images=args.images)
            print(parity_table(rows))
            print(json.dumps({"parity": rows}))
            return
        metrics = export_run(args.run_dir, threads=args.threads)
    except (ConfigError, UnsupportedModel) as error:
        fail(str(error))
    for key, value in metrics.items():
        print(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    run_dir = Path(args.run_dir).expanduser().resolve()
    recorded = None if args.no_wandb else recorded_run(run_dir)
    if recorded is not None:
        print(f"wandb summary updated: {update_run_summary(run_dir, recorded, metrics)}")


if __name__ == "__main__":
    main(sys.argv[1:])
