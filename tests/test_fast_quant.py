"""The fused quantizers against plain references written from the formulas, bit for bit.

``lowbit.quant.functional`` computes each quantizer in few in-place ops for speed; these
references are the formulas spelled out one op at a time (DoReFa Eq. 9/11/12, PACT Eq. 1-3,
symmetric PACT), with gradients written out by hand. Forward values must be identical (not
close), gradients equal. The gradient quantizer computes Eq. 12 in another float order than the
formula, so with the same noise it may round differently only where the two land within float
rounding of a rounding boundary: a vanishing share of elements, one step apart.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.quant import functional as Q
from lowbit.quant import quantize_model
from lowbit.quant.modules import DoReFaActivation, PACTActivation

DTYPES = [torch.float32, torch.float64]


def awkward_tensor(shape, seed, dtype, scale=1.5, alpha=None):
    """Random values plus the edge cases of every clip: 0, -0, the bounds, half-grid points."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale
    flat = x.view(-1)
    special = [0.0, -0.0, 1.0, -1.0, 0.5, 1 / 6, 2.5, -3.0, 1e-30, -1e-30]
    if alpha is not None:
        special += [alpha, -alpha, alpha / 2, alpha * (1 + 1e-7)]
    flat[: len(special)] = torch.tensor(special, dtype=dtype)
    return x


class STERound(torch.autograd.Function):
    """round(n x) / n forward, identity backward: DoReFa's quantize_k (Eq. 5)."""

    @staticmethod
    def forward(ctx, x, n):
        return torch.round(x * n) / n

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def reference_activation(x, bits, scale, signed):
    """Eq. 11 (unsigned) or its symmetric variant: quantize(clip(scale x, low, 1))."""
    n = Q.symmetric_levels(bits) if signed else 2**bits - 1
    return STERound.apply(torch.clamp(x * scale, -1.0 if signed else 0.0, 1.0), n)


def reference_gradient(g, bits, key):
    """Eq. 12: 2m [quantize_k(g / 2m + 1/2 + N(k)) - 1/2], m = max|g| per sample."""
    n = 2**bits - 1
    flat = g.reshape(g.shape[0], -1)
    m = flat.abs().amax(dim=1, keepdim=True)
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    noise = Q.uniform_noise(key, flat.shape, g.device).to(g.dtype) / n
    shifted = torch.clamp(flat / (2 * safe_m) + 0.5 + noise, 0.0, 1.0)
    return ((torch.round(shifted * n) / n - 0.5) * (2 * m)).reshape(g.shape)


def assert_same_up_to_float_ties(actual, expected, g, bits):
    """Equal values up to float rounding, but for at most 0.1% of elements one grid step
    (2m / n) apart."""
    n = 2**bits - 1
    flat = g.reshape(g.shape[0], -1) if g.dim() > 1 else g.reshape(1, -1)
    m = flat.abs().amax(dim=1, keepdim=True).expand_as(flat).reshape(g.shape)
    step, rounding = 2 * m / n, 8 * torch.finfo(g.dtype).eps * m  # float error of either form
    off = (actual - expected).abs()
    close = off <= rounding
    one_step = (off - step).abs() <= rounding
    assert bool((close | one_step).all())
    assert (~close).float().mean().item() <= 1e-3


def reference_pact(x, alpha, bits):
    """PACT Eq. 1-2: y = clip(x, 0, alpha), round(y / s) s with s = alpha / (2^k - 1)."""
    y = torch.minimum(torch.clamp(x, min=0), alpha)
    if bits >= Q.FULL_PRECISION:
        return y
    step = alpha / (2**bits - 1)
    return torch.round(y / step) * step


def reference_pact_symmetric(x, alpha, bits):
    """clip(x, -alpha, alpha) on a grid of s = alpha / (2^(k-1) - 1), round(y / s) s."""
    y = torch.maximum(torch.minimum(x, alpha), -alpha)
    if bits >= Q.FULL_PRECISION:
        return y
    step = alpha / Q.symmetric_levels(bits)
    return torch.round(y / step) * step


