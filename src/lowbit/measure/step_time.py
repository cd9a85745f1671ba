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

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from lowbit.models.nin import NIN
from lowbit.quant import quantize_model
from lowbit.quant.modules import use_noise_stream

FP32 = "fp32"


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
    channels_last: bool = False,
) -> dict[str, dict[str, Any]]:
    """Median training-step milliseconds of each configuration, and its ratio to FP32.

    ``configs`` maps a name to ``quantize_model`` keyword arguments, or to None for the float
    model; ``input_shape`` is passed to ``quantize_model`` unless a configuration sets its own
    (it decides which inputs get a signed grid). Without a None entry an ``"fp32"`` one is
    added, since every ratio is to FP32. ``threads`` sets torch's intra-op threads for the
    measurement (None: leave them). Returns, per name: ``ms`` (median), ``ratio`` (median over
    FP32's median; exactly 1.0 for FP32), ``times_ms`` (every timed step), ``cpu_ms`` and
    ``cpu_ratio`` (the same for the process's CPU time, all threads: less sensitive than wall
    time to other processes taking the cores), ``threads``, ``batch_size``, ``compiled``,
    ``first_step_s`` (the first step) and, compiled, ``compile_s``: what the warm-up steps took
    beyond as many median steps (the compiles). Compiled steps need ``warmup >= 2``: the first
    compiles, and a quantizer initialised by the first batch compiles its next step again.
    ``channels_last``: every model and batch in channels-last memory order (NHWC), FP32 too;
    compiled, this also keeps inductor's own layout choice, which differs between graphs (it
    left compiled FP32 MobileNetV3-Small in NCHW and put LSQ's in NHWC), out of the ratios.
    """
    if compile and warmup < 2:
        raise ValueError("compiled step timing needs warmup >= 2 (the first steps compile)")
    if repeats < 1 or warmup < 0:
        raise ValueError("step timing needs repeats >= 1 and warmup >= 0")
    configs = dict(configs)
    fp32_names = [name for name, config in configs.items() if config is None]
    if not fp32_names:
        configs = {FP32: None, **configs}
        fp32_names = [FP32]
    baseline = fp32_names[0]

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        steps = {
            name: _training_step(
                model_factory, config, batch_size, input_shape, seed, compile, channels_last
            )
            for name, config in configs.items()
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        cpu_times: dict[str, list[float]] = {name: [] for name in configs}
        warmup_ms: dict[str, list[float]] = {name: [] for name in configs}
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
    return {
        name: {
            "ms": medians[name],
            "ratio": 1.0 if name == baseline else medians[name] / medians[baseline],
            "times_ms": times[name],
            "cpu_ms": cpu_medians[name],
            "cpu_ratio": 1.0 if name == baseline else cpu_medians[name] / cpu_medians[baseline],
            "threads": threads if threads is not None else previous_threads,
            "batch_size": batch_size,
            "compiled": compile,
            "first_step_s": warmup_ms[name][0] / 1000 if warmup_ms[name] else None,
            **(
                {"compile_s": max(0.0, sum(warmup_ms[name]) - warmup * medians[name]) / 1000}
                if compile
                else {}
            ),
        }
        for name in configs
    }


def _training_step(
    model_factory: Callable[[], nn.Module],
    config: Mapping[str, Any] | None,
    batch_size: int,
    input_shape: tuple[int, ...],
    seed: int,
    compile: bool = False,
    channels_last: bool = False,
) -> Callable[[], None]:
    """A closure running one SGD step of a freshly built (and maybe quantized, maybe compiled,
    maybe channels-last) model."""
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
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(forward(x), target)
        loss.backward()
        optimizer.step()

    return step
