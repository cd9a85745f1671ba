"""What fake quantization costs in training: SGD step time of quantized models over FP32.

Every configuration is built from the same initial weights and timed in one process,
round-robin (FP32, A, B, FP32, A, B, ...), so a busy or throttling machine slows every
configuration alike and the ratios stay meaningful even when the absolute times do not.
A step is what training repeats: forward, cross-entropy loss, backward, optimizer step.
Compiled (``compile=True``), each model's forward (and so its backward) runs through
torch.compile, as ``compile=true`` trains: its first steps compile (the first, and again once a
quantizer's first-batch initialisation is done, as LSQ's), and that time is reported on its own
(``compile_s``), never in a median.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lowbit.compiled import compile_model
from lowbit.models.nin import NIN
from lowbit.quant import quantize_model
from lowbit.quant.modules import use_noise_stream

FP32 = "fp32"


LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of ``values``: (low, high,
    coverage).

    The k-th smallest and k-th largest values bracket the true median with probability
    ``coverage`` = 1 - 2 P(Binomial(n, 1/2) < k), whatever the distribution; k is the largest
    that still gives ``confidence``. Below six values no k does (for 95%): the range itself is
    returned, with the lower coverage it has (50% for two values).
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_interval needs at least one value")
    k, below = 1, 1 / 2**n  # below: P(Binomial(n, 1/2) < k)
    while k < (n + 1) // 2:
        below_next = below + math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) < k + 1)
        if 1 - 2 * below_next < confidence:
            break
        k, below = k + 1, below_next
    # k is now the largest order statistic whose interval still has the coverage (or 1)
    return ordered[k - 1], ordered[n - k], 1 - 2 * below


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Median and 95% interval of the per-round ratios (``median_interval``; ``coverage`` is
    below 0.95 under six rounds): each round timed both back to back, so a slow stretch of the
    machine divides out of each ratio. The training step's ratios and the deployed latency
    table's (``scripts/bench.py``) both come from here."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)]
    low, high, coverage = median_interval(ratios)
    return {"median": statistics.median(ratios), "interval": [low, high], "coverage": coverage}


def training_step_ratios(
    configs: Mapping[str, Mapping[str, Any] | None],
    batch_size: int = 128,
    input_shape: tuple[int, ...] = (3, 32, 32),
    threads: int | None = 2,
    warmup: int = 3,
    repeats: int = 15,
    model_factory: Callable[[], nn.Module] = NIN,
    seed: int = 0,
    compile: bool = False,
    layouts: Sequence[str] = ("nchw",),
) -> dict[str, dict[str, Any]]:
    """Median training-step milliseconds of each configuration, and its ratio to FP32.

    ``configs`` maps a name to ``quantize_model`` keyword arguments, or to None for the float
    model; ``input_shape`` is passed to ``quantize_model`` unless a configuration sets its own
    (it decides which inputs get a signed grid). Without a None entry an ``"fp32"`` one is
    added, since every ratio is to FP32. ``threads`` sets torch's intra-op threads for the
    measurement (None: leave them). Returns, per name: ``ms`` (median), ``ratio`` (median over
    FP32's median; exactly 1.0 for FP32), ``paired_ratio`` and ``paired_interval`` (the median
    of the round-by-round ratios to FP32 and its distribution-free 95% interval,
    ``median_interval``, with its ``paired_coverage``: a ratio whose interval straddles a bound
    is within the noise),
    ``times_ms`` (every timed step), ``cpu_ms`` and ``cpu_ratio`` (the same for the process's
    CPU time, all threads), ``threads``, ``batch_size``, ``compiled``, ``layout``,
    ``first_step_s`` (the first step) and, compiled, ``compile_s``: what the warm-up steps took
    beyond as many median steps (the compiles). Compiled steps need ``warmup >= 2``: the first
    compiles, and a quantizer initialised by the first batch compiles its next step again.

    ``layouts``: memory orders from ``LAYOUTS``, every model and batch in it, FP32 too; ratios
    are to the FP32 step of the same layout. With more than one, every layout's steps join the
    same round-robin, the first layout's entries keep their names and the others' are named
    ``name@layout``, with ``over_first_layout``: the paired ratio of the step to the same
    configuration's in the first layout (median and interval). Compiled on the CPU, inductor
    lays convolutions out NHWC whatever the model's layout, and a model traced NCHW gets
    layout conversions around them (``lowbit.compiled``).
    """
    if compile and warmup < 2:
        raise ValueError("compiled step timing needs warmup >= 2 (the first steps compile)")
    if repeats < 1 or warmup < 0:
        raise ValueError("step timing needs repeats >= 1 and warmup >= 0")
    unknown = [layout for layout in layouts if layout not in LAYOUTS]
    if unknown or not layouts or len(set(layouts)) != len(layouts):
        raise ValueError(f"layouts must be distinct names from {sorted(LAYOUTS)}, got {layouts}")
    configs = dict(configs)
    fp32_names = [name for name, config in configs.items() if config is None]
    if not fp32_names:
        configs = {FP32: None, **configs}
        fp32_names = [FP32]
    baseline = fp32_names[0]

    def key(name: str, layout: str) -> str:
        return name if layout == layouts[0] else f"{name}@{layout}"

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    # Every model here shares one ``forward`` function, and TorchDynamo keeps at most
    # ``recompile_limit`` graphs per function before it runs the rest eagerly without a word:
    # a quantized model takes two (first-batch initialisation, then the steady step), so the
    # fifth quantized configuration's "compiled" steps were eager. Room for all, and a miss
    # raises instead of timing eager steps as compiled ones.
    compile_room = (
        torch._dynamo.config.patch(
            recompile_limit=4 * len(configs) * len(layouts), fail_on_recompile_limit_hit=True
        )
        if compile
        else contextlib.nullcontext()
    )
    if compile:
        torch._dynamo.reset()  # no graph of an earlier measurement counts against the room
    try:
        with compile_room:
            steps = {
                key(name, layout): _training_step(
                    model_factory, config, batch_size, input_shape, seed, compile, layout
                )
                for layout in layouts
                for name, config in configs.items()
            }
            times: dict[str, list[float]] = {name: [] for name in steps}
            cpu_times: dict[str, list[float]] = {name: [] for name in steps}
            warmup_ms: dict[str, list[float]] = {name: [] for name in steps}
            for round_index in range(warmup + repeats):
                for name, step in steps.items():
                    start, cpu_start = time.perf_counter(), time.process_time()
                    step()
                    elapsed = (time.perf_counter() - start) * 1000
                    cpu_elapsed = (time.process_time() - cpu_start) * 1000
                    if round_index < warmup:
                        warmup_ms[name].append(elapsed)
                    else:
                        times[name].append(elapsed)
                        cpu_times[name].append(cpu_elapsed)
    finally:
        torch.set_num_threads(previous_threads)

    medians = {name: statistics.median(values) for name, values in times.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_times.items()}
    results = {}
    for layout in layouts:
        reference = key(baseline, layout)
        for config_name in configs:
            name = key(config_name, layout)
            paired = paired_ratio(times[name], times[reference])
            results[name] = {
                "ms": medians[name],
                "ratio": 1.0 if name == reference else medians[name] / medians[reference],
                "paired_ratio": 1.0 if name == reference else paired["median"],
                "paired_interval": [1.0, 1.0] if name == reference else paired["interval"],
                "paired_coverage": paired["coverage"],
                "times_ms": times[name],
                "cpu_ms": cpu_medians[name],
                "cpu_ratio": (
                    1.0 if name == reference else cpu_medians[name] / cpu_medians[reference]
                ),
                "threads": threads if threads is not None else previous_threads,
                "batch_size": batch_size,
                "compiled": compile,
                "layout": layout,
                "first_step_s": warmup_ms[name][0] / 1000 if warmup_ms[name] else None,
                **(
                    {"compile_s": max(0.0, sum(warmup_ms[name]) - warmup * medians[name]) / 1000}
                    if compile
                    else {}
                ),
                **(
                    {"over_first_layout": paired_ratio(times[name], times[config_name])}
                    if layout != layouts[0]
                    else {}
                ),
            }
    return results


def _training_step(
    model_factory: Callable[[], nn.Module],
    config: Mapping[str, Any] | None,
    batch_size: int,
    input_shape: tuple[int, ...],
    seed: int,
    compile: bool = False,
    layout: str = "nchw",
) -> Callable[[], None]:
    """A closure running one SGD step of a freshly built (and maybe quantized, maybe compiled)
    model, model and batch in ``layout``'s memory order."""
    torch.manual_seed(seed)  # the same initial weights and data for every configuration
    model = model_factory()
    if config is not None:
        model = quantize_model(model, **{"input_shape": tuple(input_shape), **config})
        use_noise_stream(model, seed)  # Eq. 12's counter-based noise, as training keys it
    x = torch.randn(batch_size, *input_shape)
    model.eval()  # the probe for the class count must not touch BN statistics or calibration
    with torch.no_grad():
        classes = model(x[:2]).shape[-1]
    model.train()
    target = torch.randint(0, classes, (batch_size,))
    if layout != "nchw":
        model = model.to(memory_format=LAYOUTS[layout])
        x = x.contiguous(memory_format=LAYOUTS[layout])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = compile_model(model) if compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), target)
        loss.backward()
        optimizer.step()

    return step
