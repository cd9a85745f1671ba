"""Do the sensitivity scores rank the layers? Each method's score against the measured drop.

    python scripts/sensitivity_ranking.py outputs/study29/fp32-nin-s0 outputs/study29/fp32-nin-s1 \
        --runs outputs/study29 --bits 2 --out docs/results/mixed_precision/nin_digits

For each source run (a trained float model that ``scripts/allocate.py`` scored: its
``allocations/*.yaml`` keep every layer's score by width), the runs under ``--runs`` that
started from it (``init=SOURCE``) with exactly one layer's weights at ``--bits`` and everything
else float are that layer's measured drop; the one that started from it with every layer float
is the reference. The drop is the reference's accuracy less the layer's, on the test split and
on the val split, so both are measured the same way (post-training, ``trainer.max_epochs=0``).

Writes ``OUT_single_layer.csv`` (source seed, layer, each method's score at ``--bits``, the
accuracies and drops) and ``OUT_spearman.csv`` (per method and seed, Spearman's rank
correlation of the score with each drop and its p-value, ``scipy.stats.spearmanr``; a row
``mean`` per method averages the seeds' correlations). No training code is imported.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from scipy.stats import spearmanr

SPLITS = ("test", "val")


def scores_by_method(source: Path, bits: int) -> dict[str, dict[str, float]]:
    """{method: {layer: score at ``bits``}} from the allocation files ``allocate.py`` wrote."""
    found: dict[str, dict[str, float]] = {}
    for path in sorted((source / "allocations").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        if not isinstance(body, dict) or "scores" not in body:
            continue
        found.setdefault(
            str(body["method"]),
            {layer: float(s["by_width"][bits]) for layer, s in body["scores"].items()},
        )
    return found


def single_layer(payload: dict[str, Any], bits: int) -> str | None:
    """The one layer at ``bits`` of a run whose every other layer is float; "" for the all-float
    reference; None for any other run."""
    quant = payload.get("quant") or {}
    if any(quant.get(k) != 32 for k in ("wbits", "abits", "first_layer_bits", "last_layer_bits")):
        return None
    overrides = quant.get("overrides") or {}
    if not overrides:
        return ""
    if len(overrides) != 1:
        return None
    ((layer, setting),) = overrides.items()
    return layer if setting == {"wbits": bits} else None


def measured_runs(runs: Path, source: Path, bits: int) -> dict[str, dict[str, float]]:
    """{layer ("" for the reference): {split: accuracy}} of the runs that started from
    ``source``."""
    found: dict[str, dict[str, float]] = {}
    for path in sorted(runs.rglob("results.json")):
        payload = json.loads(path.read_text())
        init = payload.get("init") or {}
        if payload.get("status") != "ok" or Path(str(init.get("run_dir"))) != source.resolve():
            continue
        layer = single_layer(payload, bits)
        if layer is not None:
            metrics = payload["metrics"]
            found[layer] = {split: float(metrics[f"{split}/acc"]) for split in SPLITS}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, help="the scored float runs")
    parser.add_argument("--runs", type=Path, required=True, help="where the single-layer runs are")
    parser.add_argument("--bits", type=int, default=2, help="the single layer's width (2)")
    parser.add_argument("--out", required=True, help="the CSV files' common prefix")
    args = parser.parse_args(argv)

    rows, correlations = [], []
    for source in args.sources:
        seed = json.loads((source / "results.json").read_text()).get("seed")
        scores = scores_by_method(source, args.bits)
        measured = measured_runs(args.runs, source, args.bits)
        if not scores or "" not in measured:
            print(
                f"sensitivity_ranking: {source}: needs allocations with scores and an all-float "
                f"reference run under {args.runs}",
                file=sys.stderr,
            )
            return 2
        layers = [layer for layer in next(iter(scores.values())) if layer in measured]
        reference = measured[""]
        for layer in layers:
            row = {"seed": seed, "layer": layer}
            row.update({f"{m}_s{args.bits}": f"{scores[m][layer]:.4g}" for m in scores})
            for split in SPLITS:
                row[f"{split}_acc"] = f"{measured[layer][split]:.4f}"
                row[f"{split}_drop"] = f"{reference[split] - measured[layer][split]:.4f}"
            rows.append(row)
        for method in scores:
            entry: dict[str, Any] = {"method": method, "seed": seed, "layers": len(layers)}
            for split in SPLITS:
                drops = [reference[split] - measured[layer][split] for layer in layers]
                rho, p = spearmanr([scores[method][layer] for layer in layers], drops)
                entry[f"spearman_{split}_drop"], entry[f"p_{split}"] = rho, p
            correlations.append(entry)

    for method in dict.fromkeys(c["method"] for c in correlations):
        mine = [c for c in correlations if c["method"] == method]
        mean = {"method": method, "seed": "mean", "layers": mine[0]["layers"]}
        for split in SPLITS:
            mean[f"spearman_{split}_drop"] = statistics.mean(
                c[f"spearman_{split}_drop"] for c in mine
            )
            mean[f"p_{split}"] = ""
        correlations.append(mean)
    for entry in correlations:
        for key, value in entry.items():
            if isinstance(value, float):
                entry[key] = f"{value:.3f}"

    for suffix, table in (("single_layer", rows), ("spearman", correlations)):
        path = Path(f"{args.out}_{suffix}.csv")
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
        print(f"sensitivity_ranking: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
