"""The quantizers' maths: pure functions and autograd Functions, nothing stateful.

Every function takes a bit width ``bits``; ``FULL_PRECISION`` (32) means "leave the tensor
alone", so a quantizer can be switched off per layer without changing the graph's shape.
Equations cite DoReFa-Net (Zhou et al., arXiv 1606.06160) unless they name PACT or LSQ. With
k bits, ``n = 2**k - 1``.
"""

from __future__ import annotations

import math

import torch

FULL_PRECISION = 32


def levels(bits: int) -> int:
    """n = 2^k - 1, the number of steps of a k-bit unsigned grid on [0, 1]."""
    return (1 << bits) - 1


class _RoundToGrid(torch.autograd.Function):
    """round(n * x) / n forward, gradient passed unchanged (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.mul(x, n).round_().div_(n)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None


class _ClipToGrid(torch.autograd.Function):
    """round(n * clip(scale * x, low, 1)) / n with clip's gradient: DoReFa Eq. 11 (low = 0).

    One Function instead of mul, clamp and round: one output buffer quantized in place, and a
    backward of one fused op. The float ops run in the same order as the separate ops did, so
    the values are unchanged; the gradient is scale * upstream where low < scale * x < 1 and 0
    elsewhere, as torch.clamp's backward gives it (bounds excluded; round is straight-through).
    One difference: where x is NaN, clamp's backward gives 0 and this passes the upstream.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, low: float, n: int) -> torch.Tensor:
        scaled = x * scale if scale != 1.0 else x
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(scaled)  # x itself (no copy) unless scaled
        ctx.scale, ctx.low = scale, low
        return torch.clamp(scaled, low, 1.0).mul_(n).round_().div_(n)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (scaled,) = ctx.saved_tensors
        # upstream where low < scaled < 1, else 0, in one pass and one buffer
        grad = torch.ops.aten.hardtanh_backward(grad_output, scaled, ctx.low, 1.0)
        if ctx.scale != 1.0:
            grad.mul_(ctx.scale)
        return grad, None, None, None


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
    return _ClipToGrid.apply(x, scale, 0.0, levels(bits))


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
    # max|g| per row as max(max g, -min g): exact, and no |g| temporary of the gradient's size
    low, high = torch.aminmax(flat, dim=1, keepdim=True)
    m = torch.maximum(high, low.neg_())
    two_m = 2 * m
    two_safe_m = torch.where(m > 0, two_m, 2.0)
    # Two buffers of the gradient's size, everything in place. The float ops and their order
    # are those of (g / 2m + 1/2 + (s - 1/2) / n), so results are bit-identical to the plain
    # formula; addcdiv(a, b, c) = a + b / c exactly. One draw of numel values, as before.
    noise = torch.rand(flat.shape, generator=generator, device=g.device, dtype=g.dtype).sub_(0.5)
    shifted = torch.addcdiv(flat.new_tensor(0.5), flat, two_safe_m)
    shifted.addcdiv_(noise, flat.new_tensor(float(n)))
    del noise
    shifted.clamp_(0.0, 1.0).mul_(n).round_().div_(n).sub_(0.5).mul_(two_m)
    return shifted.reshape(g.shape)


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
    return _ClipToGrid.apply(x, scale, -1.0, symmetric_levels(bits))


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
        y = torch.clamp(x, min=0).clamp_max_(alpha)  # one buffer, quantized in place
        if bits >= FULL_PRECISION:
            return y
        n = levels(bits)
        step = alpha / n
        return y.div_(step).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, alpha = ctx.saved_tensors
        above = x >= alpha
        # Eq. 3: d y_q / d alpha = 1 where x >= alpha, else 0, summed over the tensor.
        grad_alpha = (grad_output * above).sum().reshape(alpha.shape)
        inside = torch.ge(x, 0).logical_and_(above.logical_not_())
        grad_x = grad_output * inside
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
        y = torch.minimum(x, alpha).clamp_min_(-alpha)  # one buffer, quantized in place
        if bits >= FULL_PRECISION:
            return y
        step = alpha / symmetric_levels(bits)
        return y.div_(step).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, alpha = ctx.saved_tensors
        above, below = x > alpha, x < -alpha
        # d y / d alpha = [x > alpha] - [x < -alpha]
        grad_alpha = ((grad_output * above).sum() - (grad_output * below).sum()).reshape(alpha.shape)
        grad_x = grad_output * above.logical_or_(below).logical_not_()
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


