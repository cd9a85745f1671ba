"""Stateful quantizers and the quantized layers that hold them.

A quantizer module owns its bit width (and, for learned methods, its parameters) and calls
``lowbit.quant.functional``. ``QuantConv2d`` and ``QuantLinear`` are drop-in replacements for
``nn.Conv2d`` and ``nn.Linear`` with three quantizers each: one for the weight, one for the
layer's input activation and one for the gradient arriving at the layer's output.
``print(model)`` shows every layer's bits.

Under mixed precision (``trainer.precision=bf16-mixed``) the quantizers still compute in
float32: a bf16 mantissa has 8 bits, too few to hold an 8-bit grid exactly, so every quantizer's
maths runs with autocast off on a float32 copy of its input (``float32_math``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lowbit.quant import functional as Q
from lowbit.quant.grid import IntegerGrid, symmetric_grid, unsigned_grid

LOW_PRECISION = (torch.float16, torch.bfloat16)


def describe_bits(bits: int) -> str:
    return "fp32" if bits >= Q.FULL_PRECISION else f"{bits}"


def float32_math(forward: Callable) -> Callable:
    """Run a quantizer's ``forward(self, x)`` in float32, with autocast off, whatever x's dtype.

    float64 stays float64 (tests check the maths in double); float16/bfloat16 are upcast. The
    result stays float32: the next layer's autocast casts it down for its own matmul.
    """

    @functools.wraps(forward)
    def wrapper(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in LOW_PRECISION:
            x = x.float()
        if not torch.is_autocast_enabled(x.device.type):
            return forward(self, x)  # nothing to switch off: skip the context's enter and exit
        with torch.autocast(device_type=x.device.type, enabled=False):
            return forward(self, x)

    return wrapper


class Quantizer(nn.Module):
    """Base class: a tensor-to-tensor map at ``bits`` bits (32 = identity).

    The grid contract (``lowbit.quant.grid``): a quantizer that packs and exports states its
    integer grid with ``grid(x)``. A weight quantizer's grid may depend on the weight (pass it);
    an activation quantizer's does not (x is ignored). ``integer_codes`` and ``latent_weight``
    have defaults that serve any method whose outputs are exactly code x scale.
    """

    def __init__(self, bits: int):
        super().__init__()
        self.bits = int(bits)

    @property
    def is_active(self) -> bool:
        return self.bits < Q.FULL_PRECISION

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        """The integer grid this quantizer maps onto; None when it leaves the tensor in float."""
        if not self.is_active:
            return None
        raise NotImplementedError(
            f"{type(self).__name__} states no integer grid: implement "
            f"grid() (lowbit.quant.grid) to pack and export it"
        )

    @torch.no_grad()
    def integer_codes(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes (int64) of this quantizer's output for ``w`` on ``grid(w)``."""
        grid = self.grid(w)
        values = self(w).double()
        scale = grid.broadcast(grid.scale.double(), values)
        return (torch.round(values / scale) + grid.zero_point).to(torch.int64)

    def latent_weight(self, codes: torch.Tensor, grid: IntegerGrid) -> torch.Tensor:
        """A float weight that this quantizer maps onto exactly ``codes``, so that a packed
        checkpoint restores a model that trains on. The default, the grid's values, is right
        for grids that do not depend on the weight (a fixed or learned step)."""
        return grid.dequantize(codes)

    def bind_weight(self, weight: torch.Tensor) -> None:
        """Called once when this quantizer is put on a layer's weight (``quantize_model``): a
        learned weight grid takes its shape and initial value here, before any optimizer."""

    def calibrate(self, observed) -> None:
        """Set this activation quantizer's range from what its input held over the calibration
        batches (``lowbit.quant.calibrate.ObservedActivation``: ``step(qn, qp)`` fits a grid of
        levels -qn..qp by the chosen method; ``low()``, ``high()``, ``minimum``, ``maximum``).
        The default, for methods with a fixed range (DoReFa Eq. 11) or none: nothing to set."""

    def learned_parameters(self) -> dict[str, nn.Parameter]:
        """The quantizer's own learned parameters by the name they are logged under
        (``alpha/<layer>``, ``step/<layer>``): none by default."""
        return {}

    def optimizer_settings(self) -> dict[str, float | None]:
        """Optimizer settings of ``learned_parameters`` (``lowbit.quant.optim.param_groups``):
        ``weight_decay`` (None: the optimizer's) and ``lr_mult`` (over the base rate)."""
        return {"weight_decay": None, "lr_mult": 1.0}

    def extra_repr(self) -> str:
        return f"bits={describe_bits(self.bits)}"


