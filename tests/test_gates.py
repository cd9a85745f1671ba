"""Float straight-through gates (lowbit.quant.gates): the comparisons' values, and no bool mask
saved by a compiled quantizer."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.quant import functional as Q
from lowbit.quant.gates import clip_gate, not_below, positive

# torch.compile's graph capture, decompositions and partitioner (what inductor gets), run by
# eager kernels: the traced backward and what its forward saves, without a C++ compile.
TRACED = "aot_eager_decomp_partition"


def neighbours(*values: float) -> torch.Tensor:
    """Each value, its float32 neighbours, signed zeros, subnormals, infinities, large values."""
    points = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 2.0**-25, 2.0**-24, 0.5, 3e38, -3e38]
    points += [math.inf, -math.inf]
    for value in values:
        v = torch.tensor(value, dtype=torch.float32)
        points += [value, torch.nextafter(v, v + 1).item(), torch.nextafter(v, v - 1).item()]
    return torch.tensor(points, dtype=torch.float32)


@pytest.mark.parametrize("low", [0.0, -1.0, -0.25])
def test_clip_gate_is_the_open_interval_comparison(low):
    x = neighbours(low, 1.0, -1.0, 0.0)
    expected = ((x > low) & (x < 1.0)).float()
    assert torch.equal(clip_gate(x, low), expected)


def test_positive_and_not_below_are_their_comparisons():
    x = neighbours(0.0, 1.0, 2.5, -2.5)
    assert torch.equal(positive(x), (x > 0).float())
    bound = torch.tensor(2.5)
    assert torch.equal(not_below(x, bound), (x >= bound).float())
    assert torch.equal(not_below(x, 0.0), (x >= 0).float())


@pytest.mark.parametrize("low", [0.5, -1.5])
def test_clip_gate_refuses_bounds_it_is_not_exact_for(low):
    with pytest.raises(ValueError, match="-1 <= low <= 0"):
        clip_gate(torch.zeros(3), low)


QUANTIZERS = {
    "dorefa": lambda x, alpha: Q.dorefa_activation(x, 4),
    "dorefa_scaled": lambda x, alpha: Q.dorefa_activation(x, 4, scale=0.5),
    "dorefa_signed": lambda x, alpha: Q.dorefa_activation_signed(x, 4),
    "pact": lambda x, alpha: Q.pact(x, alpha, 4),
    "pact_symmetric": lambda x, alpha: Q.pact_symmetric(x, alpha, 4),
}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_traced_quantizer_gradients_equal_eager_ones(name):
    # the eager backward uses torch's fused masks, the traced one the float gates
    alpha_value = 2.5
    values = neighbours(0.0, 1.0, -1.0, 2.0, -2.0, alpha_value, -alpha_value)
    values = values[values.isfinite()]  # an infinite input's gradient is not a gate question
    upstream = torch.linspace(-3, 3, values.numel())

    def gradients(function):
        x = values.clone().requires_grad_()
        alpha = torch.tensor(alpha_value, requires_grad=True)
        (function(x, alpha) * upstream).sum().backward()
        return x.grad, alpha.grad

    torch._dynamo.reset()
    eager = gradients(QUANTIZERS[name])
    traced = gradients(torch.compile(QUANTIZERS[name], backend=TRACED))
    assert torch.equal(traced[0], eager[0])
    if name.startswith("pact"):
        assert torch.equal(traced[1], eager[1])


@pytest.mark.parametrize("name", ["dorefa", "dorefa_signed", "pact", "pact_symmetric"])
def test_a_compiled_quantizer_after_max_pool_saves_no_bool_mask(name):
    # Behind a max-pool the quantizer's input cannot be recomputed in the backward, so the
    # forward saves what the straight-through gate needs. A bool mask there cost NIN's compiled
    # step about 4% (inductor stores bool outputs ~25x slower than float ones on the CPU).
    quantizer = QUANTIZERS[name]
    alpha = torch.tensor(2.5, requires_grad=True)

    def block(x):
        return quantizer(torch.nn.functional.max_pool2d(x, 3, 2, 1), alpha) * 2

    saved: list[torch.dtype] = []

    def pack(tensor):
        saved.append(tensor.dtype)
        return tensor

    torch._dynamo.reset()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        torch.compile(block, backend=TRACED)(x).sum().backward()
    assert saved and torch.bool not in saved, saved
