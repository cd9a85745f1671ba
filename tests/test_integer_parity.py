"""What is deployed computes what was trained, code for code (issue #27).

A quantized network trained a few steps on digits is exported to integer ONNX, and ONNX
Runtime's codes at every layer input are compared with the codes the PyTorch model computes in
evaluation (``lowbit.quant.integer``): none may differ. The same comparison with float
arithmetic (fake quantization as before) must find differences, or the test could not fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.data.digits import DigitsData
from lowbit.export.onnx import export_int8_onnx
from lowbit.export.parity import layer_parity
from lowbit.models.nin import NIN
from lowbit.quant import quantize_model
from lowbit.quant.integer import float_arithmetic, integer_layers

SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def digits():
    data = DigitsData()
    data.setup()

    def resize(t):
        return F.interpolate(t, size=SHAPE[1:], mode="bilinear", align_corners=False)

    train = data.train_set.tensors
    return resize(train[0]), train[1], resize(data.val_set.tensors[0])


def trained(model: nn.Module, digits, steps: int = 25) -> nn.Module:
    images, labels = digits[:2]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def nin(quantizer: str, bits: int) -> nn.Module:
    torch.manual_seed(0)
    return quantize_model(
        NIN(num_classes=10),
        input_shape=SHAPE,
        quantizer=quantizer,
        wbits=bits,
        abits=bits,
        input_bits=8,  # every run's default: the image on the grid the runtime feeds it on
    )


def ort_logits(path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images.numpy()})[0]


@pytest.mark.parametrize(
    "quantizer,bits",
    [
        ("dorefa", 2),
        ("pact", 4),
        pytest.param("dorefa", 4, marks=pytest.mark.slow),
        pytest.param("lsq", 2, marks=pytest.mark.slow),
        pytest.param("dorefa", 8, marks=pytest.mark.slow),  # the narrow-range 8-bit weights
    ],
)
def test_nin_deploys_bit_for_bit(tmp_path, digits, quantizer, bits):
    model = trained(nin(quantizer, bits), digits)
    images = digits[2][:128]
    # every conv but the last (whose output is pooled in float) ends in an integer requantization
    assert len(integer_layers(model)) == 8
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    rows = layer_parity(model, path, images)
    exact = [row for row in rows if row["differ"] is not None]
    assert len(exact) == 9  # the input of every conv, the image's included
    assert all(row["differ"] == 0.0 for row in exact), rows
    # export.format=qop, QLinearConv itself: the same codes at every layer input
    qop = export_int8_onnx(model, SHAPE, tmp_path / "qop.onnx", form="qop")
    assert layer_parity(model, qop, images) == rows
    with torch.no_grad():
        logits = model(images).numpy()
    deployed = ort_logits(path, images)
    assert (deployed.argmax(1) == logits.argmax(1)).all()
    np.testing.assert_allclose(deployed, logits, rtol=1e-4, atol=1e-4)  # a float last layer
    # the same comparison with fake quantization's float arithmetic does find differences
    with float_arithmetic(model):
        drifted = layer_parity(model, path, images)
    assert any(row["differ"] for row in drifted)


def test_training_computes_as_before_and_evaluation_in_integers(digits):
    model = trained(nin("dorefa", 4), digits, steps=5)
    torch.manual_seed(0)
    fake_quant = quantize_model(
        NIN(num_classes=10),
        input_shape=SHAPE,
        quantizer="dorefa",
        wbits=4,
        abits=4,
        input_bits=8,
        integer_arithmetic=False,
    )
    fake_quant.load_state_dict(model.state_dict())
    assert integer_layers(fake_quant) == []
    images = digits[2][:16]
    with torch.no_grad():
        integer, fake = model.eval()(images), fake_quant.eval()(images)
        assert not torch.equal(integer, fake)
        assert (integer.argmax(1) == fake.argmax(1)).float().mean() >= 0.9
        with float_arithmetic(model):
            assert torch.equal(model(images), fake)
        # training mode: BatchNorm on the batch's statistics, float arithmetic, as before
        assert torch.equal(model.train()(images), fake_quant.train()(images))


def mobilenet(quantizer: str, bits: int) -> nn.Module:
    from lowbit.models.mobilenetv3 import mobilenetv3_small

    torch.manual_seed(0)
    return quantize_model(
        mobilenetv3_small(num_classes=10, stem="cifar"),
        input_shape=SHAPE,
        quantizer=quantizer,
        wbits=bits,
        abits=bits,
        input_bits=8,
    )


@pytest.mark.parametrize("quantizer,bits", [("lsq", 2), ("pact_symmetric", 4)])
def test_mobilenetv3_deploys_bit_for_bit(tmp_path, digits, quantizer, bits):
    # hard-swish, squeeze-excite and residual sums: every conv output that no input quantizer
    # reads is requantized on 8 bits in training (OutputRequantizer), as the runtime must
    model = trained(mobilenet(quantizer, bits), digits, steps=15)
    images = digits[2][:128]
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    rows = layer_parity(model, path, images)
    assert len(rows) == 54 and not any(row["requantized_output"] for row in rows)
    assert all(row["differ"] == 0.0 for row in rows), [r for r in rows if r["differ"]]
    qop = export_int8_onnx(model, SHAPE, tmp_path / "qop.onnx", form="qop")  # export.format
    assert layer_parity(model, qop, images) == rows
    # the float ops between layers in the form ORT computes as PyTorch does (onnx_graph)
    graph = onnx.load(str(path)).graph
    constants = {tensor.name for tensor in graph.initializer}
    ops = {node.op_type for node in graph.node}
    assert "Sum" in ops and not ops & {"HardSwish", "HardSigmoid", "GlobalAveragePool"}
    # an Add of two tensors is what ORT fuses into QLinearAdd; x + 3 of hard-swish is not
    assert all(set(n.input) & constants for n in graph.node if n.op_type == "Add")
    with torch.no_grad():
        logits = model(images).numpy()
    assert (ort_logits(path, images).argmax(1) == logits.argmax(1)).all()


def test_output_requantizer_trains_on_the_grid_it_evaluates_on():
    # training uses torch's fused fake quantization (speed), evaluation the runtime's x / scale:
    # the same codes, and the straight-through gradient stops outside the grid
    from lowbit.quant.modules import OutputRequantizer

    torch.manual_seed(0)
    requantizer = OutputRequantizer(8).train()
    x = torch.randn(64, 8, 6, 6) * 3 + 1
    requantizer(x)  # the first batch sets the range
    wider = torch.cat([x, 3 * x]).requires_grad_(True)  # moves the range 1% toward its extremes
    y = requantizer(wider)
    low, high = requantizer.low.item(), requantizer.high.item()
    assert x.min() > wider.min() and low < x.min().item()
    with torch.no_grad():
        assert torch.equal(y, requantizer.eval()(wider))
    scale, zero_point = requantizer.scale_and_zero_tensor()
    codes = (y.detach() / scale + zero_point).round()
    assert codes.min() == 0 and codes.max() == 255 and codes.unique().numel() == 256
    y.backward(torch.ones_like(y))
    step = scale.item()
    inside = (wider > low + step) & (wider < high - step)
    outside = (wider < low - step) | (wider > high + step)
    assert inside.sum() > 1000 and outside.sum() > 100
    assert torch.all(wider.grad[inside] == 1) and torch.all(wider.grad[outside] == 0)


def test_a_packed_model_evaluates_as_the_model_it_was_packed_from(tmp_path, digits):
    # BatchNorm travels as its affine map (mean 0, unit variance): the folded factors come from
    # PyTorch's eval kernel on both sides, so the restored model computes the same integers
    from lowbit.export.packing import load_packed, save_packed

    images = digits[2][:64]
    for build in (lambda: nin("dorefa", 4), lambda: mobilenet("lsq", 4)):
        model = trained(build(), digits, steps=5)
        path = save_packed(model, tmp_path / "packed.safetensors")
        restored = load_packed(path, build()).eval()
        with torch.no_grad():
            assert torch.equal(restored(images), model(images))


def test_integer_costs_script_prints_both_measures():
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "integer_costs.py"
    command = [sys.executable, str(script), "--model", "nin", "--rounds", "1", "--batch", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["measure"] for line in lines] == ["train_step", "eval_forward"]
    assert all(line["ratio_median"] > 0 and line["ms_median"] > 0 for line in lines)
