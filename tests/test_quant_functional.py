"""DoReFa maths against the paper's formulas: hand-checked values first, then properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.quant import dorefa_activation, dorefa_gradient, dorefa_weight, quantize_k
from lowbit.quant.functional import draw_key, quantize_gradient_tensor, uniform_noise

bits_below_fp = st.integers(min_value=2, max_value=8)
shapes = st.sampled_from([(7,), (3, 5), (2, 3, 4, 4), (4, 8)])


def random_tensor(shape, seed, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scale


# quantize_k ---------------------------------------------------------------------------------


def test_quantize_k_hand_checked_2_bits():
    x = torch.tensor([0.0, 0.1, 0.2, 0.49, 0.51, 0.9, 1.0])
    # n = 3: the grid is 0, 1/3, 2/3, 1; round(3x)/3.
    expected = torch.tensor([0, 0, 1, 1, 2, 3, 3]) / 3
    assert torch.allclose(quantize_k(x, 2), expected)


def test_quantize_k_gradient_is_straight_through():
    x = torch.rand(10, requires_grad=True)
    upstream = torch.randn(10)
    quantize_k(x, 3).backward(upstream)
    assert torch.equal(x.grad, upstream)


def test_quantize_k_32_bits_is_identity():
    x = torch.randn(5)
    assert quantize_k(x, 32) is x


@given(bits=bits_below_fp, seed=st.integers(0, 10_000), shape=shapes)
@settings(max_examples=60, deadline=None)
def test_quantize_k_levels_and_idempotence(bits, seed, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    q = quantize_k(x, bits)
    n = 2**bits - 1
    codes = q * n
    assert torch.allclose(codes, codes.round(), atol=1e-4)  # on the k-bit grid
    assert q.unique().numel() <= 2**bits
    assert torch.allclose(quantize_k(q, bits), q)  # idempotent
    assert (q - x).abs().max() <= 0.5 / n + 1e-6  # nearest grid point


# weights ------------------------------------------------------------------------------------


def test_dorefa_weight_matches_equation_9_by_hand():
    w = torch.tensor([-2.0, -0.3, 0.0, 0.3, 2.0])
    t = torch.tanh(w)
    r = t / (2 * t.abs().max()) + 0.5
    expected = 2 * torch.round(r * 3) / 3 - 1
    assert torch.allclose(dorefa_weight(w, 2), expected)
    # The largest |w| reaches the ends of [-1, 1].
    assert dorefa_weight(w, 2).abs().max() == 1.0


def test_dorefa_weight_one_bit_is_sign_times_mean_abs():
    w = torch.tensor([[-2.0, 0.5], [1.5, -0.1]])
    expected = torch.sign(w) * w.abs().mean()
    assert torch.allclose(dorefa_weight(w, 1), expected)


def test_dorefa_weight_one_bit_gradient_reaches_weights():
    w = torch.randn(6, requires_grad=True)
    dorefa_weight(w, 1).sum().backward()
    assert torch.equal(w.grad, torch.ones(6))


def test_dorefa_weight_gradient_flows_through_tanh():
    w = torch.tensor([0.1, -0.5, 0.8], requires_grad=True)
    dorefa_weight(w, 4).sum().backward()
    assert w.grad is not None and torch.all(w.grad.abs() > 0)


def test_dorefa_weight_32_bits_is_identity():
    w = torch.randn(3, 3)
    assert dorefa_weight(w, 32) is w


@given(bits=bits_below_fp, seed=st.integers(0, 10_000), shape=shapes, scale=st.floats(1e-3, 100))
@settings(max_examples=60, deadline=None)
def test_dorefa_weight_properties(bits, seed, shape, scale):
    w = random_tensor(shape, seed, scale)
    q = dorefa_weight(w, bits)
    n = 2**bits - 2 if bits == 8 else 2**bits - 1  # 8 bits: the narrow range (test below)
    assert q.min() >= -1 and q.max() <= 1
    codes = (q + 1) / 2 * n
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert q.unique().numel() <= 2**bits
    # The tensor's extreme value always maps to +-1 exactly (max over the whole tensor).
    assert math.isclose(q.abs().max().item(), 1.0, abs_tol=1e-6)


def test_dorefa_weight_max_is_over_the_whole_tensor_not_per_row():
    w = torch.tensor([[0.1, 0.05], [3.0, -3.0]])
    q = dorefa_weight(w, 2)
    # Per-row maxima would send the first row to +-1; the whole-tensor max does not.
    assert q[0].abs().max() < 1


# activations --------------------------------------------------------------------------------


def test_dorefa_activation_clips_to_unit_interval_then_rounds():
    x = torch.tensor([-1.0, 0.2, 0.5, 0.9, 3.0])
    expected = torch.tensor([0, 1, 2, 3, 3]) / 3  # round(3 * clip(x, 0, 1)) / 3
    # 0.5 * 3 = 1.5 rounds half to even: 2
    assert torch.allclose(dorefa_activation(x, 2), expected)


def test_dorefa_activation_scale_multiplies_before_the_clip():
    x = torch.tensor([5.0, 20.0])
    assert torch.allclose(
        dorefa_activation(x, 8, scale=0.1), torch.round(torch.tensor([0.5, 1.0]) * 255) / 255
    )


def test_dorefa_activation_gradient_zero_outside_clip_range():
    x = torch.tensor([-0.5, 0.3, 0.7, 1.5], requires_grad=True)
    dorefa_activation(x, 4).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


def test_dorefa_activation_32_bits_is_identity():
    x = torch.randn(4) * 5
    assert dorefa_activation(x, 32) is x


@given(bits=st.integers(1, 8), seed=st.integers(0, 10_000), shape=shapes)
@settings(max_examples=60, deadline=None)
def test_dorefa_activation_properties(bits, seed, shape):
    x = random_tensor(shape, seed, 2.0)
    q = dorefa_activation(x, bits)
    assert q.min() >= 0 and q.max() <= 1
    assert q.unique().numel() <= 2**bits
    assert torch.allclose(dorefa_activation(q, bits), q)


# gradients ----------------------------------------------------------------------------------


def test_dorefa_gradient_forward_is_identity():
    x = torch.randn(4, 3, requires_grad=True)
    assert torch.equal(dorefa_gradient(x, 4), x)


def test_dorefa_gradient_32_bits_passes_gradient_unchanged():
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    dorefa_gradient(x, 32).backward(upstream)
    assert torch.equal(x.grad, upstream)


@given(bits=bits_below_fp, seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_quantized_gradient_lies_on_the_per_sample_grid(bits, seed):
    g = random_tensor((4, 3, 5), seed)
    g[2] *= 100  # one sample with a much larger range must not coarsen the others' grids
    q = quantize_gradient_tensor(g, bits, torch.Generator().manual_seed(seed))
    n = 2**bits - 1
    m = g.reshape(4, -1).abs().amax(dim=1)
    for i in range(4):
        codes = (q[i] / (2 * m[i]) + 0.5) * n  # Eq. 12 inverted: the integer code
        assert torch.allclose(codes, codes.round(), atol=1e-3)
        assert q[i].abs().max() <= m[i] * (1 + 1e-6)


def test_quantized_gradient_noise_amplitude_is_half_a_step():
    # With g/2m + 1/2 exactly on a grid point, noise in [-1/2n, 1/2n) never moves the rounding;
    # halfway between two points it splits evenly between them.
    bits, n = 2, 3
    m = 1.5
    on_grid = torch.tensor([[m, -m, m / 3, -m / 3]])  # codes 3, 0, 2, 1
    q = quantize_gradient_tensor(on_grid.repeat(2000, 1), bits, torch.Generator().manual_seed(0))
    assert torch.allclose(q, on_grid.expand_as(q), atol=1e-6)
    half_way = torch.tensor([[m, 0.0]])  # code for 0 is 1.5: rounds to 1 or 2
    q = quantize_gradient_tensor(half_way.repeat(4000, 1), bits, torch.Generator().manual_seed(1))
    up = (q[:, 1] > 0).float().mean().item()
    assert set(q[:, 1].unique().mul(1e4).round().tolist()) == {-m / n * 1e4, m / n * 1e4}
    assert 0.45 < up < 0.55


def test_quantized_gradient_is_unbiased_in_expectation():
    g = torch.tensor([[0.3, -0.7, 1.0, 0.05, -0.21]])
    draws = quantize_gradient_tensor(g.repeat(20000, 1), 2, torch.Generator().manual_seed(3))
    mean = draws.mean(dim=0)
    # standard error of a 3-level draw with step 2m/3 over 20000 samples is about 0.005
    assert torch.allclose(mean, g[0], atol=0.02), mean
    # Deterministic rounding (no noise) would be biased: 0.05 would always become 0.
    assert mean[3] > 0.02


def test_gradient_per_sample_max_uses_every_axis_but_the_batch():
    g = torch.zeros(2, 2, 2)
    g[0, 1, 1] = 4.0
    g[1, 0, 0] = -0.5
    q = quantize_gradient_tensor(g, 8, torch.Generator().manual_seed(0))
    assert q[0, 1, 1] == pytest.approx(4.0) and q[1, 0, 0] == pytest.approx(-0.5)


def test_gradient_of_an_all_zero_sample_stays_zero():
    g = torch.zeros(3, 4)
    g[1] = 1.0
    q = quantize_gradient_tensor(g, 4, torch.Generator().manual_seed(0))
    assert torch.equal(q[0], torch.zeros(4)) and torch.equal(q[2], torch.zeros(4))


def test_dorefa_gradient_backward_uses_the_generator_deterministically():
    def grad(seed):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
        y = dorefa_gradient(x, 3, torch.Generator().manual_seed(seed))
        y.backward(torch.randn(8, 6, generator=torch.Generator().manual_seed(1)))
        return x.grad

    assert torch.equal(grad(5), grad(5))
    assert not torch.equal(grad(5), grad(6))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_functions_run_on_cuda():
    x = torch.randn(4, 8, device="cuda", requires_grad=True)
    y = dorefa_gradient(dorefa_activation(dorefa_weight(x, 4), 4), 4)
    y.sum().backward()
    assert x.grad.device.type == "cuda"


# the counter-based noise generator ----------------------------------------------------------

CHI2_BINS = 256


def chi_square(values: torch.Tensor, bins: int = CHI2_BINS) -> float:
    """Pearson's statistic of ``values`` in [0, 1) against the uniform over ``bins`` bins."""
    counts = torch.bincount((values * bins).long().clamp(0, bins - 1).flatten(), minlength=bins)
    expected = values.numel() / bins
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_bound(dof: int) -> float:
    """The 99.99th percentile of chi-square with ``dof`` degrees of freedom (Wilson-Hilferty)."""
    z = 3.719
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_noise_is_uniform_on_half_open_unit_interval():
    s = uniform_noise(draw_key(1, torch.tensor(0)), (1 << 20,), torch.device("cpu"))
    assert s.dtype == torch.float32 and s.min() >= -0.5 and s.max() <= 0.5
    assert chi_square(s + 0.5) < chi_square_bound(CHI2_BINS - 1)
    assert abs(s.mean().item()) < 5 / math.sqrt(12 * s.numel())  # 5 standard errors