# activations --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("scale", [1.0, 0.1, 3.0])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_is_bit_identical_to_the_formula(bits, scale, signed, dtype):
    x = awkward_tensor((8, 6, 5, 5), seed=bits, dtype=dtype, scale=2.0 / scale)
    x[0, 0, 0, :3] = torch.tensor([1.0, -1.0, 0.0], dtype=dtype) / scale  # clip bounds exactly
    x_ref = x.clone().requires_grad_()
    x_new = x.clone().requires_grad_()
    quantize = Q.dorefa_activation_signed if signed else Q.dorefa_activation
    expected = reference_activation(x_ref, bits, scale, signed)
    actual = quantize(x_new, bits, scale)
    assert actual.dtype == dtype
    assert torch.equal(actual, expected)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    expected.backward(upstream)
    actual.backward(upstream)
    # straight-through strictly inside the clip range (as clamp), scale times the upstream
    assert torch.equal(x_new.grad, x_ref.grad)


def test_activation_gradient_excludes_the_clip_bounds_as_clamp_does():
    x = torch.tensor([-0.1, -0.0, 0.0, 1e-30, 0.5, 1.0, 1.1, float("inf")], requires_grad=True)
    Q.dorefa_activation(x, 4).backward(torch.ones(8))
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]))


def test_activation_without_grad_saves_nothing_and_gives_the_same_values():
    x = awkward_tensor((4, 50), seed=3, dtype=torch.float32)
    with torch.no_grad():
        values = Q.dorefa_activation(x, 3)
    assert torch.equal(values, reference_activation(x, 3, 1.0, signed=False))


def test_activation_leaves_its_input_alone():
    x = awkward_tensor((4, 50), seed=4, dtype=torch.float32)
    before = x.clone()
    Q.dorefa_activation(x, 3)
    Q.dorefa_activation_signed(x, 3, scale=0.5)
    assert torch.equal(x, before)


# gradients (Eq. 12) -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(16, 7, 5, 5), (9, 10), (33,)])
def test_gradient_quantizer_matches_the_formula_with_the_same_noise(bits, shape, dtype):
    g = awkward_tensor(shape, seed=bits, dtype=dtype) * 1e-3
    if len(shape) > 1:
        g[3] = 0.0  # an all-zero sample stays zero
    key = Q.draw_key(11, torch.tensor(3))
    if len(shape) == 1:  # a 1-D gradient is one sample
        expected = reference_gradient(g.reshape(1, -1), bits, key).reshape(shape)
    else:
        expected = reference_gradient(g, bits, key)
    actual = Q.quantize_gradient_tensor(g, bits, key)
    assert actual.dtype == dtype
    assert_same_up_to_float_ties(actual, expected, g, bits)
    if len(shape) > 1:
        assert torch.equal(actual[3], torch.zeros_like(actual[3]))


def test_gradient_quantizer_with_the_global_generator_draws_one_key():
    g = awkward_tensor((8, 3, 4, 4), seed=5, dtype=torch.float32)
    torch.manual_seed(123)
    first = Q.quantize_gradient_tensor(g, 4, None)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(Q.quantize_gradient_tensor(g, 4, None), first)
    torch.manual_seed(123)
    torch.randint(0, 1 << 62, ())  # the one draw the key takes
    assert torch.equal(torch.rand(3), after)


def test_gradient_quantizer_leaves_the_incoming_gradient_alone():
    g = awkward_tensor((4, 30), seed=6, dtype=torch.float32)
    before = g.clone()
    Q.quantize_gradient_tensor(g, 3, torch.Generator().manual_seed(0))
    assert torch.equal(g, before)


