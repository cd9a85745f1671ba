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
    A float16/bfloat16 gradient (mixed precision) is quantized in float32 and handed back in
    its own dtype: a 16-bit float cannot hold a fine grid plus noise of 1/(2n) exactly.
    """
    if g.dtype in (torch.float16, torch.bfloat16):
        return quantize_gradient_tensor(g.float(), bits, generator).to(g.dtype)
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


def dorefa_activation_signed(x: torch.Tensor, bits: int, scale: float = 1.0) -> torch.Tensor:
    """DoReFa's activation quantizer made symmetric for inputs that can be negative.

    round(m * clip(scale * x, -1, 1)) / m with m = 2^(k-1) - 1 steps each side, so 0 stays
    exactly representable (the unsigned Eq. 11 would clip every negative value to 0). k >= 2.
    """
    if bits >= FULL_PRECISION:
        return x
    if scale != 1.0:
        x = x * scale
    return _RoundToGrid.apply(torch.clamp(x, -1.0, 1.0), symmetric_levels(bits))


def symmetric_levels(bits: int) -> int:
    """2^(k-1) - 1: steps on each side of zero of a signed k-bit grid (k >= 2)."""
    if bits < 2:
        raise ValueError(f"a signed grid needs at least 2 bits, got {bits}")
    return (1 << (bits - 1)) - 1


class _PACT(torch.autograd.Function):
    """PACT (Choi et al., arXiv 1805.06085) Eq. 1-3, with the straight-through gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        y = torch.minimum(torch.clamp(x, min=0), alpha)
        if bits >= FULL_PRECISION:
            return y
        n = levels(bits)
        step = alpha / n
        return torch.round(y / step) * step

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, alpha = ctx.saved_tensors
        above = x >= alpha
        inside = (x >= 0) & ~above
        grad_x = grad_output * inside
        # Eq. 3: d y_q / d alpha = 1 where x >= alpha, else 0, summed over the tensor.
        grad_alpha = (grad_output * above).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


def pact(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT: y = clip(x, 0, alpha), y_q = round(y n / alpha) alpha / n (Eq. 1-2).

    Gradients (Eq. 3, straight-through): x gets the upstream gradient on [0, alpha), zero
    elsewhere; alpha gets the sum of the upstream gradient where x >= alpha. ``alpha`` is a
    scalar tensor (one per layer). At 32 bits only the clipping remains.
    """
    return _PACT.apply(x, alpha, bits)


class _PACTSymmetric(torch.autograd.Function):
    """Symmetric PACT (PaddleOCR): clip(x, -alpha, alpha) on a signed grid."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        y = torch.maximum(torch.minimum(x, alpha), -alpha)
        if bits >= FULL_PRECISION:
            return y
        step = alpha / symmetric_levels(bits)
        return torch.round(y / step) * step

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, alpha = ctx.saved_tensors
        above, below = x > alpha, x < -alpha
        grad_x = grad_output * ~(above | below)
        # d y / d alpha = [x > alpha] - [x < -alpha]
        grad_alpha = ((grad_output * above).sum() - (grad_output * below).sum()).reshape(alpha.shape)
        return grad_x, grad_alpha, None


def pact_symmetric(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric PACT: y = clip(x, -alpha, alpha) = x - relu(x - alpha) + relu(-alpha - x).

    Signed k-bit grid with 2^(k-1) - 1 steps each side: s = alpha / (2^(k-1) - 1),
    y_q = round(y / s) s. Gradients: x straight-through on [-alpha, alpha], zero outside; alpha
    gets +1 where x > alpha and -1 where x < -alpha (summed). k >= 2; 32 bits: clipping only.
    """
    if bits < FULL_PRECISION:
        symmetric_levels(bits)  # refuse k = 1 before any work
    return _PACTSymmetric.apply(x, alpha, bits)


def channelwise_absmax_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric abs-max weights (PaddleSlim's ``channel_wise_abs_max``).

    s_c = max|w_c| / (2^(k-1) - 1) for each output channel c (axis 0); w_q = round(w / s_c) s_c,
    straight-through gradient. k >= 2.
    """
    if bits >= FULL_PRECISION:
        return w
    scale = channelwise_absmax_scale(w, bits).reshape(-1, *[1] * (w.dim() - 1))
    return _RoundToGrid.apply(w / scale, 1) * scale


def channelwise_max_abs(w: torch.Tensor) -> torch.Tensor:
    """max|w_c| of each output channel c (axis 0), detached: the abs-max quantizer's range."""
    return w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)


def channelwise_absmax_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """s_c = max|w_c| / (2^(k-1) - 1), one step size per output channel (a 1-D tensor)."""
    m = symmetric_levels(bits)
    return channelwise_max_abs(w).clamp_min(torch.finfo(w.dtype).tiny) / m
