"""OpenVINO's form of the integer graph (lowbit.export.openvino_form), and the contract without
output requantizers (``quant.requantize_outputs=false``): issue #31."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import MODEL_DATA
from onnx import TensorProto, helper, numpy_helper

from lowbit.build import build_datamodule, build_quantized_model
from lowbit.export.onnx import export_int8_onnx, ort_runner
from lowbit.export.onnx_graph import REQUANTIZED_KEY
from lowbit.export.onnx_run import calibration_images
from lowbit.export.openvino_form import (
    NotExact,
    float_clips,
    openvino_form,
    outputs_op_by_op,
    signed_grids,
)
from lowbit.quant.modules import OutputRequantizer
from lowbit.report.runs import recorded_settings

# Each model with a signed activation grid somewhere (symmetric PACT after hard-swish and leaky
# ReLU; NIN's unsigned PACT has none to shift, and its 4-bit grids end in integer Clips).
CASES = {
    "nin": "quantizer=pact",
    "mobilenetv3_small": "quantizer=pact_symmetric",
    "yolov3_tiny": "quantizer=pact_symmetric",
}


def observed_model(make_cfg, model: str, *overrides: str):
    """The tiny configuration of ``model`` (W4A4), its output requantizers' ranges from one
    training batch, in evaluation; with its datamodule."""
    cfg = make_cfg(f"model={model}", CASES[model], *MODEL_DATA.get(model, []), *overrides)
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    network = build_quantized_model(cfg, datamodule)
    datamodule.setup()
    with torch.no_grad():
        network.train()(next(iter(datamodule.train_dataloader()))[0])
    return network.eval(), datamodule


def activation_zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [
        constants[node.input[2]]
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in constants
    ]


# NIN has no output requantizer: its two contracts are one graph. YOLOv3-tiny's requantized
# graph is checked op by op by scripts/openvino_forms.py's quick run (a slow test).
CONTRACTS = [
    ("nin", "true"),
    ("mobilenetv3_small", "true"),
    ("mobilenetv3_small", "false"),
    ("yolov3_tiny", "false"),
]


@pytest.mark.parametrize(("model", "requantize"), CONTRACTS)
def test_openvinos_form_computes_the_graphs_codes_bit_for_bit(
    make_cfg, tmp_path, model, requantize
):
    network, datamodule = observed_model(make_cfg, model, f"quant.requantize_outputs={requantize}")
    path = export_int8_onnx(
        network,
        tuple(datamodule.image_shape),
        tmp_path / "int8.onnx",
        calibration_images(datamodule),
    )
    graph = onnx.load(str(path))
    rewritten = openvino_form(graph)
    onnx.save(rewritten, str(tmp_path / "openvino.onnx"))
    images = next(iter(datamodule.val_dataloader()))[0][:4].numpy()
    want = outputs_op_by_op(graph, images)
    got = outputs_op_by_op(rewritten, images)
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))
    # what changed: no symmetric grid left on uint8, no integer Clip after a Q
    symmetric_before = [
        z for z in activation_zero_points(graph) if z.dtype == np.uint8 and z == 128
    ]
    after = activation_zero_points(rewritten)
    assert not [z for z in after if z.dtype == np.uint8 and z == 128]
    assert len([z for z in after if z.dtype == np.int8]) == len(symmetric_before)
    producers = {out: node for node in rewritten.graph.node for out in node.output}
    assert not [
        node.name
        for node in rewritten.graph.node
        if node.op_type == "Clip"
        and producers.get(node.input[0]) is not None
        and producers[node.input[0]].op_type == "QuantizeLinear"
    ]
    clips = sum(n.op_type == "Clip" for n in graph.graph.node)
    assert clips == sum(n.op_type == "Clip" for n in rewritten.graph.node)  # moved, not dropped


def test_without_output_requantizers_the_outputs_stay_float_in_training_and_in_the_graph(
    make_cfg, tmp_path
):
    """MobileNetV3-Small: its 40 requantizers (the convs before hard-swish, the residual sums and
    squeeze-excite's products) are gone from the model and from the graph, which hands those
    outputs on in float; ONNX Runtime's answers then agree with evaluation to float rounding."""
    with_them, datamodule = observed_model(make_cfg, "mobilenetv3_small")
    without, _ = observed_model(make_cfg, "mobilenetv3_small", "quant.requantize_outputs=false")
    assert sum(isinstance(m, OutputRequantizer) for m in with_them.modules()) > 0
    assert not [m for m in without.modules() if isinstance(m, OutputRequantizer)]
    shape, images = tuple(datamodule.image_shape), calibration_images(datamodule)
    graphs = {
        name: onnx.load(str(export_int8_onnx(net, shape, tmp_path / f"{name}.onnx", images)))
        for name, net in (("with", with_them), ("without", without))
    }
    quantizes = {
        name: sum(node.op_type == "QuantizeLinear" for node in graph.graph.node)
        for name, graph in graphs.items()
    }
    assert quantizes["without"] < quantizes["with"]
    metadata = {p.key: p.value for p in graphs["without"].metadata_props}
    assert metadata[REQUANTIZED_KEY] == ""  # the export calibrated none of its own either
    run = ort_runner(tmp_path / "without.onnx", threads=1)
    batch = next(iter(datamodule.val_dataloader()))[0]
    with torch.no_grad():
        expected = without(batch).argmax(1).numpy()
    assert np.mean(run(batch.numpy())[0].argmax(1) == expected) >= 0.9


def quantize_clip_graph(reader: str = "DequantizeLinear") -> onnx.ModelProto:
    """x -> Q (uint8, zero point 128: a symmetric 4-bit grid) -> integer Clip -> ``reader``."""
    constants = [
        numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "zero"),
        numpy_helper.from_array(np.array(121, np.uint8), "low"),  # -7 .. 7 around 128
        numpy_helper.from_array(np.array(135, np.uint8), "high"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["codes"], name="q"),
        helper.make_node("Clip", ["codes", "low", "high"], ["clipped"], name="clip"),
    ]
    if reader == "DequantizeLinear":
        nodes.append(helper.make_node("DequantizeLinear", ["clipped", "scale", "zero"], ["y"]))
    else:
        nodes.append(helper.make_node(reader, ["clipped"], ["y"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_float_clip_and_the_signed_grid_keep_every_code_at_the_bounds_and_ties():
    """Every value from -2 to 2 in steps of a twentieth of the grid's step (the bounds at
    +-0.7, the ties half a step off each code) gives the same dequantized value."""
    model = quantize_clip_graph()
    x = np.arange(-2.0, 2.0, 0.005, dtype=np.float32)
    want = outputs_op_by_op(model, x)[0]
    for rewrite in (float_clips, signed_grids, openvino_form):
        got = outputs_op_by_op(rewrite(model), x)[0]
        assert np.array_equal(want, got), rewrite.__name__
    assert want.min() == pytest.approx(-0.7) and want.max() == pytest.approx(0.7)


def test_a_node_that_reads_shifted_codes_is_refused_not_rewritten():
    with pytest.raises(NotExact, match="Cast"):
        signed_grids(quantize_clip_graph(reader="Cast"))


def test_runs_before_requantize_outputs_existed_pool_with_runs_that_keep_it_true():
    assert recorded_settings({"requantize_outputs": True, "wbits": 4}) == {"wbits": 4}
    assert recorded_settings({"requantize_outputs": False}) == {"requantize_outputs": False}


def test_quant_requantize_outputs_is_true_or_false_one_line_and_exit_2(tmp_path, capsys):
    from lowbit.cli import preflight

    with pytest.raises(SystemExit) as stopped:
        preflight(
            [
                "quantizer=pact",
                "quant.requantize_outputs=maybe",
                f"hydra.run.dir={tmp_path}/run",
                "logger=none",
            ]
        )
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["lowbit: error: quant.requantize_outputs: must be true or false, got 'maybe'"]
    assert not (tmp_path / "run").exists()


def test_a_graph_the_rewrite_refuses_still_runs_in_openvino_as_written(make_cfg, tmp_path, caplog):
    """The export stage keeps every measurement: OpenVINO reads the qdq graph itself, with one
    log line that says why it is not in OpenVINO's form."""
    pytest.importorskip("openvino")
    import logging

    import lowbit.export.openvino_form as form
    from lowbit.train import export_costs

    def refuse(*_):
        raise NotExact("Cast node_x reads codes the rewrite shifted")

    cfg = make_cfg("quantizer=pact", "latency.repeats=2", "export.threads=1")
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    network = build_quantized_model(cfg, datamodule)
    datamodule.setup()
    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.INFO, logger="lowbit"):
        patch.setattr(form, "write_openvino_form", refuse)
        metrics = export_costs(network, datamodule, cfg, tmp_path)
    said = [r.getMessage() for r in caplog.records if "OpenVINO runs" in r.getMessage()]
    assert said == [
        "OpenVINO runs model_int8.onnx as written: Cast node_x reads codes the rewrite shifted"
    ]
    assert not (tmp_path / "model_int8_openvino.onnx").exists()
    assert metrics["latency/openvino_int8_ms"] > 0
    assert metrics["export/openvino_top1_agreement"] == metrics["export/top1_agreement"]
