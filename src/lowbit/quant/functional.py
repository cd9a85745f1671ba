"""The quantizers' maths: pure functions and autograd Functions, nothing stateful.

Every function takes a bit width ``bits``; ``FULL_PRECISION`` (32) means "leave the tensor
alone", so a quantizer can be switched off per layer without changing the graph's shape.
Equations cite DoReFa-Net (Zhou et al., arXiv 1606.06160) unless they name PACT or LSQ. With
k bits, ``n = 2**k - 1``.
"""

from __future__ import annotations

import math
import sys

import torch

from lowbit.bit_widths import FULL_PRECISION  # noqa: F401  (re-exported: 32, float)
from lowbit.quant import gates, native


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
    Traced by torch.compile, the backward multiplies by ``lowbit.quant.gates.clip_gate``
    instead, the same 0/1 values in float arithmetic, so that no bool mask is saved.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float, low: float, n: int) -> torch.Tensor:
        scaled = x * scale if scale != 1.0 else x
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(scaled)  # x itself (no copy) unless scaled
        ctx.scale, ctx.low = scale, low
        if _is_eager(scaled) and native.usable(scaled):
            return native.clip_to_grid(scaled, low, n)  # the line below in one pass, bit for bit
        return torch.clamp(scaled, low, 1.0).mul_(n).round_().div_(n)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (scaled,) = ctx.saved_tensors
        if not _is_eager(scaled):
            # traced: a float gate, never a saved bool mask (lowbit.quant.gates)
            grad = grad_output * gates.clip_gate(scaled, ctx.low)
            return (grad * ctx.scale if ctx.scale != 1.0 else grad), None, None, None
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


INT8_NARROW_MAX = 127  # the symmetric int8 weights TensorRT and ONNX Runtime hold: -127..127


def dorefa_weight_steps(bits: int) -> int:
    """n of DoReFa Eq. 9 at k bits: 2^k - 1, except 2^8 - 2 = 254 at 8 bits (narrow range).

    Eq. 9's grid is 2c/n - 1 for c = 0..n: the odd codes -n..n at step 1/n, 2^k levels. Up to 7
    bits they fit int8 exactly. At 8 bits the paper's 256 odd levels (-255..255) are one more
    than int8 holds, and a runtime would re-round them; lowbit trains the narrow-range form
    instead, n = 254: 255 levels with zero among them, codes -127..127 at step 1/127, which is
    what deploys (the owner's decision on issue #13: a grid the runtime cannot hold is not
    trained).
    """
    return (1 << bits) - 2 if bits == 8 else levels(bits)


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa weights.

    k > 1, Eq. 9: 2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1, the max over the whole
    tensor, so the result lies on a symmetric grid of 2^k values in [-1, 1] (k = 8: 255 values,
    the narrow range of ``dorefa_weight_steps``).
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
    return 2 * _RoundToGrid.apply(t / (2 * max_abs) + 0.5, dorefa_weight_steps(bits)) - 1


def dorefa_activation(x: torch.Tensor, bits: int, scale: float = 1.0) -> torch.Tensor:
    """DoReFa Eq. 11: quantize_k(clip(scale * x, 0, 1)).

    ``scale`` pre-multiplies the input before clipping; the model-compression (micronet)
    implementation uses 0.1 to clip less, and, like it, nothing multiplies back afterwards.
    The gradient is straight-through inside [0, 1] and zero where the clip is active.
    """
    if bits >= FULL_PRECISION:
        return x
    return _ClipToGrid.apply(x, scale, 0.0, levels(bits))