# -- LSQ (Esser et al., arXiv 1902.08153) and LSQ+ (Bhalgat et al., arXiv 2004.09576) --------

def lsq_range(bits: int, signed: bool) -> tuple[int, int]:
    """(Qn, Qp): unsigned 0 and 2^k - 1; signed 2^(k-1) and 2^(k-1) - 1 (LSQ Sec. 2)."""
    if signed:
        if bits < 2:
            raise ValueError(f"a signed grid needs at least 2 bits, got {bits}")
        return 1 << (bits - 1), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def lsq_grad_scale(count: int, bits: int, signed: bool) -> float:
    """g = 1 / sqrt(N Qp) (LSQ Sec. 2.2): N weights of the layer, or features per example."""
    return 1.0 / math.sqrt(count * lsq_range(bits, signed)[1])


def lsq_initial_step(x: torch.Tensor, bits: int, signed: bool,
                     dim: tuple[int, ...] | None = None) -> torch.Tensor:
    """2 mean|x| / sqrt(Qp) (LSQ Sec. 2.1), over ``dim`` (None: the whole tensor)."""
    mean = x.detach().abs().mean() if dim is None else x.detach().abs().mean(dim=dim)
    return (2 * mean / math.sqrt(lsq_range(bits, signed)[1])).clamp_min(LSQ_STEP_MIN)


LSQ_STEP_MIN = 1e-8  # a step of exactly 0 would divide by zero; no trained step gets this small


class _LSQ(torch.autograd.Function):
    """round(clip(x / s, -Qn, Qp)) s with LSQ's gradients (Eq. 3 for s, straight-through for x)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, step: torch.Tensor, qn: int, qp: int,
                grad_scale: float) -> torch.Tensor:
        v = x / step
        ctx.save_for_backward(v, step)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return torch.clamp(v, -qn, qp).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        v, step = ctx.saved_tensors
        below, above = v <= -ctx.qn, v >= ctx.qp
        # x: straight-through inside [-Qn, Qp] (in steps), 0 outside.
        grad_x = grad_output * ((v >= -ctx.qn) & (v <= ctx.qp))
        # s, Eq. 3: -v + round(v) inside, -Qn below, Qp above; times g.
        local = torch.where(below, -float(ctx.qn), torch.where(above, float(ctx.qp),
                                                               torch.round(v) - v))
        grad_step = (grad_output * local).sum_to_size(step.shape) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


def lsq(x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool = False,
        grad_scale: float = 1.0) -> torch.Tensor:
    """LSQ: round(clip(x / step, -Qn, Qp)) * step (Esser et al. 2019, Eq. 1-2).

    ``step`` is 0-d (per tensor) or broadcasts against x (per output channel: shape (C, 1, ...)).
    Gradients: x straight-through inside [-Qn, Qp] in units of step, 0 outside; step Eq. 3,
    -x/step + round(x/step) inside, -Qn below, Qp above, multiplied by ``grad_scale``
    (``lsq_grad_scale``). 32 bits: x unchanged.
    """
    if bits >= FULL_PRECISION:
        return x
    qn, qp = lsq_range(bits, signed)
    return _LSQ.apply(x, step, qn, qp, grad_scale)


def snap_offset(offset: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """step * round(offset / step) forward, the identity for offset's gradient: LSQ+'s offset on
    a whole number of steps, so that its grid has an integer zero point (exact in an integer
    runtime); the step gets no gradient through it."""
    snapped = step.detach() * torch.round(offset.detach() / step.detach())
    return offset + (snapped - offset).detach()


def lsq_plus(x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, bits: int,
             grad_scale: float = 1.0) -> torch.Tensor:
    """LSQ+ (Bhalgat et al. 2020): round(clip((x - b) / s, 0, 2^k - 1)) s + b, a learned offset b.

    The offset is snapped to a whole number of steps (``snap_offset``; torch.ao's integer zero
    point, lowbit's choice so that the export is exact). Gradients: x and s as in ``lsq`` at
    (x - b) / s; b gets 0 inside the range and 1 outside (the paper's).
    """
    if bits >= FULL_PRECISION:
        return x
    base = snap_offset(offset, step)
    return lsq(x - base, step, bits, signed=False, grad_scale=grad_scale) + base