def test_dorefa_gradient_backward_matches_the_formula_and_spares_the_upstream():
    x = torch.randn(6, 4, 3, requires_grad=True)
    upstream = torch.randn(6, 4, 3, generator=torch.Generator().manual_seed(2))
    kept = upstream.clone()
    key = Q.draw_key(9, torch.tensor(0))
    Q.dorefa_gradient(x, 3, key).backward(upstream)
    assert_same_up_to_float_ties(x.grad, reference_gradient(upstream, 3, key), upstream, 3)
    assert torch.equal(upstream, kept)


# PACT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8, 32])
def test_pact_is_bit_identical_to_the_formula(bits, dtype):
    a = 1.7
    x = awkward_tensor((8, 6, 5, 5), seed=bits, dtype=dtype, scale=2.0, alpha=a)
    alpha = torch.tensor(a, dtype=dtype, requires_grad=True)
    x_new = x.clone().requires_grad_()
    actual = Q.pact(x_new, alpha, bits)
    assert torch.equal(actual, reference_pact(x, alpha.detach(), bits))
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    actual.backward(upstream)
    # Eq. 3: x gets the upstream on [0, alpha); alpha gets its sum where x >= alpha
    assert torch.equal(x_new.grad, upstream * ((x >= 0) & (x < a)))
    assert torch.equal(alpha.grad, (upstream * (x >= a)).sum())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [2, 4, 8, 32])
def test_pact_symmetric_is_bit_identical_to_the_formula(bits, dtype):
    a = 1.7
    x = awkward_tensor((8, 6, 5, 5), seed=bits, dtype=dtype, scale=2.0, alpha=a)
    alpha = torch.tensor(a, dtype=dtype, requires_grad=True)
    x_new = x.clone().requires_grad_()
    actual = Q.pact_symmetric(x_new, alpha, bits)
    assert torch.equal(actual, reference_pact_symmetric(x, alpha.detach(), bits))
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    actual.backward(upstream)
    # x straight-through on [-alpha, alpha]; alpha gets +upstream above, -upstream below
    assert torch.equal(x_new.grad, upstream * ((x >= -a) & (x <= a)))
    expected_alpha = (upstream * (x > a)).sum() - (upstream * (x < -a)).sum()
    assert torch.equal(alpha.grad, expected_alpha)


def test_pact_leaves_its_input_and_alpha_alone():
    x = awkward_tensor((4, 30), seed=8, dtype=torch.float32, alpha=1.0)
    alpha = torch.tensor(1.0)
    before = x.clone()
    Q.pact(x, alpha, 3)
    Q.pact_symmetric(x, alpha, 3)
    assert torch.equal(x, before) and alpha.item() == 1.0


# modules ------------------------------------------------------------------------------------


def test_modules_without_autocast_match_the_functions():
    x = awkward_tensor((4, 8, 3, 3), seed=9, dtype=torch.float32, scale=3.0)
    assert torch.equal(DoReFaActivation(4, scale=0.5)(x), Q.dorefa_activation(x, 4, 0.5))
    clip = PACTActivation(4, alpha_init=2.0)
    assert torch.equal(clip(x), Q.pact(x, clip.alpha, 4))


def test_a_quantized_step_is_reproducible_from_a_seed():
    def step():
        torch.manual_seed(0)
        model = quantize_model(
            nn.Sequential(
                nn.Conv2d(3, 8, 3),
                nn.ReLU(),
                nn.Conv2d(8, 8, 3),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(8 * 4 * 4, 10),
            ),
            quantizer="dorefa",
            wbits=4,
            abits=4,
            gbits=4,
            input_shape=(3, 8, 8),
        )
        model(torch.randn(4, 3, 8, 8)).logsumexp(dim=1).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(step(), step()))


# step timing --------------------------------------------------------------------------------


