"""OpenVINO beside ONNX Runtime (lowbit.export.openvino_run) and the best float and int8 paths
(``best_paths``): what the export stage records with OpenVINO, and without it."""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import MODEL_DATA

from lowbit.build import build_datamodule, build_quantized_model
from lowbit.export.onnx import export_int8_onnx, ort_runner, top1_agreements
from lowbit.export.onnx_run import best_paths, calibration_images
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
    # each one's accuracy from the same pass: equal answers, equal accuracy
    accuracy = {k: metrics[f"export/top1_acc_{k}"] for k in ("fake_quant", "int8", "openvino_int8")}
    assert 0 <= accuracy["fake_quant"] <= 1
    if metrics["export/top1_agreement"] == 1.0:
        assert accuracy["int8"] == accuracy["fake_quant"] == accuracy["openvino_int8"]


def test_with_the_qop_format_openvino_runs_its_own_form_of_the_same_integers(
    make_cfg, tmp_path, caplog
):
    """OpenVINO's QLinearConv reader takes per-tensor weight scales only (2026.4), so OpenVINO
    gets model_int8_openvino.onnx, written from the qdq graph (lowbit.export.openvino_form):
    the same integer codes (tests/test_openvino_form.py)."""
    pytest.importorskip("openvino")
    with caplog.at_level(logging.INFO, logger="lowbit"):
        metrics = exported(make_cfg, tmp_path, "export.format=qop")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model_int8.onnx")).graph.node}
    assert "QLinearConv" in ops  # the format reached the export
    openvino_file = tmp_path / "model_int8_openvino.onnx"
    assert "QLinearConv" not in {node.op_type for node in onnx.load(str(openvino_file)).graph.node}
    assert not [r for r in caplog.records if "OpenVINO" in r.getMessage()]
    assert metrics["latency/openvino_int8_ms"] > 0
    assert metrics["export/openvino_top1_agreement"] == metrics["export/top1_agreement"] >= 0.95


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


# -- OpenVINO's answers against the fake-quant model, as ONNX Runtime's ------------------------

# The tiny configurations of the end-to-end runs, each model with its preset's quantizer
# (MobileNetV3: symmetric PACT, after hard-swish) at W4A4.
AGREEMENT_CASES = {
    "nin": "quantizer=pact",
    "mobilenetv3_small": "quantizer=pact_symmetric",
    "yolov3_tiny": "quantizer=pact",
}
# OpenVINO's heads against the fake-quant model's, as a share of each head's range. Its default
# precision on an AMX CPU is bf16 for the float ops, the heads included: measured 0.12-0.16%
# (ONNX Runtime: 1e-6, float rounding).
HEAD_TOLERANCE = 0.01


@pytest.mark.parametrize("model", AGREEMENT_CASES)
def test_openvino_agrees_with_the_fake_quant_model_as_onnxruntime_does(make_cfg, tmp_path, model):
    """The int8 graph in both runtimes at their defaults (as the export stage runs them) on the
    val batches: classification, the same top-1 agreement; detection, every head within
    ``HEAD_TOLERANCE`` of its range."""
    pytest.importorskip("openvino")
    import openvino

    from lowbit.export.openvino_run import compiled_runner

    cfg = make_cfg(f"model={model}", AGREEMENT_CASES[model], *MODEL_DATA.get(model, []))
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    network = build_quantized_model(cfg, datamodule)
    datamodule.setup()
    with torch.no_grad():  # ranges from a training batch: the output requantizers'
        network.train()(next(iter(datamodule.train_dataloader()))[0])
    network.eval()
    shape = tuple(datamodule.image_shape)
    path = export_int8_onnx(network, shape, tmp_path / "int8.onnx", calibration_images(datamodule))
    runners = {
        "onnxruntime": ort_runner(path, threads=1),
        "openvino": compiled_runner(openvino.Core(), path, threads=1)[0],
    }
    batches = list(datamodule.val_dataloader())[:2]
    if model not in MODEL_DATA:
        agreement = top1_agreements(network, runners, batches)
        assert agreement["onnxruntime"] == 1.0  # exact
        assert agreement["openvino"] == agreement["onnxruntime"]
        return
    images = torch.cat([batch[0] for batch in batches])
    with torch.no_grad():
        expected = [head.numpy() for head in network(images)]
    for name, run in runners.items():
        for head, want in zip(run(images.numpy()), expected):
            off = np.abs(head - want).max() / (want.max() - want.min())
            assert off <= (1e-4 if name == "onnxruntime" else HEAD_TOLERANCE), (name, off)