@pytest.mark.parametrize("lag", [1, 2, 16, 1024])
def test_noise_of_neighbouring_elements_is_independent(lag):
    u = uniform_noise(draw_key(2, torch.tensor(5)), (1 << 20,), torch.device("cpu")) + 0.5
    first, second = u[:-lag], u[lag:]
    # pairs on a 16 x 16 grid: uniform in 2-D iff the two are independent and uniform
    cells = (first * 16).long() * 16 + (second * 16).long()
    assert chi_square((cells.double() + 0.5) / 256) < chi_square_bound(255)
    correlation = torch.corrcoef(torch.stack([first, second]))[0, 1].item()
    assert abs(correlation) < 5 / math.sqrt(first.numel())


def test_noise_of_successive_draws_and_streams_is_independent():
    shape, cpu = (1 << 18,), torch.device("cpu")
    draws = [
        uniform_noise(draw_key(base, torch.tensor(step)), shape, cpu) + 0.5
        for base, step in [(3, 0), (3, 1), (3, 2), (4, 0)]
    ]
    for a, b in [(0, 1), (1, 2), (0, 3)]:  # the next step, and another layer's stream
        cells = (draws[a] * 16).long() * 16 + (draws[b] * 16).long()
        assert chi_square((cells.double() + 0.5) / 256) < chi_square_bound(255)
        correlation = torch.corrcoef(torch.stack([draws[a], draws[b]]))[0, 1].item()
        assert abs(correlation) < 5 / math.sqrt(shape[0])