def tiny_model():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def test_training_step_ratios_structure():
    from lowbit.measure.step_time import training_step_ratios

    threads = torch.get_num_threads()
    result = training_step_ratios(
        {"float": None, "w4a4g8": {"quantizer": "dorefa", "wbits": 4, "abits": 4, "gbits": 8}},
        batch_size=4,
        input_shape=(3, 8, 8),
        threads=1,
        warmup=1,
        repeats=2,
        model_factory=tiny_model,
    )
    assert set(result) == {"float", "w4a4g8"}
    assert result["float"]["ratio"] == 1.0
    for entry in result.values():
        assert entry["ms"] > 0 and entry["ratio"] > 0 and len(entry["times_ms"]) == 2
        assert entry["threads"] == 1 and entry["batch_size"] == 4
    assert result["w4a4g8"]["ratio"] == result["w4a4g8"]["ms"] / result["float"]["ms"]
    # paired: the median of the two rounds' ratios, inside the range of those ratios
    rounds = [
        quantized / fp32
        for quantized, fp32 in zip(result["w4a4g8"]["times_ms"], result["float"]["times_ms"])
    ]
    assert result["w4a4g8"]["paired_ratio"] == pytest.approx(sum(rounds) / 2)
    assert result["w4a4g8"]["paired_interval"] == [min(rounds), max(rounds)]
    assert result["w4a4g8"]["paired_coverage"] == pytest.approx(0.5)  # two rounds: the range
    assert result["float"]["paired_ratio"] == 1.0
    assert torch.get_num_threads() == threads  # restored
    for entry in result.values():  # eager: the first step is reported, no compile time
        assert entry["compiled"] is False and entry["first_step_s"] > 0
        assert "compile_s" not in entry


def test_median_interval_is_the_order_statistics_with_95_percent_coverage():
    from lowbit.measure.step_time import median_interval

    # the textbook pairs: 15 values -> 4th and 12th, 21 -> 6th and 16th (coverage >= 95%)
    assert median_interval(list(range(1, 16)))[:2] == (4, 12)
    assert median_interval(list(range(1, 16)))[2] == pytest.approx(1 - 2 * 576 / 2**15)
    assert median_interval(list(reversed(range(1, 22))))[:2] == (6, 16)
    low, high, coverage = median_interval([5.0, 1.0, 3.0])  # too few for 95%: the range
    assert (low, high) == (1.0, 5.0) and coverage == pytest.approx(0.75)
    with pytest.raises(ValueError):
        median_interval([])


def test_unknown_layout_is_refused():
    from lowbit.measure.step_time import training_step_ratios

    with pytest.raises(ValueError, match="layouts"):
        training_step_ratios({"float": None}, layouts=("nchw", "nwhc"), model_factory=tiny_model)


def test_compiled_step_timing_needs_a_warm_up_step():
    from lowbit.measure.step_time import training_step_ratios

    with pytest.raises(ValueError, match="warmup >= 2"):
        training_step_ratios(
            {"float": None},
            batch_size=2,
            input_shape=(3, 8, 8),
            warmup=1,
            repeats=1,
            model_factory=tiny_model,
            compile=True,
        )


@pytest.mark.slow  # compiles the model twice
def test_compiled_step_timing_reports_the_compile_on_its_own():
    from lowbit.measure.step_time import training_step_ratios

    result = training_step_ratios(
        {"float": None, "w4a4g8": {"quantizer": "dorefa", "wbits": 4, "abits": 4, "gbits": 8}},
        batch_size=2,
        input_shape=(3, 8, 8),
        threads=1,
        warmup=2,
        repeats=2,
        model_factory=tiny_model,
        compile=True,
    )
    for entry in result.values():
        assert entry["compiled"] and 0 < entry["compile_s"] <= 2 * entry["first_step_s"]
        assert len(entry["times_ms"]) == 2  # the compiling steps are not among them


def test_training_step_ratios_adds_the_fp32_baseline():
    from lowbit.measure.step_time import training_step_ratios

    result = training_step_ratios(
        {"pact": {"quantizer": "pact", "wbits": 4, "abits": 4}},
        batch_size=2,
        input_shape=(3, 8, 8),
        threads=None,
        warmup=0,
        repeats=1,
        model_factory=tiny_model,
    )
    assert list(result) == ["fp32", "pact"] and result["fp32"]["ratio"] == 1.0
