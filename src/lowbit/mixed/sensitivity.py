"""How much a trained model's loss suffers when one layer's weights get b bits, per layer and
width: the scores the allocator (``lowbit.mixed.ilp``) sums and minimises.

Three methods, chosen by name (``METHODS``), all on the float model in eval mode (BatchNorm on
its running statistics), all on the same perturbation dW_b = Q_b(W) - Q_ref(W): the run's own
weight quantizer at b bits, as it starts QAT from these weights (LSQ: its initial step), less
the same quantizer at ``REFERENCE_BITS``. Width 32 keeps the layer's weights float: dW_32 = 0,
so it scores 0 in every method (its cost is the float layer's bytes, BOPs and time,
``lowbit.mixed.costs``). For grids that approximate W (LSQ, abs-max) Q_ref(W)
is W; DoReFa's Eq. 9 maps W onto tanh(W) / max|tanh(W)| first, which no width undoes, so its
scores measure the rounding in those normalised units, a rescaled W:

- ``hessian`` (HAWQ-v2/v3): Omega(b) = Tr(H) / n ||dW_b||^2, Tr(H) the Hutchinson estimate
  E[v^T H v] over Rademacher vectors v, Hv by double backward of the cross-entropy on the
  batches. The estimate's standard error over the samples is reported with it. A trace below 0
  (noise, or a model far from a minimum) counts as 0: a negative score would reward rounding.
- ``fisher`` (ModelOpt's auto_quantize): Omega(b) = sum F * dW_b^2 with the diagonal empirical
  Fisher F = the mean of squared batch gradients, one backward per batch. Batch gradients scale
  F by about 1 / batch size for every layer alike, which changes no allocation.
- ``ablation`` (PPQ's per-layer analysis): the val loss with that one layer at Q_b less the val
  loss with it at Q_ref, every other layer float.

Only weights are scored. The allocation chooses weight widths; activations keep the run's
``quant.abits`` everywhere. What a width buys is decided by the weights: the packed file holds
weights only, and ONNX Runtime runs 8-bit integer kernels whatever the activations' width, so a
per-layer activation width would change BOPs and accuracy but neither size nor latency. Keeping
one activation width also keeps every residual add's inputs on grids the integer graph already
handles (no constraint between layers is needed). HAWQ-v3 allocates weights the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.bit_widths import FULL_PRECISION
from lowbit.quant.schemes import Scheme

REFERENCE_BITS = 16  # Q_ref: the widest grid lowbit's quantizers take; LSQ's is W itself here

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LayerSensitivity:
    """One layer's score at each width; ``trace``/``trace_se``: hessian only."""

    name: str
    params: int
    by_width: dict[int, float]
    trace: float | None = None
    trace_se: float | None = None


