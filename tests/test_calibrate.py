"""Calibration of activation quantizers from batches (lowbit.quant.calibrate), against hand-
computed ranges: the quantized layer's input is the float model's there, since the layers
around it are kept in float."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.quant import quantize_model
from lowbit.quant.calibrate import calibrate, reestimate_batchnorm


def three_convs(activation: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        activation(),
        nn.Conv2d(8, 8, 1),  # the one quantized layer: its input is what calibration sees
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
    )


BATCHES = [torch.randn(4, 3, 6, 6) * (i + 1) for i in range(3)]


def middle_input(model: nn.Module) -> torch.Tensor:
    """Every value that reaches the middle conv over BATCHES, in eval mode."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model[:3](x).flatten() for x in BATCHES])


def quantized(activation: type[nn.Module], quantizer: str, **options) -> nn.Sequential:
    return quantize_model(
        three_convs(activation),
        quantizer=quantizer,
        wbits=4,
        abits=4,
        gbits=32,
        first_layer_bits=32,
        last_layer_bits=32,
        input_shape=(3, 6, 6),
        **options,
    )


def test_pact_alpha_is_the_range_top_min_max_or_percentile():
    seen = middle_input(three_convs(nn.ReLU))
    model = quantized(nn.ReLU, "pact")
    calibrate(model, BATCHES, method="minmax", batches=3)
    assert model[3].input_quantizer.alpha.item() == pytest.approx(seen.max().item(), rel=1e-6)
    calibrate(model, BATCHES, method="percentile", percentile=90, batches=3)
    expected = torch.quantile(seen, 0.9).item()
    assert model[3].input_quantizer.alpha.item() == pytest.approx(expected, rel=1e-5)
    assert bool(model[3].input_quantizer.calibrated)


def test_lsq_step_puts_the_range_on_the_grid_s_ends_signed_inputs_too():
    seen = middle_input(three_convs(nn.Hardswish))  # hard-swish: a signed input
    model = quantized(nn.Hardswish, "lsq")
    quantizer = model[3].input_quantizer
    assert quantizer.signed and (quantizer.qn, quantizer.qp) == (8, 7)
    calibrate(model, BATCHES, method="minmax", batches=3)
    expected = max(seen.max().item() / 7, -seen.min().item() / 8)
    assert quantizer.step.item() == pytest.approx(expected, rel=1e-6)
    assert quantizer.is_initialized  # the first training batch leaves it


def test_lsq_plus_offset_is_the_range_bottom_and_step_covers_the_rest():
    seen = middle_input(three_convs(nn.Hardswish))
    model = quantized(nn.Hardswish, "lsq_plus")
    calibrate(model, BATCHES, method="minmax", batches=3)
    quantizer = model[3].input_quantizer
    assert quantizer.offset.item() == pytest.approx(seen.min().item(), rel=1e-6)
    expected = (seen.max() - seen.min()).item() / 15
    assert quantizer.step.item() == pytest.approx(expected, rel=1e-6)


def test_dorefa_has_nothing_to_calibrate_and_the_model_keeps_its_mode_and_statistics():
    model = quantized(nn.ReLU, "dorefa").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate(model, BATCHES, batches=3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_only_the_asked_number_of_batches_is_read():
    model = quantized(nn.ReLU, "pact")
    calibrate(model, BATCHES, method="minmax", batches=1)
    first = middle_input(three_convs(nn.ReLU))[: BATCHES[0].numel() // 3 * 8]
    assert model[3].input_quantizer.alpha.item() == pytest.approx(first.max().item(), rel=1e-6)


def test_batchnorm_re_estimation_is_the_average_over_the_batches():
    model = quantized(nn.ReLU, "pact")
    reestimate_batchnorm(model, BATCHES, batches=3)
    with torch.no_grad():
        means = torch.stack([model[0](x).mean(dim=(0, 2, 3)) for x in BATCHES])
    torch.testing.assert_close(model[1].running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    assert model[1].momentum == 0.1  # restored


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"method": "kl"}, "calibration.method='kl' is unknown"),
        ({"percentile": 30}, "calibration.percentile must be in (50, 100]"),
        ({"batches": 0}, "calibration.batches must be an integer >= 1"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError) as error:
        calibrate(quantized(nn.ReLU, "pact"), BATCHES, **settings)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_mse_picks_the_candidate_step_with_the_least_quantization_error():
    from lowbit.quant.calibrate import MSE_CANDIDATES, ObservedActivation

    torch.manual_seed(0)
    x = torch.randn(20_000) ** 3  # heavy tails: clipping pays at few levels
    observed = ObservedActivation("mse")
    observed.add(x)
    for qn, qp in ((2, 1), (128, 127)):
        widest = max(x.max().item() / qp, -x.min().item() / qn)
        candidates = [widest * k / MSE_CANDIDATES for k in range(1, MSE_CANDIDATES + 1)]

        def error(step, qn=qn, qp=qp):
            return ((torch.clamp(torch.round(x / step), -qn, qp) * step - x) ** 2).mean().item()

        best = min(candidates, key=error)
        assert observed.step(qn, qp).item() == pytest.approx(best, rel=1e-5)
    # 2-bit: the tails are clipped (a far smaller step than min-max's); 8-bit: much less
    assert observed.step(2, 1).item() < 0.2 * max(x.max().item(), -x.min().item() / 2)
    assert observed.step(128, 127).item() > 0.2 * max(x.max().item() / 127, -x.min().item() / 128)
