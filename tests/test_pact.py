"""PACT and symmetric PACT against the formulas, and alpha's life in the optimizer."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lowbit.errors import ConfigError
from lowbit.quant import quantize_model
from lowbit.quant.functional import (
    channelwise_absmax_weight,
    dorefa_activation_signed,
    pact,
    pact_symmetric,
)
from lowbit.quant.modules import (
    ChannelAbsMaxWeight,
    DoReFaActivation,
    DoReFaSignedActivation,
    PACTActivation,
    PACTSymmetricActivation,
)
from lowbit.quant.optim import apply_lr_mult, learned_clips, param_groups
from lowbit.train import run


def alpha(value):
    return torch.tensor(float(value), requires_grad=True)


# pact --------------------------------------------------------------------------------------


def test_pact_forward_by_hand():
    x = torch.tensor([-1.0, 0.0, 0.4, 1.0, 1.6, 2.0, 5.0])
    # alpha 2, 2 bits: grid 0, 2/3, 4/3, 2; codes round(y * 3 / 2): 1.5 -> 2 (half to even)
    expected = torch.tensor([0, 0, 1, 2, 2, 3, 3]) * 2 / 3
    assert torch.allclose(pact(x, alpha(2), 2), expected)


def test_pact_32_bits_only_clips():
    x = torch.tensor([-1.0, 0.7, 3.0])
    assert torch.allclose(pact(x, alpha(2), 32), torch.tensor([0.0, 0.7, 2.0]))


def test_pact_gradients_inside_above_below():
    x = torch.tensor([-0.5, 0.3, 1.2, 2.0, 3.5], requires_grad=True)
    a = alpha(2)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    pact(x, a, 3).backward(upstream)
    # below 0: nothing; inside [0, alpha): straight through; x >= alpha: nothing to x...
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 0.0, 0.0]))
    # ...and everything to alpha (x = alpha counts as clipped, the paper's x >= alpha)
    assert a.grad.item() == pytest.approx(4.0 + 5.0)


def test_pact_alpha_gradient_is_zero_when_nothing_is_clipped():
    x = torch.tensor([0.1, 0.5], requires_grad=True)
    a = alpha(10)
    pact(x, a, 4).sum().backward()
    assert a.grad.item() == 0.0


@given(bits=st.integers(2, 8), seed=st.integers(0, 10_000), a=st.floats(0.1, 20.0))
@settings(max_examples=60, deadline=None)
def test_pact_properties(bits, seed, a):
    x = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * a
    alpha_t = torch.tensor(a)
    q = pact(x, alpha_t, bits)
    assert q.min() >= 0 and q.max() <= a * (1 + 1e-6)
    assert q.unique().numel() <= 2**bits
    assert torch.allclose(pact(q, alpha_t, bits), q, atol=1e-5 * a)


# symmetric pact ----------------------------------------------------------------------------


def test_pact_symmetric_forward_by_hand():
    x = torch.tensor([-5.0, -1.0, -0.2, 0.0, 0.4, 1.3, 9.0])
    # alpha 2, 3 bits: 3 steps each side, s = 2/3
    s = 2 / 3
    expected = torch.tensor([-3, -2, 0, 0, 1, 2, 3]) * s
    assert torch.allclose(pact_symmetric(x, alpha(2), 3), expected)


def test_pact_symmetric_matches_paddleocrs_relu_form_when_unquantized():
    x = torch.linspace(-4, 4, 33)
    a = torch.tensor(1.5)
    paddle = x - torch.relu(x - a) + torch.relu(-a - x)
    assert torch.allclose(pact_symmetric(x, a, 32), paddle)


def test_pact_symmetric_alpha_gradient_both_sides():
    x = torch.tensor([-3.0, -1.0, 0.5, 2.5, 4.0], requires_grad=True)
    a = alpha(2)
    upstream = torch.tensor([1.0, 10.0, 100.0, 1000.0, 10000.0])
    pact_symmetric(x, a, 4).backward(upstream)
    assert a.grad.item() == pytest.approx(1000.0 + 10000.0 - 1.0)  # +above, -below
    assert torch.equal(x.grad, torch.tensor([0.0, 10.0, 100.0, 0.0, 0.0]))


def test_pact_symmetric_refuses_one_bit():
    with pytest.raises(ValueError, match="at least 2 bits"):
        pact_symmetric(torch.randn(3), torch.tensor(1.0), 1)


@given(bits=st.integers(2, 8), seed=st.integers(0, 10_000), a=st.floats(0.1, 20.0))
@settings(max_examples=60, deadline=None)
def test_pact_symmetric_properties(bits, seed, a):
    x = torch.randn(64, generator=torch.Generator().manual_seed(seed)) * a
    alpha_t = torch.tensor(a)
    q = pact_symmetric(x, alpha_t, bits)
    assert q.abs().max() <= a * (1 + 1e-6)
    assert q.unique().numel() <= 2**bits - 1  # 2^(k-1)-1 each side and zero
    assert torch.allclose(pact_symmetric(q, alpha_t, bits), q, atol=1e-5 * a)
    assert torch.allclose(pact_symmetric(-x, alpha_t, bits), -q, atol=1e-5 * a)  # odd


# the other signed quantizers -------------------------------------------------------------------


def test_signed_dorefa_activation_keeps_negatives_and_zero():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    q = dorefa_activation_signed(x, 3)  # 3 steps each side on [-1, 1]
    assert torch.allclose(q, torch.tensor([-3, -2, 0, 2, 3]) / 3)  # -1.5 rounds half to even


def test_channelwise_absmax_uses_one_scale_per_output_channel():
    w = torch.tensor([[0.1, -0.04], [4.0, -1.0]])
    q = channelwise_absmax_weight(w, 3)  # 3 steps each side
    assert torch.allclose(q[0], torch.tensor([0.1, -0.0333333]), atol=1e-6)
    assert torch.allclose(q[1], torch.tensor([4.0, -4 / 3]))


# policy and optimizer -----------------------------------------------------------------------


class SignedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.after_relu = nn.Conv2d(8, 8, 3, padding=1)
        self.after_hardswish = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.after_relu(torch.relu(self.stem(x)))
        x = self.after_hardswish(nn.functional.hardswish(x))
        return self.head(x.mean((2, 3)))  # no activation before the head: signed


@pytest.mark.parametrize(
    "quantizer, after_relu, signed",
    [
        ("pact", PACTActivation, PACTSymmetricActivation),
        ("pact_symmetric", PACTSymmetricActivation, PACTSymmetricActivation),
        ("dorefa", None, DoReFaSignedActivation),
    ],
)
def test_signed_inputs_get_a_signed_grid(quantizer, after_relu, signed):
    model = quantize_model(
        SignedNet(), quantizer=quantizer, wbits=4, abits=4, input_shape=(3, 8, 8)
    )
    if after_relu is not None:
        assert type(model.after_relu.input_quantizer) is after_relu
    assert type(model.after_hardswish.input_quantizer) is signed
    assert type(model.head.input_quantizer) is signed


@pytest.mark.parametrize(
    "quantizer, unsigned",
    [
        ("pact", PACTActivation),
        ("dorefa", DoReFaActivation),
    ],
)
def test_signed_inputs_never_keeps_the_papers_unsigned_grid(quantizer, unsigned):
    model = quantize_model(
        SignedNet(),
        quantizer=quantizer,
        wbits=4,
        abits=4,
        signed_inputs="never",
        input_shape=(3, 8, 8),
    )
    for layer in (model.after_relu, model.after_hardswish, model.head):
        assert type(layer.input_quantizer) is unsigned


@pytest.mark.parametrize(
    "quantizer, signed_inputs, message",
    [
        ("pact", "sometimes", "quant.signed_inputs='sometimes' is unknown"),
        ("pact_symmetric", "never", "contradicts quantizer=pact_symmetric"),
    ],
)
def test_bad_signed_inputs_modes_are_refused(quantizer, signed_inputs, message):
    with pytest.raises(ConfigError, match=message):
        quantize_model(
            SignedNet(),
            quantizer=quantizer,
            wbits=4,
            abits=4,
            signed_inputs=signed_inputs,
            input_shape=(3, 8, 8),
        )


def test_pact_options_reach_the_modules_and_the_weight_quantizer():
    model = quantize_model(
        SignedNet(),
        quantizer="pact",
        wbits=4,
        abits=4,
        alpha_init=3.0,
        alpha_decay=1e-3,
        alpha_lr_mult=100.0,
        weight_quantizer="channel_wise_abs_max",
    )
    clip = model.after_relu.input_quantizer
    assert clip.alpha.item() == 3.0 and clip.alpha_decay == 1e-3 and clip.alpha_lr_mult == 100
    assert isinstance(model.after_relu.weight_quantizer, ChannelAbsMaxWeight)


def test_alpha_decay_and_lr_multiplier_are_optimizer_parameter_groups():
    model = quantize_model(
        SignedNet(), quantizer="pact", wbits=4, abits=4, alpha_decay=2e-5, alpha_lr_mult=1000.0
    )
    optimizer = torch.optim.SGD(param_groups(model), lr=0.1, weight_decay=5e-4)
    apply_lr_mult(optimizer)
    weights, alphas = optimizer.param_groups
    assert weights["lr"] == 0.1 and weights["weight_decay"] == 5e-4
    assert alphas["lr"] == pytest.approx(100.0) and alphas["weight_decay"] == 2e-5
    clips = learned_clips(model)
    assert {id(p) for p in alphas["params"]} == {id(c.alpha) for c in clips.values()}
    assert len(weights["params"]) + len(alphas["params"]) == len(list(model.parameters()))


def test_alpha_decay_null_uses_the_optimizers_weight_decay():
    model = quantize_model(SignedNet(), quantizer="pact", wbits=4, abits=4)
    optimizer = torch.optim.SGD(param_groups(model), lr=0.1, weight_decay=5e-4)
    assert optimizer.param_groups[1]["weight_decay"] == 5e-4


@pytest.mark.parametrize(
    "option, message",
    [
        ({"alpha_init": 0}, "alpha_init must be > 0"),
        ({"weight_quantizer": "lsq"}, "weight_quantizer='lsq' is unknown"),
        ({"alpha_lr_mult": -1}, "alpha_lr_mult must be > 0"),
    ],
)
def test_bad_pact_options(option, message):
    from lowbit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        quantize_model(SignedNet(), quantizer="pact", wbits=4, abits=4, **option)


def test_pact_symmetric_refuses_one_bit_activations_up_front():
    from lowbit.errors import ConfigError

    with pytest.raises(ConfigError, match="abits=1"):
        quantize_model(SignedNet(), quantizer="pact_symmetric", wbits=4, abits=1)


def test_alpha_moves_during_a_short_training_run_and_is_recorded(make_cfg):
    from pathlib import Path

    from wandb_offline import read_offline_run

    cfg = make_cfg(
        "quantizer=pact",
        "quant.alpha_init=2.0",
        "quant.alpha_lr_mult=10",
        "quant.wbits=2",
        "quant.abits=2",
        "logger=wandb",
        "callbacks=none",
        "trainer.log_every_n_steps=1",
        "trainer.limit_train_batches=6",
    )
    results = run(cfg)
    alphas = results["alpha"]
    assert set(alphas) == {f"features.{i}.0" for i in (1, 2, 4, 5, 6, 8, 9, 10)}
    assert any(abs(value - 2.0) > 1e-3 for value in alphas.values()), alphas
    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    logged = read_offline_run(run_dir)
    series = [step["alpha/features.1.0"] for step in logged.history if "alpha/features.1.0" in step]
    assert len(series) >= 2


@pytest.mark.parametrize("module", [PACTActivation, PACTSymmetricActivation])
def test_alpha_never_goes_below_its_minimum(module):
    clip = module(2, alpha_init=1.0)
    optimizer = torch.optim.SGD(clip.parameters(), lr=100.0)
    x = torch.full((4,), 5.0)  # everything clipped: d loss / d alpha = 4 > 0
    clip(x).sum().backward()
    optimizer.step()
    assert clip.alpha.item() < 0  # the step alone would leave alpha negative...
    y = clip(x)
    assert clip.alpha.item() == pytest.approx(module.ALPHA_MIN)  # ...the next forward projects
    assert torch.all(y > 0)


@pytest.mark.parametrize("module", [PACTActivation, PACTSymmetricActivation])
def test_an_eval_forward_after_the_last_step_sees_a_valid_alpha(module):
    clip = module(2, alpha_init=1.0)
    with torch.no_grad():
        clip.alpha.fill_(-3.0)  # as a last optimizer step may leave it
    clip.eval()
    with torch.inference_mode():  # as Lightning validates and tests
        y = clip(torch.full((4,), 5.0))
    assert clip.alpha.item() == pytest.approx(module.ALPHA_MIN)
    assert torch.all(y > 0)


@pytest.mark.parametrize(
    "module, magnitude",
    [
        (PACTActivation, lambda x: x.clamp(min=0)),
        (PACTSymmetricActivation, lambda x: x.abs()),
    ],
)
def test_alpha_calibration_takes_the_percentile_of_the_first_training_batch(module, magnitude):
    clip = module(4, alpha_init=10.0, alpha_calibration=90.0)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0)) * 3
    clip.eval()
    clip(x)
    assert clip.alpha.item() == 10.0  # never in eval mode
    clip.train()
    clip(x)
    assert clip.alpha.item() == pytest.approx(torch.quantile(magnitude(x).flatten(), 0.9).item())
    calibrated = clip.alpha.item()
    clip(x * 100)
    assert clip.alpha.item() == calibrated  # only once
    assert bool(clip.state_dict()["calibrated"])  # and the checkpoint remembers it
    fresh = module(4, alpha_init=10.0, alpha_calibration=90.0)
    fresh.load_state_dict(clip.state_dict())
    fresh.train()
    fresh(x * 100)
    assert fresh.alpha.item() == calibrated


def test_alpha_calibration_is_validated():
    from lowbit.errors import ConfigError

    with pytest.raises(ConfigError, match="alpha_calibration must be a percentile"):
        quantize_model(SignedNet(), quantizer="pact", wbits=4, abits=4, alpha_calibration=150)
