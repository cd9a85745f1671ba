"""The quantizers' maths: pure functions and autograd Functions, nothing stateful.

Every function takes a bit width ``bits``; ``FULL_PRECISION`` (32) means "leave the tensor
alone", so a quantizer can be switched off per layer without changing the graph's shape.
Equations cite DoReFa-Net (Zhou et al., arXiv 1606.06160). With k bits, ``n = 2**k - 1``.
"""

from __future__ import annotations

import torch

FULL_PRECISION = 32


def levels(bits: int) -> int:
    """n = 2^k - 1, the number of steps of a k-bit unsigned grid on [0, 1]."""
    return (1 << bits) - 1


class _RoundToGrid(torch.autograd.Function):
    """round(n * x) / n forward, gradient passed unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.round(x * n).div_(n)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


def quantize_k(x: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa Eq. 5: quantize_k(r) = round((2^k - 1) r) / (2^k - 1), straight-through backward.

    ``x`` is expected in [0, 1]; values outside are rounded on the same grid, not clipped.
    """
    if bits >= FULL_PRECISION:
        return x
    return _RoundToGrid.apply(x, levels(bits))


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa weights.

    k > 1, Eq. 9: 2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1, the max over the whole
    tensor, so the result lies on a symmetric grid of 2^k values in [-1, 1].
    k = 1, Eq. 7: sign(w) * E(|w|), one scale for the whole tensor (sign(0) is taken as +1).
    The gradient flows through tanh and the max; only the rounding is straight-through.
    """
    if bits >= FULL_PRECISION:
        return w
    if bits == 1:
        scale = w.abs().mean().detach()
        signs = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
        # Straight-through: forward is sign * scale, backward passes the gradient to w.
        return w + (signs * scale - w).detach()
    t = torch.tanh(w)
    max_abs = t.abs().max().clamp_min(torch.finfo(t.dtype).tiny)
    return 2 * quantize_k(t / (2 * max_abs) + 0.5, bits) - 1


def dorefa_activation(x: torch.Tensor, bits: int, scale: float = 1.0) -> torch.Tensor:
    """DoReFa Eq. 11: quantize_k(clip(scale * x, 0, 1)).

    ``scale`` pre-multiplies the input before clipping; the model-compression (micronet)
    implementation uses 0.1 to clip less, and, like it, nothing multiplies back afterwards.
    The gradient is straight-through inside [0, 1] and zero where the clip is active.
    """
    if bits >= FULL_PRECISION:
        return x
    if scale != 1.0:
        x = x * scale
    return quantize_k(torch.clamp(x, 0.0, 1.0), bits)


class _QuantizeGradient(torch.autograd.Function):
    """Identity forward; DoReFa Eq. 12 on the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, generator: torch.Generator | None):
        ctx.bits = bits
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return quantize_gradient_tensor(grad_output, ctx.bits, ctx.generator), None, None


def quantize_gradient_tensor(
    g: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DoReFa Eq. 12 applied to a gradient tensor directly (the backward of ``dorefa_gradient``).

    f(g) = 2m [quantize_k(g / 2m + 1/2 + N(k)) - 1/2], m = max|g| per sample (all axes but the
    batch axis), N(k) = s / n with s ~ U(-1/2, 1/2). The noise turns rounding into stochastic
    rounding, so E[f(g)] = g. Like the authors' code, the shifted value is clipped to [0, 1]
    before rounding; the clip never changes the rounded value, it only guards the range.
    """
    n = levels(bits)
    flat = g.reshape(g.shape[0], -1) if g.dim() > 1 else g.reshape(1, -1)
    m = flat.abs().amax(dim=1, keepdim=True)
    safe_m = torch.where(m > 0, m, torch.ones_like(m))
    noise = torch.rand(flat.shape, generator=generator, device=g.device, dtype=g.dtype)
    noise = (noise - 0.5) / n
    shifted = (flat / (2 * safe_m) + 0.5 + noise).clamp_(0.0, 1.0)
    quantized = (torch.round(shifted * n) / n - 0.5) * (2 * m)
    return quantized.reshape(g.shape)


def dorefa_gradient(
    x: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Marks ``x`` so that the gradient flowing back through it is quantized to ``bits`` (Eq. 12).

    The forward pass is the identity. ``generator`` seeds the rounding noise (it must live on
    ``x``'s device); None uses torch's global generator, which ``seed_everything`` seeds.
    """
    if bits >= FULL_PRECISION:
        return x
    return _QuantizeGradient.apply(x, bits, generator)
