"""Seconds from ``python train.py`` to the first training step, for one or more source trees.

    python scripts/startup_time.py --tree /tmp/before --tree . --repeats 5 \\
        -- quantizer=dorefa quant.wbits=4 quant.abits=4

Each repeat runs the command once in every tree, in turn (A, B, A, B, ...), so that a load on
the machine that comes and goes falls on all of them alike; the figure is results.json's
``startup.first_step_s`` (``lowbit.startup``), and the median per tree is printed as CSV
(tree, repeats, median, min, max). Each run trains one batch and validates one, with the test,
measuring, packing and export stages left to run as they do by default, and no logger.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SHORT_RUN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=1",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "logger=none",
]


def first_step_seconds(tree: Path, overrides: list[str], run_dir: Path) -> float:
    """One run of ``tree``'s train.py with the tree's own source first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    completed = subprocess.run(
        [sys.executable, "train.py", *SHORT_RUN, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise SystemExit(f"startup_time: {tree}: train.py failed: {completed.stderr[-500:]}")
    return json.loads((run_dir / "results.json").read_text())["startup"]["first_step_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, action="append", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, after --")
    args = parser.parse_args(argv)
    trees = [tree.resolve() for tree in args.tree]
    for tree in trees:
        if not (tree / "train.py").is_file():
            parser.error(f"{tree} has no train.py")
    seconds: dict[Path, list[float]] = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for index, tree in enumerate(trees):
                run_dir = Path(scratch) / f"{repeat}_{index}"
                seconds[tree].append(first_step_seconds(tree, args.overrides, run_dir))
    writer = csv.writer(sys.stdout)
    writer.writerow(["tree", "overrides", "repeats", "median_s", "min_s", "max_s"])
    for tree, values in seconds.items():
        writer.writerow(
            [
                tree,
                " ".join(args.overrides),
                len(values),
                round(statistics.median(values), 2),
                min(values),
                max(values),
            ]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
