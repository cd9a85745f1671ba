"""Calibration: every activation quantizer's range from training batches, before any step.

A model started from trained weights (``init=``) has activations whose ranges are known before
training: a PTQ run (``trainer.max_epochs=0``) uses them as they are, and QAT fine-tunes from
them instead of from the paper's fixed start (PACT's alpha 10) or one batch's guess.

``calibrate`` runs ``batches`` training batches through the model in eval mode (BatchNorm uses
its running statistics, as the deployed model does), with every activation quantizer turned
into an identity that records what reaches it, so each layer sees the float activations of the
float network above it. Each quantizer then sets its own parameters from what it saw, through
one method of the quantizer contract, ``Quantizer.calibrate(observed)``:

- PACT: alpha = the range's top (symmetric PACT: its largest magnitude);
- LSQ: step = the range / Qp (signed inputs: the larger of top / Qp and -bottom / Qn);
- LSQ+: offset = the bottom (<= 0, whole steps), step = (top - bottom) / Qp, the paper's min/max
  initialisation over all batches instead of one;
- the image quantizer: its uint8 range;
- DoReFa: nothing (its activation range is fixed by Eq. 11).

Weights need no batches: LSQ's weight steps are set by the paper's rule, 2 mean|w| / sqrt(Qp),
from the loaded weights when the layers are swapped; DoReFa and abs-max weights have none.

The range is ``minmax`` (the extremes seen) or ``percentile`` (the p-th and (100 - p)-th
percentiles, of a strided sample of at most ``SAMPLE_PER_BATCH`` values per batch and layer).

``reestimate_batchnorm`` (``calibration.bn_reestimation=true``) then recomputes every
BatchNorm's running statistics over the same batches with the quantizers on, as the quantized
network produces them (a cumulative average, momentum None), the correction PTQ work applies
when quantization shifts the statistics BatchNorm was trained with.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.quant.integer import float_arithmetic
from lowbit.quant.modules import OutputRequantizer, QuantizedLayer, Quantizer

METHODS = ("minmax", "percentile", "mse")
SAMPLE_PER_BATCH = 1 << 16
MSE_SAMPLE = 1 << 18  # values the MSE search scores each candidate step on
MSE_CANDIDATES = 100  # steps tried: the min-max step times 1/100, 2/100, ..., 1


@dataclass
class ObservedActivation:
    """What one quantizer's input held over the calibration batches, and the grid step that
    the chosen method fits to it (``step``)."""

    method: str = "minmax"
    percentile: float = 99.99
    minimum: torch.Tensor = field(default_factory=lambda: torch.tensor(float("inf")))
    maximum: torch.Tensor = field(default_factory=lambda: torch.tensor(float("-inf")))
    samples: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        self.minimum = torch.minimum(self.minimum, x.min().cpu())
        self.maximum = torch.maximum(self.maximum, x.max().cpu())
        if self.method != "minmax":
            values = x.flatten()
            stride = -(-values.numel() // SAMPLE_PER_BATCH)
            self.samples.append(values[::stride].cpu())

    def sample(self, limit: int | None = None) -> torch.Tensor:
        values = torch.cat(self.samples)
        if limit is not None and values.numel() > limit:
            values = values[:: -(-values.numel() // limit)]
        return values

    def low(self) -> torch.Tensor:
        """The range's bottom: the (100 - p)-th percentile with ``percentile``, else the
        minimum (the MSE search sets the step, not the bottom)."""
        if self.method == "percentile":
            return torch.quantile(self.sample(), 1 - self.percentile / 100)
        return self.minimum

    def high(self) -> torch.Tensor:
        """The range's top: the p-th percentile with ``percentile``, else the maximum."""
        if self.method == "percentile":
            return torch.quantile(self.sample(), self.percentile / 100)
        return self.maximum

    def step(self, qn: int, qp: int, offset: torch.Tensor | float = 0.0) -> torch.Tensor:
        """The step of a grid with levels -qn..qp (in steps, around ``offset``) for these
        activations: the range's ends on the grid's ends (``minmax``, ``percentile``), or, with
        ``mse``, the step among 1/100 .. 1 of that min-max step whose quantization error,
        mean((Q(x) - x)^2) over the sample, is smallest: at 8 bits that is about the min-max
        step, at 2 bits it clips the tails (a per-layer fit, as TensorRT's and NNCF's MSE
        calibrators do)."""
        offset = torch.as_tensor(offset, dtype=torch.float32)
        top, bottom = self.high() - offset, self.low() - offset
        step = (top.clamp(min=0) / qp) if qp else torch.tensor(0.0)
        if qn:
            step = torch.maximum(step, (-bottom).clamp(min=0) / qn)
        if self.method != "mse" or not step > 0:
            return step
        x = self.sample(MSE_SAMPLE) - offset
        candidates = step * torch.arange(1, MSE_CANDIDATES + 1) / MSE_CANDIDATES
        errors = torch.stack(
            [((torch.clamp(torch.round(x / s), -qn, qp) * s - x) ** 2).mean() for s in candidates]
        )
        return candidates[int(torch.argmin(errors))]