class DoReFaWeight(Quantizer):
    """DoReFa Eq. 9 (k > 1) or Eq. 7 (k = 1) on a layer's whole weight tensor."""

    @float32_math
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return Q.dorefa_weight(w, self.bits)

    def grid(self, w: torch.Tensor | None = None) -> IntegerGrid | None:
        """Eq. 9: (2c - n) / n, the odd codes -n..n at step 1/n; at 8 bits (n = 254, narrow
        range) the codes c - 127 in -127..127 at step 1/127. Eq. 7: +-1 at step E|w|."""
        if not self.is_active:
            return None
        if self.bits == 1:
            scale = w.detach().float().abs().mean()  # functional.dorefa_weight's E(|w|)
            return IntegerGrid(1, True, scale, -1, 1, code_step=2)
        n = Q.dorefa_weight_steps(self.bits)
        if n % 2 == 0:  # even n: 2c - n is even, so halve the codes and double the step
            return IntegerGrid(self.bits, True, torch.tensor(2.0 / n), -(n // 2), n // 2)
        return IntegerGrid(self.bits, True, torch.tensor(1.0 / n), -n, n, code_step=2)

    def latent_weight(self, codes: torch.Tensor, grid: IntegerGrid) -> torch.Tensor:
        if self.bits == 1:
            return super().latent_weight(codes, grid)
        # The float32 operations of functional.dorefa_weight, 2 (c / n) - 1, then atanh(w_q / 2):
        # tanh undoes atanh and the per-tensor max normalises the 1/2 away (max|w_q| is always 1).
        n = Q.dorefa_weight_steps(self.bits)
        values = 2 * grid.indices(codes).to(torch.float32).div_(n) - 1
        return torch.atanh(values / 2)


class DoReFaActivation(Quantizer):
    """DoReFa Eq. 11: quantize_k(clip(scale * x, 0, 1))."""

    def __init__(self, bits: int, scale: float = 1.0):
        super().__init__(bits)
        self.scale = float(scale)

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.dorefa_activation(x, self.bits, self.scale)

    signed = False

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        """Codes 0..n (signed: -m..m) worth 1/n (1/m) each; the input step is 1/(n act_scale)
        (no multiply-back)."""
        if not self.is_active:
            return None
        steps = Q.symmetric_levels(self.bits) if self.signed else Q.levels(self.bits)
        make = symmetric_grid if self.signed else unsigned_grid
        return make(
            self.bits,
            torch.tensor(1.0 / steps),
            input_scale=torch.tensor(1.0 / (steps * self.scale)),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", scale={self.scale:g}" if self.scale != 1.0 else "")


class DoReFaSignedActivation(DoReFaActivation):
    """DoReFa's activation grid made symmetric, for inputs that can be negative (k >= 2)."""

    signed = True

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.dorefa_activation_signed(x, self.bits, self.scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", signed"


class ChannelAbsMaxWeight(Quantizer):
    """Per-output-channel symmetric abs-max weights (PaddleSlim's channel_wise_abs_max)."""

    @float32_math
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return Q.channelwise_absmax_weight(w, self.bits)

    def grid(self, w: torch.Tensor | None = None) -> IntegerGrid | None:
        if not self.is_active:
            return None
        return symmetric_grid(
            self.bits, Q.channelwise_absmax_scale(w.detach().float(), self.bits), axis=0
        )

    def latent_weight(self, codes: torch.Tensor, grid: IntegerGrid) -> torch.Tensor:
        # The grid's values, except that the entries at +-m carry a max|w_c| whose float32
        # quotient by m is the stored step again, so the quantizer recomputes the same scale.
        m = grid.qmax
        max_abs = grid.broadcast(float32_multiple(grid.scale.float(), m), codes).expand(codes.shape)
        extreme = codes.abs() == m
        return torch.where(
            extreme, codes.sign().to(torch.float32) * max_abs, grid.dequantize(codes)
        )


def float32_multiple(step: torch.Tensor, m: int) -> torch.Tensor:
    """For each float32 ``step``, a float32 c with c / m == step exactly (step * m, or one of its
    float32 neighbours when that product rounds the other way)."""
    guess = step * m
    infinity = torch.full_like(guess, float("inf"))
    candidates = (guess, torch.nextafter(guess, infinity), torch.nextafter(guess, -infinity))
    chosen = guess
    for candidate in reversed(candidates):
        chosen = torch.where(candidate / m == step, candidate, chosen)
    return chosen


class LearnedClip(Quantizer):
    """Base of the PACT quantizers: one learned clipping level ``alpha`` per layer.

    ``alpha_decay`` (L2 on alpha; None = the optimizer's weight decay, as in the PACT paper) and
    ``alpha_lr_mult`` (alpha's learning rate over the base one) are applied by
    ``lowbit.quant.optim.param_groups`` as optimizer parameter groups.

    ``alpha_calibration`` (a percentile p in (0, 100], or None): when set, the first training
    batch sets alpha to the p-th percentile of what this quantizer clips (x for PACT, |x| for the
    symmetric form) instead of ``alpha_init``. The paper's fixed init (10) sits far above
    post-BatchNorm activations, where alpha gets no clipping gradient at all and a 2-bit grid
    rounds nearly everything to zero; the ``calibrated`` buffer travels with checkpoints, so a
    resumed run does not calibrate again. Under data-parallel training every replica sees a
    different first batch, so the replicas' levels are averaged (``mean_over_replicas``): alpha
    is a parameter that DDP only keeps equal through equal gradients, not by broadcasting it.

    Whether alpha is calibrated lives in the ``calibrated`` buffer (checkpoints) and, mirrored,
    in ``is_calibrated``, a Python bool that the forward reads: torch.compile takes it as a
    constant (a tensor's truth value would break the compiled graph in two at every layer). The
    mirror is set with the buffer and re-read whenever a state dict is loaded.

    alpha is kept >= ``ALPHA_MIN`` by projecting it at the start of every forward pass (eval
    included): its gradient is a sum over the whole tensor, and one large step could otherwise
    push it below zero, where the clip turns every activation into the same constant and no
    gradient recovers it (seen with 2-bit symmetric PACT on NIN: alpha went to -1e10).
    """

    ALPHA_MIN = 1e-3
    CALIBRATION_SAMPLES = 1 << 20  # torch.quantile's input is bounded; a strided sample is plenty

    def __init__(
        self,
        bits: int,
        alpha_init: float,
        alpha_decay: float | None = None,
        alpha_lr_mult: float = 1.0,
        alpha_calibration: float | None = None,
    ):
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.alpha_decay = alpha_decay
        self.alpha_lr_mult = float(alpha_lr_mult)
        self.alpha_calibration = alpha_calibration
        self.register_buffer("calibrated", torch.tensor(alpha_calibration is None))
        self.is_calibrated = alpha_calibration is None  # the buffer's value (mirrored_flags)

    def clipped_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        """The values whose percentile calibrates alpha."""
        raise NotImplementedError

    def clipping_level(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.training and not self.is_calibrated:
                values = self.clipped_magnitude(x.detach()).flatten().float()
                stride = -(-values.numel() // self.CALIBRATION_SAMPLES)
                level = torch.quantile(values[::stride], self.alpha_calibration / 100)
                self.alpha.copy_(mean_over_replicas(level))
                self.calibrated.fill_(True)
                self.is_calibrated = True
            # The projection after the optimizer's step, in eval too: the last training step
            # can leave alpha below the minimum, and validation, test and results.json must see
            # the alpha that training would use.
            self.alpha.clamp_(min=self.ALPHA_MIN)
        return self.alpha

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.is_calibrated = bool(self.calibrated)

    def calibrated_level(self, observed) -> torch.Tensor:
        """The clipping level the calibration fits (PACT: the top of an unsigned grid)."""
        raise NotImplementedError

    @torch.no_grad()
    def calibrate(self, observed) -> None:
        """alpha = the calibrated clipping level; the first training batch then leaves it."""
        if not self.is_active:
            return
        level = self.calibrated_level(observed).float().clamp(min=self.ALPHA_MIN)
        self.alpha.copy_(level.to(self.alpha.device))
        self.calibrated.fill_(True)
        self.is_calibrated = True

    def learned_parameters(self) -> dict[str, nn.Parameter]:
        return {"alpha": self.alpha}

    def optimizer_settings(self) -> dict[str, float | None]:
        return {"weight_decay": self.alpha_decay, "lr_mult": self.alpha_lr_mult}

    def projected_alpha(self) -> torch.Tensor:
        """alpha as the next forward will use it (>= ALPHA_MIN), float32, detached."""
        return self.alpha.detach().float().clamp(min=self.ALPHA_MIN)

    def extra_repr(self) -> str:
        text = f"{super().extra_repr()}, alpha={self.alpha.item():.4g}"
        if not self.calibrated:
            text += f", calibrate=p{self.alpha_calibration:g}"
        return text


def mean_over_replicas(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the processes of torch.distributed's default group, if any.

    Every process must call this at the same point (collective); single-process runs pass
    ``value`` through. SUM then divide: gloo (CPU) has no AVG reduction.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


class PACTActivation(LearnedClip):
    """PACT: clip(x, 0, alpha) on an unsigned k-bit grid (arXiv 1805.06085, Eq. 1-3)."""

    def clipped_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    def calibrated_level(self, observed) -> torch.Tensor:
        n = Q.levels(self.bits)
        return observed.step(0, n) * n

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.pact(x, self.clipping_level(x), self.bits)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        """Codes 0..n at step alpha / n (float32, the step the forward computes with)."""
        if not self.is_active:
            return None
        return unsigned_grid(self.bits, self.projected_alpha() / Q.levels(self.bits))


class PACTSymmetricActivation(LearnedClip):
    """Symmetric PACT: clip(x, -alpha, alpha) on a signed k-bit grid (PaddleOCR)."""

    def clipped_magnitude(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()

    def calibrated_level(self, observed) -> torch.Tensor:
        m = Q.symmetric_levels(self.bits)
        return observed.step(m, m) * m

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Q.pact_symmetric(x, self.clipping_level(x), self.bits)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        """Codes -m..m at step alpha / m."""
        if not self.is_active:
            return None
        return symmetric_grid(self.bits, self.projected_alpha() / Q.symmetric_levels(self.bits))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", signed"


class LearnedStep(Quantizer):
    """LSQ (Esser et al., arXiv 1902.08153): round(clip(x / s, -Qn, Qp)) s with a learned step s.

    Activations: one step per layer, initialised from the first training batch as
    2 mean|x| / sqrt(Qp) (averaged over data-parallel replicas, like PACT's calibration); its
    gradient is scaled by 1 / sqrt(N Qp), N the features per example. Weights (``bind_weight``):
    a step per tensor (the paper) or per output channel, initialised from the weight when the
    layer is quantized, gradient scale with N the weights per step. Steps get no weight decay
    (a decay pulls the step down and clips more) and are kept >= ``functional.LSQ_STEP_MIN``.
    ``initialized`` (a buffer) is mirrored in ``is_initialized`` as ``LearnedClip`` mirrors
    ``calibrated``, for torch.compile.
    """

    def __init__(self, bits: int, signed: bool, per_channel: bool = False):
        super().__init__(bits)
        self.signed = bool(signed)
        self.per_channel = bool(per_channel)
        self.qn, self.qp = Q.lsq_range(self.bits, self.signed) if self.is_active else (0, 0)
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.is_initialized = False  # the buffer's value (see LearnedClip.is_calibrated)
        self.features = 0  # N of the gradient scale, known at the first forward (activations)

    def bind_weight(self, weight: torch.Tensor) -> None:
        if not self.is_active:
            return
        dims = tuple(range(1, weight.dim())) if self.per_channel else None
        step = Q.lsq_initial_step(weight.float(), self.bits, self.signed, dims)
        if self.per_channel:
            step = step.reshape(-1, *[1] * (weight.dim() - 1))
        self.step = nn.Parameter(step.to(weight.device))
        self.features = weight[0].numel() if self.per_channel else weight.numel()
        self.initialized.fill_(True)
        self.is_initialized = True

    def initialize(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.step.copy_(mean_over_replicas(Q.lsq_initial_step(x, self.bits, self.signed)))
            self.initialized.fill_(True)
            self.is_initialized = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.is_initialized = bool(self.initialized)

    @torch.no_grad()
    def calibrate(self, observed) -> None:
        """step = the calibration's fit for the grid's levels -Qn..Qp (Qn = 0 unsigned)."""
        if not self.is_active:
            return
        step = observed.step(self.qn if self.signed else 0, self.qp).float()
        self.step.copy_(step.clamp(min=Q.LSQ_STEP_MIN).to(self.step.device))
        self.initialized.fill_(True)
        self.is_initialized = True

    def projected_step(self) -> torch.Tensor:
        with torch.no_grad():
            self.step.clamp_(min=Q.LSQ_STEP_MIN)
        return self.step

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_active:
            return x
        if self.training and not self.is_initialized:
            self.initialize(x)
        features = self.features or x[0].numel()  # per example, for an activation
        return self.quantize(
            x, self.projected_step(), Q.lsq_grad_scale(features, self.bits, self.signed)
        )

    def quantize(self, x: torch.Tensor, step: torch.Tensor, grad_scale: float) -> torch.Tensor:
        return Q.lsq(x, step, self.bits, self.signed, grad_scale)

    def stated_step(self) -> torch.Tensor:
        """The step as the next forward uses it (>= LSQ_STEP_MIN), float32, detached."""
        return self.step.detach().float().clamp(min=Q.LSQ_STEP_MIN)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        if not self.is_active:
            return None
        step = self.stated_step()
        axis = 0 if step.dim() > 0 else None
        return IntegerGrid(
            self.bits,
            self.signed,
            step.reshape(-1) if axis == 0 else step,
            -self.qn,
            self.qp,
            axis=axis,
        )

    def learned_parameters(self) -> dict[str, nn.Parameter]:
        return {"step": self.step}

    def optimizer_settings(self) -> dict[str, float | None]:
        return {"weight_decay": 0.0, "lr_mult": 1.0}

    def extra_repr(self) -> str:
        shown = (
            f"{self.step.item():.4g}"
            if self.step.dim() == 0
            else f"per-channel x{self.step.numel()}"
        )
        return (
            f"{super().extra_repr()}, step={shown}"
            + (", signed" if self.signed else "")
            + ("" if self.initialized else ", init from first batch")
        )


class LearnedStepOffset(LearnedStep):
    """LSQ+ (Bhalgat et al., arXiv 2004.09576) for activations: a learned offset b, so that an
    asymmetric range (hard-swish's minimum is -0.375) uses every level of an unsigned grid:
    round(clip((x - b) / s, 0, 2^k - 1)) s + b, with b snapped to whole steps
    (``functional.snap_offset``: an integer zero point, exact in an integer runtime).

    Initialisation from the first training batch, the paper's min/max choice: b = min(x),
    s = (max(x) - min(x)) / (2^k - 1).
    """

    def __init__(self, bits: int):
        super().__init__(bits, signed=False)
        self.offset = nn.Parameter(torch.tensor(0.0))

    def initialize(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            low = mean_over_replicas(x.detach().min().clamp(max=0.0))
            high = mean_over_replicas(x.detach().max())
            self.offset.copy_(low)
            self.step.copy_(((high - low) / self.qp).clamp(min=Q.LSQ_STEP_MIN))
            self.initialized.fill_(True)
            self.is_initialized = True

    @torch.no_grad()
    def calibrate(self, observed) -> None:
        """The paper's min/max start over the calibration range: b = its bottom (<= 0), and the
        step fitted to the levels 0..2^k - 1 above b ((top - bottom) / (2^k - 1) by min-max)."""
        if not self.is_active:
            return
        low = observed.low().float().clamp(max=0.0)
        step = observed.step(0, self.qp, offset=low).float()
        self.offset.copy_(low.to(self.offset.device))
        self.step.copy_(step.clamp(min=Q.LSQ_STEP_MIN).to(self.step.device))
        self.initialized.fill_(True)
        self.is_initialized = True

    def quantize(self, x: torch.Tensor, step: torch.Tensor, grad_scale: float) -> torch.Tensor:
        return Q.lsq_plus(x, step, self.offset, self.bits, grad_scale)

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        if not self.is_active:
            return None
        step = self.stated_step()
        zero_point = -int(torch.round(self.offset.detach().float() / step))
        return IntegerGrid(self.bits, False, step, 0, self.qp, zero_point=zero_point)

    def learned_parameters(self) -> dict[str, nn.Parameter]:
        return {"step": self.step, "offset": self.offset}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", offset={self.offset.item():.4g}"


class ImageQuantizer(Quantizer):
    """The first layer's input, the image, on the unsigned k-bit grid an integer runtime feeds
    it on: asymmetric, scale (max - min) / (2^k - 1), an integer zero point (ORT's and torch.ao's
    convention), so that the deployed first conv computes what training did.

    The range is the running min and max of every training batch (torch.ao's MinMaxObserver),
    averaged over data-parallel replicas' extremes; evaluation uses it frozen. Until a training
    batch has been seen the image passes through unchanged and ``grid()`` is None (an export then
    calibrates the image on its own). Gradient: straight-through inside the range.

    Whether a batch was seen lives in the ``observed`` buffer (checkpoints) and, mirrored, in
    ``is_observed``, a Python bool the forward reads; the forward keeps the zero point a tensor.
    Both keep torch.compile's graph whole: the buffer's truth value and an ``int`` zero point
    broke a compiled NIN into 13 graphs, one per layer (every run's default, ``input_bits=8``).
    """

    def __init__(self, bits: int):
        super().__init__(bits)
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("observed", torch.tensor(False))
        self.is_observed = False  # the buffer's value, for the forward

    @staticmethod
    @torch.no_grad()
    def batch_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's (min, max), widened to include zero and averaged over data-parallel
        replicas; one pass over x (``aminmax``), not two."""
        low, high = torch.aminmax(x.detach())
        return (
            mean_over_replicas(low.float().clamp(max=0.0)),
            mean_over_replicas(high.float().clamp(min=0.0)),
        )

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low, high = self.batch_range(x)
        if self.is_observed:
            low, high = torch.minimum(low, self.low), torch.maximum(high, self.high)
        self.low.copy_(low)
        self.high.copy_(high)
        self.observed.fill_(True)
        self.is_observed = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.is_observed = bool(self.observed)

    @torch.no_grad()
    def calibrate(self, observed) -> None:
        """The image's min-max range over the calibration batches, whatever the method (pixel
        extremes are data, not outliers); training widens it from there."""
        if not self.is_active:
            return
        self.low.copy_(observed.minimum.float().clamp(max=0.0))
        self.high.copy_(observed.maximum.float().clamp(min=0.0))
        self.observed.fill_(True)
        self.is_observed = True

    def scale_and_zero_tensor(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scale and the zero point (an integer-valued float tensor) of the range."""
        n = Q.levels(self.bits)
        scale = ((self.high - self.low) / n).clamp(min=torch.finfo(torch.float32).tiny)
        return scale, torch.clamp(torch.round(-self.low / scale), 0, n)

    def scale_and_zero_point(self) -> tuple[torch.Tensor, int]:
        scale, zero_point = self.scale_and_zero_tensor()
        return scale, int(zero_point)

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_active:
            return x
        if self.training:
            self.observe(x)
        if not self.is_observed:
            return x
        scale, zero_point = self.scale_and_zero_tensor()
        n = Q.levels(self.bits)
        low, high = (0 - zero_point) * scale, (n - zero_point) * scale
        clipped = torch.minimum(torch.maximum(x, low), high)
        quantized = torch.round(clipped / scale) * scale
        return clipped + (quantized - clipped).detach()

    def grid(self, x: torch.Tensor | None = None) -> IntegerGrid | None:
        if not (self.is_active and self.is_observed):
            return None
        scale, zero_point = self.scale_and_zero_point()
        return IntegerGrid(
            self.bits, False, scale.float(), 0, Q.levels(self.bits), zero_point=zero_point
        )

    def extra_repr(self) -> str:
        shown = (
            f", range=[{self.low.item():.4g}, {self.high.item():.4g}]"
            if bool(self.observed)
            else ", range from training batches"
        )
        return super().extra_repr() + shown


class OutputRequantizer(ImageQuantizer):
    """A layer output on the 8-bit grid the integer runtime requantizes it to, where no input
    quantizer reads it: before hard-swish, hard-sigmoid, leaky ReLU, a residual sum or squeeze-
    excite's product. An integer conv must end in a quantized output; training keeps that
    rounding in the model instead of leaving it to the export's calibration, so that what is
    deployed is what was trained (issue #27).

    The grid is ImageQuantizer's (unsigned, asymmetric, an integer zero point), over an
    exponential moving average of the training batches' min and max (torch.ao's
    MovingAverageMinMaxObserver, averaging constant 0.01): activations move while a network
    trains, and an all-time range would keep the widest early batch forever. The first batch
    sets the range. Gradient: straight-through where the code is inside the grid (torch's fused
    fake quantization in training, below).
    """

    AVERAGING = 0.01

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low, high = self.batch_range(x)
        if self.is_observed:
            low = self.low + self.AVERAGING * (low - self.low)
            high = self.high + self.AVERAGING * (high - self.high)
        self.low.copy_(low)
        self.high.copy_(high)
        self.observed.fill_(True)
        self.is_observed = True

    @float32_math
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.is_active and self.training):
            return super().forward(x)  # evaluation: the runtime's x / scale, code for code
        self.observe(x)
        scale, zero_point = self.scale_and_zero_tensor()
        # Training: torch's fused fake quantization, one kernel forward and one backward, since
        # a network can hold dozens of these (the step cost: docs/integer_parity.md, "What the
        # output requantizers cost a training step"). It computes round(x * (1 / scale)), which can
        # differ from evaluation's x / scale by one code for a value within an ulp of a
        # half-step; its straight-through gradient passes where the rounded code is inside the
        # grid, i.e. up to half a step beyond [low, high].
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero_point.to(torch.int32), 0, Q.levels(self.bits)
        )

    def extra_repr(self) -> str:
        return super().extra_repr().replace("range from training batches", "range: moving min/max")


class DoReFaGradient(Quantizer):
    """DoReFa Eq. 12 on the gradient flowing back through this point; identity forward.

    The rounding noise comes from the counter-based generator of ``functional`` keyed by
    (``noise_base``, ``draws``): a training run gives every gradient quantizer its own base from
    the run seed, the data-parallel rank and the layer's index (``use_noise_stream``), and
    ``draws`` counts this layer's draws, so the noise is reproducible and a resumed run, given
    the counts back, continues the very same stream. ``draws`` is a tensor (a compiled graph
    reads it and returns the next count); it is not in the state dict (``lowbit.randomness``
    checkpoints it), so checkpoints keep their keys. Without a base the key of each draw comes
    from torch's global generator. The backward maths runs in float32 under mixed precision too.
    """

    def __init__(self, bits: int):
        super().__init__(bits)
        self.noise_base: int | None = None
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.is_active and x.requires_grad):
            return x
        if self.noise_base is None:
            return Q.dorefa_gradient(x, self.bits, None)
        key = Q.draw_key(self.noise_base, self.draws)
        # A new tensor, not draws.add_(1): compiled, AOTAutograd recomputed the key in the
        # backward from the buffer it had already advanced in place (the next draw's noise).
        self.draws = self.draws + 1
        return Q.dorefa_gradient(x, self.bits, key)


def gradient_quantizers(model: nn.Module) -> dict[str, DoReFaGradient]:
    """The model's DoReFa gradient quantizers by module name, in module order; the names leave
    out torch.compile's wrapper (``_orig_mod``), so they are the same compiled or not."""
    return {
        name.replace("_orig_mod.", ""): m
        for name, m in model.named_modules()
        if isinstance(m, DoReFaGradient)
    }


def use_noise_stream(model: nn.Module, seed: int, rank: int = 0) -> int:
    """Key every DoReFa gradient quantizer of ``model`` by (seed, rank, its index in module
    order) and restart its draw count; returns how many there are. Ranks draw different noise,
    as they see different data."""
    quantizers = gradient_quantizers(model)
    for layer, quantizer in enumerate(quantizers.values()):
        quantizer.noise_base = Q.noise_base(seed, Q.NOISE_STREAM, rank, layer)
        quantizer.draws.zero_()
    return len(quantizers)


class FullPrecision(Quantizer):
    """Leaves the tensor as it is; stands where a policy keeps a tensor in float."""

    def __init__(self):
        super().__init__(Q.FULL_PRECISION)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class QuantizedLayer:
    """Mixin for a Conv2d/Linear whose weight, input and output gradient are quantized."""

    weight_quantizer: Quantizer
    input_quantizer: Quantizer
    gradient_quantizer: Quantizer

    def attach_quantizers(self, weight: Quantizer, input: Quantizer, gradient: Quantizer) -> None:
        self.weight_quantizer = weight
        self.input_quantizer = input
        self.gradient_quantizer = gradient

    @property
    def wbits(self) -> int:
        return self.weight_quantizer.bits

    @property
    def abits(self) -> int:
        return self.input_quantizer.bits

    @property
    def gbits(self) -> int:
        return self.gradient_quantizer.bits

    @property
    def output_quantizer(self) -> Quantizer | None:
        """An 8-bit requantization of the layer's output (``OutputRequantizer``), where no
        BatchNorm follows and no input quantizer reads the output (``lowbit.quant.integer``);
        None: none. Set it as a submodule (``layer.output_quantizer = ...``); a property, since
        a class attribute would hide the submodule from attribute lookup."""
        return self._modules.get("output_quantizer")

    # Set by ``lowbit.quant.integer.use_integer_arithmetic``: how evaluation computes the layer.
    integer_output = None
    integer_arithmetic = False

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def integer_output_of(self, x: torch.Tensor) -> torch.Tensor | None:
        """In evaluation, the layer as the integer runtime computes it, where no BatchNorm
        follows (``lowbit.quant.integer``); None: the float computation."""
        output = self.integer_output
        if self.training or output is None or not self.integer_arithmetic:
            return None
        if output.batchnorm is not None:
            return None  # the Sequential computes the layer and its BatchNorm together
        return output.compute(self, x)

    def bits_repr(self) -> str:
        return (
            f"wbits={describe_bits(self.wbits)}, abits={describe_bits(self.abits)}, "
            f"gbits={describe_bits(self.gbits)}"
        )


class QuantConv2d(QuantizedLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.integer_output_of(x)
        if y is None:
            y = self._conv_forward(self.input_quantizer(x), self.quantized_weight(), self.bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return self.gradient_quantizer(y)

    def extra_repr(self) -> str:
        return f"{nn.Conv2d.extra_repr(self)}, {self.bits_repr()}"


class QuantLinear(QuantizedLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.integer_output_of(x)
        if y is None:
            y = F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        return self.gradient_quantizer(y)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self.bits_repr()}"


def conv_like(conv_class: type[nn.Conv2d], conv: nn.Conv2d, bias: bool, device=None) -> nn.Conv2d:
    """A ``conv_class`` with ``conv``'s geometry (channels, kernel, stride, padding, dilation,
    groups, padding mode); its parameters are the caller's to set."""
    return conv_class(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=bias,
        padding_mode=conv.padding_mode,
        device=device,
    )


def quantized_copy(
    layer: nn.Module, weight: Quantizer, input: Quantizer, gradient: Quantizer
) -> QuantConv2d | QuantLinear:
    """A QuantConv2d/QuantLinear with the same shape that shares ``layer``'s parameters.

    Sharing (not copying) keeps any optimizer or checkpoint that refers to the float layer's
    tensors valid.
    """
    if isinstance(layer, nn.Conv2d):
        # device "meta": no throwaway initialisation, the parameters come from ``layer``
        new = conv_like(QuantConv2d, layer, bias=layer.bias is not None, device="meta")
    elif isinstance(layer, nn.Linear):
        new = QuantLinear(
            layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
        )
    else:
        raise TypeError(f"cannot quantize a {type(layer).__name__}: only Conv2d and Linear")
    new.weight = layer.weight
    new.bias = layer.bias
    new.train(layer.training)
    new.attach_quantizers(weight, input, gradient)
    weight.bind_weight(layer.weight.detach())
    return new
