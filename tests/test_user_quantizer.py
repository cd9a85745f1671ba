"""A quantizer written outside lowbit packs and exports through the grid contract alone."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, load_script, run_env
from user_schemes import fixed_point  # noqa: F401  (registers quantizer=fixed_point)

from lowbit.export import load_packed, save_packed
from lowbit.export.onnx import export_int8_onnx, onnx_predict
from lowbit.export.parity import layer_parity, parity_table
from lowbit.models.nin import NIN
from lowbit.quant import quantize_model

SHAPE = (3, 32, 32)


def user_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = NIN(num_classes=10)
    quantize_model(
        model,
        input_shape=SHAPE,
        quantizer="fixed_point",
        wbits=4,
        abits=4,
        weight_frac_bits=5,
        act_frac_bits=2,
    )
    model.train()
    with torch.no_grad():  # BatchNorm statistics of a few batches: an eval model to export
        for _ in range(5):
            model(torch.randn(16, *SHAPE))
    return model.eval()


def test_user_scheme_packs_and_restores_outputs_bit_for_bit(tmp_path):
    saved = user_model()
    path = save_packed(saved, tmp_path / "model.safetensors")
    restored = load_packed(path, user_model(seed=1))
    x = torch.randn(8, *SHAPE)
    with torch.no_grad():
        assert torch.equal(restored(x), saved(x))


def test_user_scheme_exports_integer_onnx_with_its_own_grid(tmp_path):
    model = user_model()
    images = torch.randn(32, *SHAPE)
    # No calibration: the image stays float in front of the first conv, as in training, so
    # every integer tensor of the graph has a fake-quant counterpart to equal.
    path = export_int8_onnx(model, SHAPE, tmp_path / "model_int8.onnx")
    rows = layer_parity(model, path, images, threads=1)
    compared = [row for row in rows if row["differ"] is not None]
    assert len(compared) == 8, parity_table(rows)  # every quantized layer input but the image's
    # The grids are exact; the int32 bias rounding and the float path of the first conv flip
    # codes that lie next to a rounding boundary, by one step, and the flips compound.
    assert compared[0]["differ"] < 0.001, parity_table(rows)
    assert all(row["differ"] < 0.1 and row["max_steps"] <= 1 for row in compared), parity_table(
        rows
    )
    with torch.no_grad():
        expected = model(images).argmax(1)
    assert (onnx_predict(path, images, threads=1).argmax(1) == expected).float().mean() >= 0.9


def test_a_quantizer_without_a_grid_is_refused_with_one_line(tmp_path):
    class Opaque(fixed_point.FixedPointQuantizer):
        def grid(self, x=None):
            return super(fixed_point.FixedPointQuantizer, self).grid(x)  # the base: none stated

    model = user_model()
    model.features[1][0].input_quantizer = Opaque(4, 2, signed=False)
    from lowbit.export.onnx_graph import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="Opaque states no integer grid"):
        export_int8_onnx(model, SHAPE, tmp_path / "model_int8.onnx")


USER_DIR = Path(__file__).parent  # holds user_schemes/, the researcher's own package

report_script = load_script("report")


def test_user_quantizer_runs_the_whole_pipeline_from_the_command_line(tmp_path):
    """``quantizer=fixed_point`` from the user's config folder on Hydra's search path: trains,
    packs and exports with no change to lowbit (docs/extending.md, "Write your own quantizer")."""
    env = {**run_env(), "PYTHONPATH": str(USER_DIR)}
    conf = USER_DIR / "user_schemes" / "conf"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.searchpath=[file://{conf}]",
            "quantizer=fixed_point",
            "quant.wbits=3",
            *FAST,
            "logger=none",
            "callbacks=none",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["quant"]["quantizer"] == "fixed_point"
    metrics = results["metrics"]
    assert (
        metrics["model/size_bytes"]
        == (tmp_path / "run" / "model_packed.safetensors").stat().st_size
    )
    assert metrics["latency/int8_ms"] > 0 and 0 <= metrics["export/top1_agreement"] <= 1
    assert (tmp_path / "run" / "model_int8.onnx").is_file()

    # The sweep report shows it like a built-in quantizer: its own row, its packed size and its
    # int8 latency (not the fake-quant stand-in).
    assert report_script.main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    with open(tmp_path / "report" / "configurations.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    means = {r["metric"]: float(r["mean"]) for r in rows if r["quantizer"] == "fixed_point"}
    assert means["model/size_bytes"] == metrics["model/size_bytes"]
    assert means["latency/int8_ms"] == pytest.approx(metrics["latency/int8_ms"])
    assert "fixed_point" in (tmp_path / "report" / "index.html").read_text()


def test_user_quantizer_options_are_checked_before_any_work(tmp_path):
    conf = USER_DIR / "user_schemes" / "conf"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"hydra.searchpath=[file://{conf}]",
            "quantizer=fixed_point",
            "quant.wbits=12",
            "logger=none",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        env={**run_env(), "PYTHONPATH": str(USER_DIR)},
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lowbit: error: quantizer=fixed_point cannot quantize to quant.wbits=12 "
        "(allowed: 2-8 or 32)"
    ]
    assert not (tmp_path / "run").exists()