@torch.no_grad()
def quantized_weight(scheme: Scheme, weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Q_b(W): ``scheme``'s weight quantizer at ``bits``, bound to ``weight`` as QAT binds it."""
    quantizer = scheme.weight(bits).to(weight.device).eval()
    quantizer.bind_weight(weight.detach())
    return quantizer(weight.detach().float()).to(weight.dtype)


@dataclass
class Rounding:
    """One layer's weight on the quantizer's grids: Q_ref(W) and dW_b by width."""

    reference: torch.Tensor
    deltas: dict[int, torch.Tensor]


def roundings(
    scheme: Scheme, weights: dict[str, torch.Tensor], widths: list[int]
) -> dict[str, Rounding]:
    """Q_ref(W) and dW_b = Q_b(W) - Q_ref(W) by layer (module docstring); dW_32 = 0."""
    reference_bits = min(REFERENCE_BITS, max(scheme.weight_bits))
    result = {}
    for name, weight in weights.items():
        reference = quantized_weight(scheme, weight, reference_bits)
        deltas = {
            b: torch.zeros_like(reference)
            if b == FULL_PRECISION
            else quantized_weight(scheme, weight, b) - reference
            for b in widths
        }
        result[name] = Rounding(reference, deltas)
    return result


@dataclass
class Probe:
    """What every method scores with: the float model, the weights to score by layer name,
    their roundings, the batches, and the Hutchinson samples and seed (hessian)."""

    model: nn.Module
    weights: dict[str, nn.Parameter]
    rounded: dict[str, Rounding]
    batches: list[Batch]
    samples: int
    seed: int


def loss_of(model: nn.Module, batch: Batch) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def rademacher(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1


class ClampHardsigmoid(nn.Module):
    """hardsigmoid(x) = clamp(x + 3, 0, 6) / 6, written with ops autograd differentiates twice:
    torch has no derivative of ``hardsigmoid_backward`` (MobileNetV3's gates)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x + 3, 0, 6) / 6


class ClampHardswish(nn.Module):
    """hardswish(x) = x * clamp(x + 3, 0, 6) / 6 (as ``ClampHardsigmoid``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.clamp(x + 3, 0, 6) / 6


TWICE_DIFFERENTIABLE = {nn.Hardsigmoid: ClampHardsigmoid, nn.Hardswish: ClampHardswish}


@contextmanager
def twice_differentiable(model: nn.Module) -> Iterator[None]:
    """The model with every activation whose backward torch cannot differentiate swapped for
    the same function in clamps (``TWICE_DIFFERENTIABLE``), put back after: the double
    backward of Hessian-vector products runs through them."""
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            replacement = TWICE_DIFFERENTIABLE.get(type(child))
            if replacement is not None:
                swapped.append((parent, name, child))
                setattr(parent, name, replacement())
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def hutchinson_traces(
    model: nn.Module,
    weights: dict[str, nn.Parameter],
    batches: list[Batch],
    samples: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Tr(H_i) of each weight's diagonal Hessian block, (mean, standard error) over ``samples``
    Rademacher vectors, H the Hessian of the mean loss over ``batches``. Sample s draws its v
    from seed + s, so each batch's graph is built once and every sample reuses it."""
    names, params = list(weights), list(weights.values())
    totals = torch.zeros(samples, len(names), dtype=torch.float64)
    for batch in batches:
        grads = torch.autograd.grad(loss_of(model, batch), params, create_graph=True)
        for s in range(samples):
            generator = torch.Generator().manual_seed(seed + s)
            vs = [rademacher(p.shape, generator).to(p.device) for p in params]
            hvs = torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
            for i, (v, hv) in enumerate(zip(vs, hvs)):
                totals[s, i] += float((v * hv).sum()) / len(batches)
    means = totals.mean(dim=0)
    errors = (
        totals.std(dim=0) / math.sqrt(samples) if samples > 1 else torch.full_like(means, math.nan)
    )
    return {name: (float(means[i]), float(errors[i])) for i, name in enumerate(names)}


def hessian(probe: Probe) -> dict[str, LayerSensitivity]:
    model, weights, rounded = probe.model, probe.weights, probe.rounded
    with twice_differentiable(model):
        traces = hutchinson_traces(model, weights, probe.batches, probe.samples, probe.seed)
    result = {}
    for name, weight in weights.items():
        trace, error = traces[name]
        per_weight = max(trace, 0.0) / weight.numel()
        result[name] = LayerSensitivity(
            name,
            weight.numel(),
            {b: per_weight * float(d.pow(2).sum()) for b, d in rounded[name].deltas.items()},
            trace=trace,
            trace_se=error,
        )
    return result


def fisher(probe: Probe) -> dict[str, LayerSensitivity]:
    model, weights, rounded, batches = probe.model, probe.weights, probe.rounded, probe.batches
    squares = {name: torch.zeros_like(w) for name, w in weights.items()}
    for batch in batches:
        grads = torch.autograd.grad(loss_of(model, batch), list(weights.values()))
        for name, grad in zip(weights, grads):
            squares[name] += grad.detach().pow(2) / len(batches)
    return {
        name: LayerSensitivity(
            name,
            weight.numel(),
            {b: float((squares[name] * d.pow(2)).sum()) for b, d in rounded[name].deltas.items()},
        )
        for name, weight in weights.items()
    }


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch]) -> float:
    return sum(float(loss_of(model, batch)) for batch in batches) / len(batches)


@torch.no_grad()
def ablation(probe: Probe) -> dict[str, LayerSensitivity]:
    model, weights, rounded, batches = probe.model, probe.weights, probe.rounded, probe.batches
    result = {}
    for name, weight in weights.items():
        original = weight.detach().clone()
        by_width = {}
        try:
            weight.copy_(rounded[name].reference)
            base = mean_loss(model, batches)
            for width, delta in rounded[name].deltas.items():
                weight.copy_(rounded[name].reference + delta)
                by_width[width] = mean_loss(model, batches) - base
        finally:
            weight.copy_(original)
        result[name] = LayerSensitivity(name, weight.numel(), by_width)
    return result


def uncertain_traces(scores: dict[str, LayerSensitivity], z: float = 2.0) -> list[str]:
    """The layers whose Hutchinson trace is within ``z`` standard errors of 0: their scores
    are the estimate's noise (a trace below 0 scores 0, so the allocator gives such a layer the
    narrowest width at no cost). More ``sensitivity.samples`` or ``batches`` narrow them."""
    return [
        name
        for name, score in scores.items()
        if score.trace is not None
        and score.trace_se is not None
        and math.isfinite(score.trace_se)
        and abs(score.trace) < z * score.trace_se
    ]


METHODS: dict[str, Callable[[Probe], dict[str, LayerSensitivity]]] = {
    "hessian": hessian,
    "fisher": fisher,
    "ablation": ablation,
}
# The split each method scores on: the ablation is a val-loss measurement (PPQ's).
SPLITS = {"hessian": "train", "fisher": "train", "ablation": "val"}


def layer_sensitivity(
    method: str,
    model: nn.Module,
    scheme: Scheme,
    layers: list[str],
    widths: list[int],
    batches: list[Batch],
    samples: int = 16,
    seed: int = 0,
) -> tuple[dict[str, LayerSensitivity], float]:
    """(scores by layer name, seconds taken) of ``method`` for the Conv2d/Linear ``layers`` of
    the float ``model`` (left as it was, in eval mode)."""
    started = time.perf_counter()
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in layers}
    was_training = model.training
    model.eval()
    try:
        rounded = roundings(scheme, weights, widths)
        scores = METHODS[method](Probe(model, weights, rounded, batches, samples, seed))
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return scores, time.perf_counter() - started
