"""scripts/sensitivity_ranking.py on hand-made runs: the scores it reads, the drops it measures
against the all-float reference, and Spearman's rho of the two."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import load_script

FLOAT = {"wbits": 32, "abits": 32, "first_layer_bits": 32, "last_layer_bits": 32}
REFERENCE = {**FLOAT, "overrides": None}  # every layer float: the accuracy drops are from it
LAYERS = ["a", "b", "c", "d"]


def write_results(folder: Path, payload: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(payload))


def single_layer_study(tmp_path: Path, scores: dict[str, list[float]], test_acc: list[float]):
    source = tmp_path / "fp32"
    write_results(source, {"status": "ok", "seed": 0, "metrics": {}})
    (source / "allocations").mkdir()
    for method, values in scores.items():
        body = {
            "method": method,
            "scores": {layer: {"by_width": {2: v, 4: v / 4}} for layer, v in zip(LAYERS, values)},
        }
        (source / "allocations" / f"{method}.yaml").write_text(yaml.safe_dump(body))
    runs = tmp_path / "runs"
    init = {"run_dir": str(source)}
    write_results(
        runs / "reference",
        {
            "status": "ok",
            "init": init,
            "quant": REFERENCE,
            "metrics": {"test/acc": 1.0, "val/acc": 0.9},
        },
    )
    for layer, acc in zip(LAYERS, test_acc):
        write_results(
            runs / layer,
            {
                "status": "ok",
                "init": init,
                "quant": {**FLOAT, "overrides": {layer: {"wbits": 2}}},
                "metrics": {"test/acc": acc, "val/acc": 0.9 - (1.0 - acc) / 2},
            },
        )
    return source, runs


def test_a_score_that_orders_the_drops_has_rho_1_and_its_reverse_minus_1(tmp_path, capsys):
    # drops 0.4, 0.3, 0.2, 0.1 for layers a-d
    source, runs = single_layer_study(
        tmp_path, {"right": [9, 7, 5, 1], "reversed": [1, 2, 3, 4]}, [0.6, 0.7, 0.8, 0.9]
    )
    out = tmp_path / "study"
    script = load_script("sensitivity_ranking")
    assert script.main([str(source), "--runs", str(runs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(Path(f"{out}_single_layer.csv").open()))
    assert [r["layer"] for r in rows] == LAYERS
    assert [float(r["test_drop"]) for r in rows] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert [float(r["right_s2"]) for r in rows] == [9, 7, 5, 1]
    rho = {
        (r["method"], r["seed"]): float(r["spearman_test_drop"])
        for r in csv.DictReader(Path(f"{out}_spearman.csv").open())
    }
    assert rho == {
        ("right", "0"): 1.0,
        ("reversed", "0"): -1.0,
        ("right", "mean"): 1.0,
        ("reversed", "mean"): -1.0,
    }


def test_no_reference_run_is_one_line_and_exit_2(tmp_path, capsys):
    source, runs = single_layer_study(tmp_path, {"right": [4, 3, 2, 1]}, [0.6, 0.7, 0.8, 0.9])
    (runs / "reference" / "results.json").unlink()
    script = load_script("sensitivity_ranking")
    assert script.main([str(source), "--runs", str(runs), "--out", str(tmp_path / "x")]) == 2
    assert "all-float reference" in capsys.readouterr().err