def test_noise_is_a_pure_function_of_the_key_and_the_index():
    key = draw_key(7, torch.tensor(3))
    whole = uniform_noise(key, (1000,), torch.device("cpu"))
    assert torch.equal(whole, uniform_noise(key, (1000,), torch.device("cpu")))
    assert torch.equal(whole[:10], uniform_noise(key, (10,), torch.device("cpu")))  # by index
    assert not torch.equal(
        whole, uniform_noise(draw_key(7, torch.tensor(4)), (1000,), torch.device("cpu"))
    )


def test_quantized_gradient_uses_one_draw_per_element():
    # A sample whose every element sits half way between two codes rounds up exactly where its
    # own element's uniform is >= 1/2: one draw per element, in index order.
    key = draw_key(8, torch.tensor(0))
    g = torch.zeros(1, 4001)
    g[0, 0] = 1.5  # m = 1.5, n = 3: the code of 0 is 1.5
    q = quantize_gradient_tensor(g, 2, key)
    s = uniform_noise(key, (1, 4001), torch.device("cpu"))
    up = q[0, 1:] > 0
    assert torch.equal(up, s[0, 1:] >= 0)


def test_dorefa_8_bit_weights_are_narrow_range_int8():
    # The owner's decision on #13: Eq. 9 at 8 bits would give 256 odd levels (-255..255), one
    # more than int8 holds; lowbit trains n = 254: 255 levels with zero, codes -127..127.
    from lowbit.quant.modules import DoReFaWeight

    w = random_tensor((64, 32, 3, 3), seed=5)
    values = dorefa_weight(w, 8)
    levels = torch.unique(values)
    assert len(levels) <= 255 and values.abs().max() == 1.0
    quantizer = DoReFaWeight(8)
    grid = quantizer.grid(w)
    codes = quantizer.integer_codes(w)
    assert (grid.qmin, grid.qmax, grid.code_step) == (-127, 127, 1)
    assert codes.min() == -127 and codes.max() == 127 and (codes == 0).any()
    torch.testing.assert_close(grid.dequantize(codes), values, rtol=0, atol=1e-6)
    # below 8 bits Eq. 9 is unchanged: the odd codes -n..n
    assert torch.unique(DoReFaWeight(7).integer_codes(w) % 2).tolist() == [1]
