"""export.format: the QDQ and the QOp graph are two writings of one integer model (issue #31).

Every model (NIN, MobileNetV3-Small, YOLOv3-tiny) and every quantizer, at the tiny sizes of the
end-to-end runs (test_train.py), is exported in both forms (quantizer=fp32 too: the export
quantizes the inputs lowbit keeps in float on the calibration images' ranges). The QOp graph
holds the integer ops themselves, ONNX Runtime runs both as the same graph, and both compute
the same codes at every layer input and the same outputs.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from conftest import MODEL_DATA

from lowbit.build import build_datamodule, build_quantized_model
from lowbit.cli import config_groups
from lowbit.export.onnx import export_int8_onnx, onnx_outputs, optimized_op_types
from lowbit.export.onnx_graph import DEFAULT_FORMAT, FORMATS
from lowbit.export.onnx_run import calibration_images
from lowbit.export.parity import layer_parity

INTEGER_OPS = {"QLinearConv", "QGemm"}  # what ORT fuses an integer layer of a QDQ graph into
# Every model but MobileNetV3-Large: the blocks of -Small, at twice the time.
MODELS = [model for model in config_groups()["model"] if model != "mobilenetv3_large"]


# ONNX Runtime and torch on one thread each: the suite shares two cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def requantized_float_layers(graph: onnx.GraphProto) -> list[str]:
    """The float Conv/Gemm nodes whose output a QuantizeLinear reads."""
    quantized = {node.input[0] for node in graph.node if node.op_type == "QuantizeLinear"}
    return [
        node.name
        for node in graph.node
        if node.op_type in ("Conv", "Gemm") and node.output[0] in quantized
    ]


def tiny_model(make_cfg, model: str, quantizer: str):
    """(quantized model after one training batch, in eval; its datamodule, set up)."""
    cfg = make_cfg(f"model={model}", f"quantizer={quantizer}", *MODEL_DATA.get(model, []))
    datamodule = build_datamodule(cfg)
    torch.manual_seed(0)
    network = build_quantized_model(cfg, datamodule)
    datamodule.setup()
    with torch.no_grad():  # ranges from a batch: LSQ's steps, the output requantizers'
        network.train()(next(iter(datamodule.train_dataloader()))[0])
    return network.eval(), datamodule


def model_quantizer_cases() -> list:
    """NIN with DoReFa, PACT and LSQ (the three rounding schemes: tanh-normalised, clipped,
    learned step) and each model with LSQ in the default suite; the rest of the matrix is slow
    (``make test-slow``): ``qop`` is not the default form, and the default ``qdq`` export runs
    for every model and quantizer in the end-to-end runs (test_train.py)."""
    cases = []
    for model in MODELS:
        for quantizer in config_groups()["quantizer"]:
            default = quantizer == "lsq" or (model == "nin" and quantizer in ("dorefa", "pact"))
            marks = () if default else (pytest.mark.slow,)
            cases.append(pytest.param(model, quantizer, marks=marks, id=f"{quantizer}-{model}"))
    return cases


@pytest.mark.parametrize("model, quantizer", model_quantizer_cases())
def test_every_model_and_quantizer_exports_both_forms_with_the_same_integers(
    make_cfg, tmp_path, model, quantizer
):
    network, datamodule = tiny_model(make_cfg, model, quantizer)
    shape, calibration = tuple(datamodule.image_shape), calibration_images(datamodule)
    paths = {
        form: export_int8_onnx(network, shape, tmp_path / f"{form}.onnx", calibration, form=form)
        for form in FORMATS
    }
    qdq, qop = (onnx.load(str(paths[form])).graph for form in ("qdq", "qop"))
    # an integer layer: Conv/Gemm -> Q in the QDQ graph, one QLinearConv/QGemm in the QOp graph
    assert not INTEGER_OPS & {node.op_type for node in qdq.node}
    assert not requantized_float_layers(qop)
    written = [node for node in qop.node if node.op_type in INTEGER_OPS]
    assert written and len(written) == len(requantized_float_layers(qdq))
    # and ONNX Runtime fuses the QDQ graph into the graph it runs for the QOp one
    ran = {
        form: optimized_op_types(path, tmp_path / f"{form}_ran.onnx")
        for form, path in paths.items()
    }
    assert ran["qdq"] == ran["qop"]
    images = next(iter(datamodule.val_dataloader()))[0][:8]
    outputs = {form: onnx_outputs(path, images, threads=1) for form, path in paths.items()}
    assert all(torch.equal(a, b) for a, b in zip(outputs["qdq"], outputs["qop"]))
    parity = {form: layer_parity(network, path, images, threads=1) for form, path in paths.items()}
    assert parity["qdq"] and parity["qdq"] == parity["qop"]


def test_the_configs_default_format_is_the_exporters(make_cfg):
    assert make_cfg().export.format == DEFAULT_FORMAT == "qdq"


def test_an_unknown_form_is_refused(tmp_path):
    with pytest.raises(ValueError, match="form must be one of qdq, qop, got 'qlinear'"):
        export_int8_onnx(torch.nn.Identity(), (3, 8, 8), tmp_path / "x.onnx", form="qlinear")