# -- DoReFa Eq. 12's noise: a counter-based generator -------------------------------------------
#
# Each draw is keyed by one integer (the run seed, the data-parallel rank, the layer and that
# layer's draw count, mixed by ``draw_key``) and each element's uniform is a hash of (key,
# element index): no sequential state, so every element is computed independently, by all of
# torch's intra-op threads on the CPU and by every GPU thread, and torch.compile fuses the whole
# hash into the quantizer's kernel. The hash is 32-bit arithmetic modulo 2^32: a Weyl step
# (index * golden ratio + the key's offset), then two xorshift-multiply rounds (MurmurHash3's
# fmix32 pattern, shifts 16 and 16; the first multiplier odd and drawn from the key, so that no
# two keys give shifted copies of one stream); the top bits become the float.
#
# Two ways to compute the same bits. Eager: int32 tensors whose multiplications wrap, in place,
# fast. Compiled (torch.compile traces the code): every value is a non-negative int64 below
# 2^63, masked to 32 bits after each step; every product is of a 32-bit value and a 31-bit
# constant, so nothing overflows and every right shift is of a non-negative number. The int32
# form, compiled, gave other bits than eager from the 17th element of a 40-element draw on (the
# vectorised C++ inductor generates for it; its scalar form agreed): a wrapping int32 multiply
# is signed overflow in C++, which a compiler may assume never happens. Both forms give the same
# 32 bits (tests/test_compile.py), so a compiled run draws the noise an eager one does.

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1  # 2^32 / golden ratio, odd: the Weyl step; index < 2^31 keeps index*it < 2^63
# Odd multipliers below 2^31 (a 32-bit value times one stays below 2^63): the xorshift-multiply
# constant of a well-tested 32-bit integer hash (Mueller), and the key mixer's second.
_MIX = 0x045D9F3B
_MIX_KEY = 0x7FEB352D
_TWO_TO_MINUS_32 = 2.0**-32


def _as_signed32(value: int) -> int:
    """A 32-bit pattern as the int32 with the same bits."""
    return value - (1 << 32) if value >= 1 << 31 else value


def _fmix32(x):
    """A bijection of [0, 2^32) that mixes every input bit into every output bit (xorshift-
    multiply rounds) on non-negative ints or int64 tensors: no overflow, shifts of non-negatives."""
    x = x ^ (x >> 16)
    x = (x * _MIX_KEY) & _MASK32
    x = x ^ (x >> 15)
    x = (x * _MIX) & _MASK32
    return x ^ (x >> 16)