def check_settings(method: str, percentile: float, batches: int) -> None:
    """ConfigError for a calibration setting lowbit cannot use."""
    if method not in METHODS:
        raise ConfigError(f"calibration.method={method!r} is unknown: use {', '.join(METHODS)}")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
        raise ConfigError(f"calibration.percentile must be a number, got {percentile!r}")
    if not 50 < percentile <= 100:
        raise ConfigError(f"calibration.percentile must be in (50, 100], got {percentile}")
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ConfigError(f"calibration.batches must be an integer >= 1, got {batches!r}")


def input_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Each quantized layer's input quantizer, by layer name, and each 8-bit requantization of
    a layer output (``OutputRequantizer``, ``lowbit.quant.integer``), by its module name."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLayer):
            found[name] = module.input_quantizer
            if module.output_quantizer is not None:
                found[f"{name}.output_quantizer"] = module.output_quantizer
        elif isinstance(module, OutputRequantizer):
            found[name] = module
    return found


def images_of(batch) -> torch.Tensor:
    """The images of a batch: the batch itself or its first element (images, labels/targets)."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def limited(loader: Iterable, batches: int) -> Iterator[torch.Tensor]:
    for index, batch in enumerate(loader):
        if index >= batches:
            return
        yield images_of(batch)


@contextmanager
def float_activations(model: nn.Module, observed: dict[str, ObservedActivation] | None = None):
    """Every input quantizer of ``model`` passes its input through unchanged (and, given
    ``observed``, records it there) inside the block; evaluation computes in float
    (``lowbit.quant.integer.float_arithmetic``), so the layers' outputs are float too."""
    quantizers = input_quantizers(model)
    hooks = []
    for name, quantizer in quantizers.items():
        seen = observed.get(name) if observed is not None else None

        def identity(_module, inputs, _output, seen=seen):
            if seen is not None:
                seen.add(inputs[0])
            return inputs[0]

        hooks.append(quantizer.register_forward_hook(identity))
    try:
        with float_arithmetic(model):
            yield
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def run_batches(model: nn.Module, loader: Iterable, batches: int) -> int:
    """Forward ``batches`` batches of ``loader`` through ``model``; returns how many it had."""
    device = next(model.parameters()).device
    count = 0
    for images in limited(loader, batches):
        model(images.to(device))
        count += 1
    if count == 0:
        raise ConfigError("calibration: the training set gave no batch to calibrate on")
    return count


def observe(
    model: nn.Module, loader: Iterable, batches: int, method: str, percentile: float
) -> dict[str, ObservedActivation]:
    """Each input quantizer's ``ObservedActivation`` over ``batches`` batches of ``loader`` in
    eval mode, the quantizers passing their input through unchanged meanwhile."""
    observed = {name: ObservedActivation(method, percentile) for name in input_quantizers(model)}
    was_training = model.training
    try:
        model.eval()
        with float_activations(model, observed):
            run_batches(model, loader, batches)
    finally:
        model.train(was_training)
    return observed


def calibrate(
    model: nn.Module,
    loader: Iterable,
    method: str = "minmax",
    percentile: float = 99.99,
    batches: int = 8,
) -> dict[str, ObservedActivation]:
    """Set every activation quantizer of ``model`` from ``batches`` batches (module docstring);
    returns what each saw."""
    check_settings(method, percentile, batches)
    observed = observe(model, loader, batches, method, percentile)
    quantizers = input_quantizers(model)
    for name, seen in observed.items():
        quantizers[name].calibrate(seen)
    return observed


def reestimate_batchnorm(model: nn.Module, loader: Iterable, batches: int) -> int:
    """Recompute every BatchNorm's running statistics over ``batches`` batches as the model with
    its quantized weights produces them (activations in float, everything else in eval mode);
    returns how many layers."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    was_training = model.training
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches
            norm.train()
        with float_activations(model):
            run_batches(model, loader, batches)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)
    return len(norms)
