"""LSQ and LSQ+ against the papers' formulas, by hand and over random inputs, and in the model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.export import load_packed, save_packed
from lowbit.export.onnx import export_int8_onnx
from lowbit.export.parity import layer_parity
from lowbit.models import NIN, MobileNetV3
from lowbit.quant import quantize_model
from lowbit.quant.functional import (
    lsq,
    lsq_grad_scale,
    lsq_initial_step,
    lsq_plus,
    lsq_range,
)
from lowbit.quant.modules import LearnedStep, LearnedStepOffset
from lowbit.quant.optim import learned_values, logged_values, param_groups


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


# the maths by hand -------------------------------------------------------------------------


def test_ranges_of_the_paper():
    assert lsq_range(2, signed=False) == (0, 3)
    assert lsq_range(2, signed=True) == (2, 1)
    assert lsq_range(4, signed=True) == (8, 7)
    assert lsq_range(8, signed=False) == (0, 255)


def test_unsigned_forward_and_eq3_by_hand():
    x, step = leaf([-1.0, 0.26, 0.74, 1.5, 5.0]), leaf(0.5)
    y = lsq(x, step, 2)  # Qn 0, Qp 3; x / s = -2, 0.52, 1.48, 3, 10
    assert y.tolist() == [0.0, 0.5, 0.5, 1.5, 1.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # straight-through inside [0, 3]
    # Eq. 3: below -Qn = 0; round(v) - v = 0.48 and -0.48 inside; Qp = 3 at and above the top
    assert step.grad.item() == pytest.approx(0 + 0.48 - 0.48 + 3 + 3)


def test_signed_forward_gradient_scale_and_eq3_by_hand():
    x, step = leaf([-3.0, -0.6, 0.2, 0.9]), leaf(0.5)
    y = lsq(x, step, 2, signed=True, grad_scale=0.1)  # Qn 2, Qp 1; v = -6, -1.2, 0.4, 1.8
    assert y.tolist() == [-1.0, -0.5, 0.0, 0.5]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    # -Qn = -2 below; round(-1.2) + 1.2 = 0.2; round(0.4) - 0.4 = -0.4; Qp = 1 above; times 0.1
    assert step.grad.item() == pytest.approx(0.1 * (-2 + 0.2 - 0.4 + 1))


def test_per_channel_step_gets_the_sum_of_its_own_channel():
    x = leaf([[[[0.3]], [[1.0]]], [[[0.7]], [[9.0]]]])  # batch 2, 2 channels
    step = leaf([[[1.0]], [[2.0]]])  # one step per channel, shape (2, 1, 1)
    lsq(x, step, 2).sum().backward()  # v: channel 0 -> 0.3, 0.7; channel 1 -> 0.5, 4.5
    assert step.grad[0].item() == pytest.approx((0 - 0.3) + (1 - 0.7))
    assert step.grad[1].item() == pytest.approx((0 - 0.5) + 3)  # round half to even; above Qp


def test_grad_scale_and_initial_step_formulas():
    assert lsq_grad_scale(1000, 4, signed=True) == pytest.approx(1 / math.sqrt(1000 * 7))
    assert lsq_grad_scale(64, 2, signed=False) == pytest.approx(1 / math.sqrt(64 * 3))
    x = torch.tensor([-2.0, 1.0, 3.0, 0.0])
    assert lsq_initial_step(x, 4, signed=True).item() == pytest.approx(2 * 1.5 / math.sqrt(7))


# properties over random inputs -------------------------------------------------------------


def reference_step_gradient(x, step, bits, signed):
    """Eq. 3 written out element by element, in float64."""
    qn, qp = lsq_range(bits, signed)
    total = 0.0
    for value in x.tolist():
        v = value / step
        total += -qn if v <= -qn else qp if v >= qp else round(v) - v
    return total


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=1, max_size=40),
    step=st.floats(0.01, 4.0),
    bits=st.integers(2, 8),
    signed=st.booleans(),
)
def test_levels_range_and_gradient_cases_over_random_inputs(values, step, bits, signed):
    x, s = leaf(values), leaf(step)
    y = lsq(x, s, bits, signed)
    qn, qp = lsq_range(bits, signed)
    codes = y.detach() / step
    assert torch.allclose(codes, codes.round(), atol=1e-9)  # on the grid
    codes = codes.round()
    assert codes.min() >= -qn and codes.max() <= qp  # in range: at most 2^k levels
    y.sum().backward()
    v = x.detach() / step
    assert torch.equal(x.grad, ((v >= -qn) & (v <= qp)).double())
    # Python's round() and torch.round both round half to even
    assert s.grad.item() == pytest.approx(
        reference_step_gradient(x.detach(), step, bits, signed), abs=1e-6
    )


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=40),
    offset=st.floats(-2.0, 0.0),
    bits=st.integers(2, 8),
)
def test_lsq_plus_offset_gradient_is_zero_inside_and_one_outside(values, offset, bits):
    x, step, b = leaf(values), leaf(0.25), leaf(offset)
    y = lsq_plus(x, step, b, bits)
    y.sum().backward()
    snapped = 0.25 * round(offset / 0.25)
    v = (x.detach() - snapped) / 0.25
    inside = (v >= 0) & (v <= (1 << bits) - 1)
    assert b.grad.item() == pytest.approx(float((~inside).sum()))
    assert torch.equal(x.grad, inside.double())
    # every output is the snapped offset plus a whole number of steps in [0, 2^k - 1]
    codes = (y.detach() - snapped) / 0.25
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    codes = codes.round()
    assert codes.min() >= 0 and codes.max() <= (1 << bits) - 1


# the quantizers in a model -----------------------------------------------------------------


def lsq_nin(quantizer: str = "lsq", **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(
        NIN(num_classes=10),
        input_shape=(3, 32, 32),
        quantizer=quantizer,
        wbits=4,
        abits=4,
        **options,
    )


def test_weight_steps_start_from_the_weights_and_activation_steps_from_the_first_batch():
    model = lsq_nin()
    layer = model.features[1][0]
    expected = 2 * layer.weight.detach().abs().mean() / math.sqrt(7)
    assert layer.weight_quantizer.step.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not layer.input_quantizer.initialized
    seen = {}
    layer.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0].detach()))
    model.train()(torch.randn(4, 3, 32, 32))
    first = 2 * seen["x"].abs().mean() / math.sqrt(15)  # unsigned 4 bits after ReLU: Qp 15
    assert layer.input_quantizer.step.item() == pytest.approx(first.item(), rel=1e-5)
    model(torch.randn(4, 3, 32, 32))  # later batches do not initialise again
    assert layer.input_quantizer.step.item() == pytest.approx(first.item(), rel=1e-5)


def test_per_channel_weight_steps_have_one_step_per_output_channel():
    layer = lsq_nin(per_channel_weights=True).features[1][0]
    assert layer.weight_quantizer.step.shape == (layer.out_channels, 1, 1, 1)
    grid = layer.weight_quantizer.grid(layer.weight)
    assert grid.axis == 0 and grid.scale.shape == (layer.out_channels,)


def test_steps_train_in_their_own_group_without_weight_decay_and_are_logged():
    model = lsq_nin()
    optimizer = torch.optim.SGD(param_groups(model), lr=0.1, weight_decay=5e-4)
    groups = {group["name"]: group for group in optimizer.param_groups}
    assert groups["step"]["weight_decay"] == 0.0 and groups["weights"]["weight_decay"] == 5e-4
    assert "features.1.0" in learned_values(model)["step"]
    assert "step/features.1.0.weight" in logged_values(model)


def test_lsq_plus_offset_starts_at_the_minimum_and_covers_hard_swish():
    quantizer = LearnedStepOffset(4).train()
    x = torch.nn.functional.hardswish(torch.linspace(-6, 6, 1000)).reshape(1, -1)
    quantizer(x)
    assert quantizer.offset.item() == pytest.approx(-0.375, abs=1e-3)
    assert quantizer.step.item() == pytest.approx((6 + 0.375) / 15, rel=1e-3)
    grid = quantizer.grid()
    assert grid.zero_point == round(0.375 / quantizer.step.item())


@pytest.mark.parametrize("quantizer", ["lsq", "lsq_plus"])
def test_packed_checkpoint_restores_lsq_models_bit_for_bit(tmp_path, quantizer):
    saved = lsq_nin(quantizer).train()
    saved(torch.randn(8, 3, 32, 32))  # activation steps from a first batch
    saved.eval()
    path = save_packed(saved, tmp_path / "model.safetensors")
    restored = load_packed(path, lsq_nin(quantizer).eval())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored(x), saved(x))


def test_lsq_plus_mobilenet_exports_its_offsets_as_zero_points(tmp_path):
    torch.manual_seed(0)
    model = quantize_model(
        MobileNetV3("small", num_classes=10, stem="cifar"),
        input_shape=(3, 32, 32),
        quantizer="lsq_plus",
        wbits=8,
        abits=8,
    )
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    offsets = [m for m in model.modules() if isinstance(m, LearnedStepOffset)]
    assert any(m.grid().zero_point > 0 for m in offsets)  # after hard-swish: below zero
    images = torch.randn(8, 3, 32, 32)
    path = export_int8_onnx(model, (3, 32, 32), tmp_path / "model.onnx")
    rows = [
        row for row in layer_parity(model, path, images, threads=1) if row["differ"] is not None
    ]
    # The first quantized inputs are computed the same way on both sides: codes equal but for
    # float ties; the order of float operations differs after that and one-step flips compound.
    assert rows[0]["differ"] < 0.001 and rows[0]["max_steps"] <= 1


def test_lsq_quantizers_state_their_grid():
    weight = LearnedStep(4, signed=True)
    weight.bind_weight(torch.randn(8, 3, 3, 3))
    grid = weight.grid(torch.randn(8, 3, 3, 3))
    assert (grid.qmin, grid.qmax, grid.signed, grid.axis) == (-8, 7, True, None)
    assert LearnedStep(32, signed=False).grid() is None