def draw_key(base: int | torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """The key of one draw, a 0-d int64 in [0, 2^63): the hash's 32-bit offset in its low half
    and its odd 31-bit multiplier above.

    ``base`` names the stream (run seed, rank and layer: ``noise_base``, 64 bits, both halves
    mixed in; a non-negative int, or a 0-d int64 tensor holding one); ``draw`` counts the
    stream's draws, a tensor so that a compiled graph reads it instead of baking it in (2^31
    draws before a stream repeats).
    """
    base_low, base_high = base & _MASK32, (base >> 32) & _MASK32
    step = (draw.to(torch.int64) & 0x7FFFFFFF) * _GOLDEN  # < 2^63
    offset = _fmix32(_fmix32(((step & _MASK32) + base_low) & _MASK32) ^ base_high)
    multiplier = (_fmix32(offset ^ base_low ^ _GOLDEN) >> 1) | 1
    return (multiplier << 32) | offset


NOISE_STREAM = 12  # DoReFa Eq. 12: the label of the noise streams among a run's seeds


def noise_base(*labels: int) -> int:
    """A stream's 64-bit base from non-negative integers (seed, rank, layer): SeedSequence."""
    import numpy as np

    return int(np.random.SeedSequence(list(labels)).generate_state(1, np.uint64)[0])


_INDEX_CACHE: dict[torch.device, torch.Tensor] = {}


def _is_eager(t: torch.Tensor) -> bool:
    """True when ``t`` is a plain tensor computed now, not traced (torch.compile, including the
    backward graph AOTAutograd traces with fake or functional tensors): the in-place, wrapping
    int32 and dtype-reinterpreting shortcuts below are for eager mode only."""
    return type(t) is torch.Tensor and not torch.compiler.is_compiling()


def _weyl_index(numel: int, device: torch.device) -> torch.Tensor:
    """index * golden (int32, wrapping) for 0..numel-1, eager only: the largest one asked for is
    kept per device (two passes less per draw)."""
    cached = _INDEX_CACHE.get(device)
    if cached is None or cached.numel() < numel:
        cached = torch.arange(numel, dtype=torch.int32, device=device).mul_(_as_signed32(_GOLDEN))
        _INDEX_CACHE[device] = cached
    return cached[:numel]


def _xorshift16_(h: torch.Tensor) -> torch.Tensor:
    """h ^= h >>> 16 in place on a contiguous int32 tensor: only the low 16 bits change."""
    if sys.byteorder == "little":
        halves = h.view(torch.int16).view(-1, 2)  # one strided pass instead of three
        halves[:, 0].bitwise_xor_(halves[:, 1])
        return h
    return h.bitwise_xor_(torch.bitwise_right_shift(h, 16).bitwise_and_(0xFFFF))


def uniform_noise(key: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """s ~ U[-1/2, 1/2) for every element of ``shape``, float32, a pure function of ``key`` (a
    0-d int64 from ``draw_key``) and the element's index: DoReFa Eq. 12's s before the 1/n."""
    return (
        uniform_noise_bits(key, math.prod(shape), device)
        .float()
        .mul_(_TWO_TO_MINUS_32)
        .reshape(shape)
    )


def uniform_noise_bits(key: torch.Tensor, numel: int, device: torch.device) -> torch.Tensor:
    """The 32 hashed bits of each element as an int32; value * 2^-32 is uniform on [-1/2, 1/2).
    Eager and compiled give the same bits (see the section's comment)."""
    if numel >= 1 << 31:
        raise ValueError(f"a draw of {numel} values exceeds the generator's 2^31 element indices")
    key = key.to(device)
    offset, multiplier = key & _MASK32, key >> 32
    if not _is_eager(key):
        index = torch.arange(numel, dtype=torch.int64, device=device)
        h = (((index * _GOLDEN) & _MASK32) + offset) & _MASK32
        h = h ^ (h >> 16)
        h = (h * multiplier) & _MASK32
        h = h ^ (h >> 16)
        h = (h * _MIX) & _MASK32
        return (h - ((h >> 31) << 32)).to(torch.int32)  # the int32 with these bits: in range
    signed_offset = ((offset ^ (1 << 31)) - (1 << 31)).to(torch.int32)
    h = torch.add(_weyl_index(numel, device), signed_offset)
    _xorshift16_(h)
    h.mul_(multiplier.to(torch.int32))  # < 2^31: the cast keeps the value
    _xorshift16_(h)
    return h.mul_(_MIX)


def _noise_key(noise: torch.Tensor | torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A draw key: a key tensor as given; else one 63-bit integer from ``noise`` (a
    torch.Generator, or None for torch's global generator, which ``seed_everything`` seeds)."""
    if isinstance(noise, torch.Tensor):
        return noise
    generator_device = noise.device if noise is not None else torch.device("cpu")
    seed = torch.randint(0, 1 << 62, (), generator=noise, device=generator_device)
    # The seed stays a tensor: draw_key's integer arithmetic works on int64 tensors alike, and
    # under a plain torch.compile int(seed) became a symbolic int whose hash inductor then
    # generated in float ("invalid operands of types 'float' and 'float' to binary 'operator&'").
    return draw_key(seed, torch.zeros((), dtype=torch.int64, device=generator_device)).to(device)


class _QuantizeGradient(torch.autograd.Function):
    """Identity forward; DoReFa Eq. 12 on the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, key: torch.Tensor):
        ctx.bits = bits
        ctx.save_for_backward(key)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (key,) = ctx.saved_tensors
        return quantize_gradient_tensor(grad_output, ctx.bits, key), None, None


def quantize_gradient_tensor(
    g: torch.Tensor, bits: int, noise: torch.Tensor | torch.Generator | None = None
) -> torch.Tensor:
    """DoReFa Eq. 12 applied to a gradient tensor directly (the backward of ``dorefa_gradient``).

    f(g) = 2m [quantize_k(g / 2m + 1/2 + N(k)) - 1/2], m = max|g| per sample (all axes but the
    batch axis), N(k) = s / n with s ~ U(-1/2, 1/2), one draw per element (``uniform_noise``,
    keyed by ``noise``: a ``draw_key`` tensor, or a generator that draws the key). The noise
    turns rounding into stochastic rounding, so E[f(g)] = g. Like the authors' code the result
    is clipped to the grid; the clip only guards the float rounding at the ends.

    Computed as q = round(clip(n (g / 2m + 1/2) + s, 0, n)), f = q 2m / n - m: the same value
    in fewer passes over memory. A float16/bfloat16 gradient (mixed precision) is quantized in
    float32 and handed back in its own dtype: a 16-bit float cannot hold a fine grid plus noise.
    """
    if g.dtype in (torch.float16, torch.bfloat16):
        return quantize_gradient_tensor(g.float(), bits, noise).to(g.dtype)
    n = levels(bits)
    key = _noise_key(noise, g.device)
    if native.usable(g):
        # the same arithmetic in one pass over memory (lowbit.quant.native), bit for bit
        return _eq12_native(g, key, n)
    flat = _rows(g)
    m, scale = _row_scales(flat, n)
    # 2^32 s + 2^32 n g / 2m: the noise's integer bits as floats, then the gradient added in
    shifted = uniform_noise_bits(key, flat.numel(), g.device).view(flat.shape).to(g.dtype)
    shifted = (
        torch.addcmul(shifted, flat, scale, out=shifted)
        if _is_eager(shifted)
        else shifted + flat * scale
    )
    shifted.mul_(_TWO_TO_MINUS_32).add_(n / 2).clamp_(0.0, n).round_()
    # q 2m / n - m: back to the gradient's scale (m = 0 rows stay 0: q = n / 2 rounds to a
    # code whose value is then multiplied by 0)
    return _from_rows(torch.addcmul(m.neg(), shifted, 2 * m / n), g)


def _rows(g: torch.Tensor) -> torch.Tensor:
    """The gradient as one row per sample (all axes but the batch axis), Eq. 12's max axes, in
    memory order: a channels-last gradient's rows are a view of its NHWC memory, not an NCHW
    copy. An element's noise is keyed by its place in the row, so a channels-last run draws
    other bits than an NCHW run of the same seed (as uniform and independent)."""
    if _is_channels_last(g):
        return g.permute(0, 2, 3, 1).reshape(g.shape[0], -1)
    return g.reshape(g.shape[0], -1) if g.dim() > 1 else g.reshape(1, -1)


def _from_rows(rows: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``rows`` (from ``_rows(g)``) back in ``g``'s shape and memory order."""
    if _is_channels_last(g):
        batch, channels, height, width = g.shape
        return rows.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return rows.reshape(g.shape)


def _is_channels_last(t: torch.Tensor) -> bool:
    """A 4-d tensor laid out NHWC (and not also NCHW, as one with 1x1 images is)."""
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def _row_scales(flat: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 12's per-row m = max|g| and the factor 2^32 n / 2m of the scaled gradient (2m taken
    as 2 where m = 0); one row per sample."""
    # max|g| per row as max(max g, -min g): exact, and no |g| temporary of the gradient's size.
    # amax and amin are two vectorised reads; torch.aminmax along a dimension, one read, is
    # slower on the CPU (docs/performance.md, "Measurements behind code choices").
    m = torch.maximum(flat.amax(dim=1, keepdim=True), flat.amin(dim=1, keepdim=True).neg_())
    safe_two_m = torch.where(m > 0, 2 * m, 2.0)
    return m, (n * 2.0**32) / safe_two_m


@torch.library.custom_op("lowbit::eq12_gradient", mutates_args=())
def _eq12_native(g: torch.Tensor, key: torch.Tensor, n: int) -> torch.Tensor:
    """Eq. 12 of a float32 CPU gradient with the native kernel, the rows' max and the reshapes
    included: one custom operator, so that torch.compile keeps it as one call (it cannot trace
    into C) and hands it the gradient as it is, once (docs/performance.md)."""
    rows = _rows(g)
    m, scale = _row_scales(rows, n)
    out = native.quantize_gradient_rows(rows, key, scale, 2 * m / n, m.neg(), _GOLDEN, _MIX, n)
    return _from_rows(out, g)


@_eq12_native.register_fake
def _(g, key, n):
    layout = torch.channels_last if _is_channels_last(g) else torch.contiguous_format
    return torch.empty_like(g, memory_format=layout)


def dorefa_gradient(
    x: torch.Tensor, bits: int, noise: torch.Tensor | torch.Generator | None = None
) -> torch.Tensor:
    """Marks ``x`` so that the gradient flowing back through it is quantized to ``bits`` (Eq. 12).

    The forward pass is the identity. ``noise`` keys the rounding noise: a ``draw_key`` tensor
    (what the modules pass), a torch.Generator that draws the key, or None for torch's global
    generator (which ``seed_everything`` seeds). The key is taken at the forward pass.
    """
    if bits >= FULL_PRECISION:
        return x
    return _QuantizeGradient.apply(x, bits, _noise_key(noise, x.device))


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
        if bits < FULL_PRECISION and _is_eager(x) and x.dtype == alpha.dtype and native.usable(x):
            # the four passes below in one (lowbit.quant.native), bit for bit
            return native.pact_forward(x, float(alpha), float(alpha / levels(bits)))
        y = torch.clamp(x, x.new_zeros(()), alpha)  # one pass, one buffer, quantized in place
        if bits >= FULL_PRECISION:
            return y
        n = levels(bits)
        step = alpha / n
        return y.div_(step).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, alpha = ctx.saved_tensors
        if _is_eager(x) and x.dtype == alpha.dtype:
            # One pass per gradient: torch's fused masks, their strict bounds moved one float
            # step (same dtype as x) so that they are [0, alpha) and x >= alpha exactly.
            level = float(alpha)
            grad_x = torch.ops.aten.hardtanh_backward(grad_output, x, _below(0.0, x.dtype), level)
            above = torch.ops.aten.threshold_backward(grad_output, x, _below(level, x.dtype))
            return grad_x, above.sum().reshape(alpha.shape), None
        # Traced: float gates, never a saved bool mask (lowbit.quant.gates).
        below_alpha = gates.positive(alpha - x)  # x < alpha
        # Eq. 3: d y_q / d alpha = 1 where x >= alpha, else 0, summed over the tensor.
        grad_alpha = (grad_output * (1.0 - below_alpha)).sum().reshape(alpha.shape)
        grad_x = grad_output * (gates.not_below(x, 0.0) * below_alpha)  # 0 <= x < alpha
        return grad_x, grad_alpha, None


def _below(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number below ``value``: x > it is x >= value for x of that dtype."""
    return torch.nextafter(
        torch.tensor(value, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)
    ).item()


def _above(value: float, dtype: torch.dtype) -> float:
    """The smallest ``dtype`` number above ``value``: x < it is x <= value."""
    return torch.nextafter(
        torch.tensor(value, dtype=dtype), torch.tensor(math.inf, dtype=dtype)
    ).item()


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
        if _is_eager(x) and x.dtype == alpha.dtype:
            # One pass per mask (see _PACT): x on [-alpha, alpha], alpha above and below.
            level = float(alpha)
            grad_x = torch.ops.aten.hardtanh_backward(
                grad_output, x, _below(-level, x.dtype), _above(level, x.dtype)
            )
            above = torch.ops.aten.threshold_backward(grad_output, x, level).sum()
            below = torch.ops.aten.hardtanh_backward(grad_output, x, -math.inf, -level).sum()
            return grad_x, (above - below).reshape(alpha.shape), None
        # Traced: float gates, never a saved bool mask (lowbit.quant.gates).
        above, below = gates.positive(x - alpha), gates.positive(-alpha - x)
        # d y / d alpha = [x > alpha] - [x < -alpha]
        grad_alpha = ((grad_output * above).sum() - (grad_output * below).sum()).reshape(
            alpha.shape
        )
        grad_x = grad_output * ((1.0 - above) * (1.0 - below))
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


def lsq_initial_step(
    x: torch.Tensor, bits: int, signed: bool, dim: tuple[int, ...] | None = None
) -> torch.Tensor:
    """2 mean|x| / sqrt(Qp) (LSQ Sec. 2.1), over ``dim`` (None: the whole tensor)."""
    mean = x.detach().abs().mean() if dim is None else x.detach().abs().mean(dim=dim)
    return (2 * mean / math.sqrt(lsq_range(bits, signed)[1])).clamp_min(LSQ_STEP_MIN)


LSQ_STEP_MIN = 1e-8  # a step of exactly 0 would divide by zero; no trained step gets this small


class _LSQ(torch.autograd.Function):
    """round(clip(x / s, -Qn, Qp)) s with LSQ's gradients (Eq. 3 for s, straight-through for x)."""

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, step: torch.Tensor, qn: int, qp: int, grad_scale: float
    ) -> torch.Tensor:
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        if step.dim() == 0 and _is_eager(x) and x.dtype == step.dtype and native.usable(x):
            v, y = native.lsq_forward(x, float(step), qn, qp)  # the lines below in one pass
            ctx.save_for_backward(v, step)
            return y
        v = x / step
        ctx.save_for_backward(v, step)
        return torch.clamp(v, -qn, qp).round_().mul_(step)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        v, step = ctx.saved_tensors
        if (
            step.dim() == 0
            and _is_eager(v)
            and native.usable(v)
            and grad_output.dtype == v.dtype
            and native.dense_layout(v) is not None
            and grad_output.shape == v.shape
            and grad_output.stride() == v.stride()
        ):
            # the element-wise part below in one pass (bit for bit); the sum stays torch's
            grad_x, terms = native.lsq_backward(grad_output, v, ctx.qn, ctx.qp)
            grad_step = terms.sum_to_size(step.shape) * ctx.grad_scale
            return grad_x, grad_step, None, None, None
        below, above = v <= -ctx.qn, v >= ctx.qp
        # x: straight-through inside [-Qn, Qp] (in steps), 0 outside.
        grad_x = grad_output * ((v >= -ctx.qn) & (v <= ctx.qp))
        # s, Eq. 3: -v + round(v) inside, -Qn below, Qp above; times g.
        local = torch.where(
            below, -float(ctx.qn), torch.where(above, float(ctx.qp), torch.round(v) - v)
        )
        grad_step = (grad_output * local).sum_to_size(step.shape) * ctx.grad_scale
        return grad_x, grad_step, None, None, None


def lsq(
    x: torch.Tensor, step: torch.Tensor, bits: int, signed: bool = False, grad_scale: float = 1.0
) -> torch.Tensor:
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


def lsq_plus(
    x: torch.Tensor, step: torch.Tensor, offset: torch.Tensor, bits: int, grad_scale: float = 1.0
) -> torch.Tensor:
    """LSQ+ (Bhalgat et al. 2020): round(clip((x - b) / s, 0, 2^k - 1)) s + b, a learned offset b.

    The offset is snapped to a whole number of steps (``snap_offset``; torch.ao's integer zero
    point, lowbit's choice so that the export is exact). Gradients: x and s as in ``lsq`` at
    (x - b) / s; b gets 0 inside the range and 1 outside (the paper's).
    """
    if bits >= FULL_PRECISION:
        return x
    base = snap_offset(offset, step)
    return lsq(x - base, step, bits, signed=False, grad_scale=grad_scale) + base
