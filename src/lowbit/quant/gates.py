"""Straight-through gates for compiled graphs: 0/1 masks computed in float arithmetic alone.

A quantizer's backward passes the upstream gradient where its input lay inside the clipping
range and 0 elsewhere (DoReFa Eq. 11's clip, PACT Eq. 3). Eagerly, torch's fused masks do it in
one pass (``lowbit.quant.functional``). Under torch.compile the backward is traced, and
AOTAutograd's partitioner chooses what the forward saves for it: the smallest tensors from
which the backward can be recomputed. Written with comparisons, the gate's smallest form is a
``bool`` tensor (1 byte per element, against 4 for the float input), so wherever the input
cannot be recomputed in the backward (the output of a max-pool: NIN's second and third stages)
the forward stores a bool mask. Inductor's vectorised CPU code stores bool outputs many times
slower than float ones (its scalar code, ``cpp.simdlen=1``, is as fast as eager), and in the
compiled NIN step those stores were a visible share of the step (docs/performance.md,
"Measurements behind code choices").

The gates here have no boolean intermediate, so the partitioner saves float tensors (stored at
full speed) or recomputes the gate from the recomputed input. Each is exactly 0.0 or 1.0 for
finite and infinite inputs, equal to the comparison it replaces (tests/test_gates.py checks
every bound, its float neighbours, signed zeros, subnormals and infinities); a NaN input gives
a NaN gate (the comparisons give 0 or pass the gradient), and an infinite upstream gradient
times a closed gate is NaN, not 0: both only arise once training has diverged.
"""

from __future__ import annotations

import torch


def positive(d: torch.Tensor) -> torch.Tensor:
    """1.0 where d > 0, else 0.0: clamp to [0, 1], then ceil (every positive float, the
    subnormals too, lands in (0, 1] and ceils to 1; 0 and -0 stay 0)."""
    return torch.ceil(torch.clamp(d, 0.0, 1.0))


def clip_gate(x: torch.Tensor, low: float) -> torch.Tensor:
    """1.0 where low < x < 1, else 0.0, for -1 <= low <= 0: DoReFa's clip to [0, 1] (Eq. 11)
    and its signed form's [-1, 1].

    With t = clamp(x, low, 1), (t - low)(1 - t) is 0 at and beyond either bound and positive
    strictly inside, at most ((1 - low) / 2)^2 <= 1 there, so its ceil is 1. Each difference
    is exact in sign (IEEE subtraction gives 0 only for equal operands), and the product does
    not underflow: for t < 2^-24 the factor 1 - t rounds to 1 or 1 - 2^-24 and the product
    keeps t - low (at least the smallest subnormal); for larger t both factors are at least
    2^-24, or one is at least 1/2 and the other at least 2^-24. Five element-wise operations
    (four when low = 0) against eight for two ``positive`` gates: the backward recomputes this
    gate inside every fused BatchNorm-backward loop that reads it.
    """
    if not -1.0 <= low <= 0.0:
        raise ValueError(f"clip_gate needs -1 <= low <= 0, got {low}")
    t = torch.clamp(x, low, 1.0)
    return torch.ceil((t - low) * (1.0 - t))


def not_below(x: torch.Tensor, bound: torch.Tensor | float) -> torch.Tensor:
    """1.0 where x >= bound, else 0.0: not (bound - x > 0)."""
    return 1.0 - positive(bound - x)
