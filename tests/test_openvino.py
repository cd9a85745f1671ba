"""OpenVINO beside ONNX Runtime (lowbit.export.openvino_run) and the best float and int8 paths
(``best_paths``): what the export stage records with OpenVINO, and without it."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from lowbit.build import build_datamodule, build_quantized_model
from lowbit.export.onnx_run import best_paths
from lowbit.train import export_costs

OPENVINO_LATENCIES = {
    "latency/openvino_int8_ms",
    "latency/openvino_fp32_ms",
    "latency/openvino_default_ms",
}
BEST = {
    "latency/best_float_ms",
    "latency/best_float_path",
    "latency/best_int8_ms",
    "latency/best_int8_path",
    "latency/int8_speedup",
}


# -- best_paths -------------------------------------------------------------------------------


def test_the_best_float_path_names_openvinos_default_precision_when_it_wins():
    best = best_paths(
        {
            "latency/fp32_ms": 5.0,
            "latency/fp32_onnx_ms": 3.0,
            "latency/openvino_fp32_ms": 4.0,
            "latency/openvino_default_ms": 1.0,
            "latency/openvino_default_precision": "bf16",
            "latency/int8_ms": 2.0,
            "latency/openvino_int8_ms": 1.6,
        }
    )
    assert best == {
        "latency/best_float_ms": 1.0,
        "latency/best_float_path": "openvino bf16",
        "latency/best_int8_ms": 1.6,
        "latency/best_int8_path": "openvino int8",
        "latency/int8_speedup": pytest.approx(1.0 / 1.6),
    }


def test_without_openvino_the_best_paths_are_pytorchs_or_onnxruntimes():
    best = best_paths({"latency/fp32_ms": 2.5, "latency/fp32_onnx_ms": 3.0, "latency/int8_ms": 1.0})
    assert best["latency/best_float_path"] == "pytorch fp32"
    assert best["latency/best_float_ms"] == 2.5
    assert best["latency/best_int8_path"] == "onnxruntime int8"
    assert best["latency/int8_speedup"] == pytest.approx(2.5)


def test_each_float_path_can_win_and_is_labelled_with_its_runtime():
    base = {
        "latency/fp32_ms": 9.0,
        "latency/fp32_onnx_ms": 9.0,
        "latency/openvino_fp32_ms": 9.0,
        "latency/openvino_default_ms": 9.0,
        "latency/openvino_default_precision": "fp32",  # a CPU without bf16
        "latency/int8_ms": 3.0,
    }
    labels = {
        "latency/fp32_ms": "pytorch fp32",
        "latency/fp32_onnx_ms": "onnxruntime fp32",
        "latency/openvino_fp32_ms": "openvino fp32",
        "latency/openvino_default_ms": "openvino fp32",
    }
    for key, label in labels.items():
        best = best_paths({**base, key: 1.5})
        assert (best["latency/best_float_path"], best["latency/best_float_ms"]) == (label, 1.5)
        assert best["latency/int8_speedup"] == pytest.approx(0.5)


def test_no_best_paths_without_an_int8_or_a_float_latency():
    assert best_paths({"latency/fp32_ms": 1.0}) == {}
    assert best_paths({"latency/int8_ms": 1.0}) == {}


# -- the export stage ---------------------------------------------------------------------------


def exported(make_cfg, tmp_path, *overrides: str) -> dict:
    """The export stage's metrics for a W4A4 PACT NIN on digits (2 val batches of 16 images),
    timed with 3 repeats on 1 thread."""
    cfg = make_cfg(
        *overrides,
        "quantizer=pact",
        "quant.wbits=4",
        "quant.abits=4",
        "latency.warmup=1",
        "latency.repeats=3",
        "export.threads=1",
    )
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    model = build_quantized_model(cfg, datamodule)
    datamodule.setup()
    return export_costs(model, datamodule, cfg, tmp_path)


def test_the_export_stage_measures_openvino_beside_onnxruntime(make_cfg, tmp_path, caplog):
    pytest.importorskip("openvino")
    with caplog.at_level(logging.INFO, logger="lowbit"):
        metrics = exported(make_cfg, tmp_path)
    assert not [r for r in caplog.records if "OpenVINO" in r.getMessage()]
    for key in OPENVINO_LATENCIES:
        assert metrics[key] > 0, key
    assert metrics["latency/openvino_default_precision"] in ("bf16", "fp32", "fp16")
    assert BEST <= metrics.keys()
    fastest_float = min(
        metrics[key]
        for key in (
            "latency/fp32_ms",
            "latency/fp32_onnx_ms",
            *OPENVINO_LATENCIES - {"latency/openvino_int8_ms"},
        )
    )
    assert metrics["latency/best_float_ms"] == fastest_float
    assert metrics["latency/best_int8_ms"] == min(
        metrics["latency/int8_ms"], metrics["latency/openvino_int8_ms"]
    )
    # OpenVINO's int8 answers agree with the fake-quant model as ONNX Runtime's do (#31)
    assert metrics["export/agreement_images"] == 32
    assert metrics["export/top1_agreement"] >= 0.95
    assert metrics["export/openvino_top1_agreement"] == metrics["export/top1_agreement"]


def test_without_openvino_the_export_stage_says_so_once_and_measures_the_rest(
    make_cfg, tmp_path, caplog, monkeypatch
):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails
    with caplog.at_level(logging.INFO, logger="lowbit"):
        metrics = exported(make_cfg, tmp_path)
    said = [r.getMessage() for r in caplog.records if "OpenVINO" in r.getMessage()]
    assert len(said) == 1 and "skipped" in said[0] and "openvino" in said[0].split(":", 1)[1]
    assert not [key for key in metrics if "openvino" in key]
    assert BEST <= metrics.keys()
    assert "openvino" not in metrics["latency/best_float_path"]
    assert metrics["latency/best_int8_path"] == "onnxruntime int8"
    assert metrics["export/top1_agreement"] >= 0.95


def test_export_openvino_false_measures_no_openvino_and_says_nothing(make_cfg, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="lowbit"):
        metrics = exported(make_cfg, tmp_path, "export.openvino=false")
    assert not [r for r in caplog.records if "OpenVINO" in r.getMessage()]
    assert not [key for key in metrics if "openvino" in key]
    assert metrics["latency/best_int8_path"] == "onnxruntime int8"


def test_export_openvino_true_without_openvino_is_one_line_and_exit_2_before_work(
    tmp_path, capsys, monkeypatch
):
    from lowbit.cli import preflight

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(SystemExit) as stopped:
        preflight(["export.openvino=true", f"hydra.run.dir={tmp_path}/run", "logger=none"])
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("lowbit: error: export.openvino=true but openvino cannot be")
    assert not (tmp_path / "run").exists()


def test_data_loader_workers_start_safely_once_openvino_is_loaded(tmp_path):
    """A fork after OpenVINO's runtime ran crashed the process (SIGSEGV): in the suite, the
    deployed bench's OpenVINO session followed by tests/test_data_faults.py's loader with one
    worker; in use, a multirun's second job training with workers after the first job's export.
    Once OpenVINO is loaded, workers start from a fork server: checked here, and that they
    deliver (this short session alone did not crash a fork)."""
    pytest.importorskip("openvino")
    import openvino

    from lowbit.data.base import worker_start_method
    from lowbit.data.digits import DigitsData
    from lowbit.export.onnx import export_fp32_onnx

    path = export_fp32_onnx(torch.nn.Conv2d(3, 4, 3), (3, 8, 8), tmp_path / "conv.onnx")
    compiled = openvino.Core().compile_model(str(path), "CPU")  # the runtime's threads run
    compiled(torch.zeros(1, 3, 8, 8).numpy())
    assert worker_start_method(1) == "forkserver" and worker_start_method(0) is None
    data = DigitsData(batch_size=8, num_workers=1)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape[0] == 8 and labels.shape == (8,)
