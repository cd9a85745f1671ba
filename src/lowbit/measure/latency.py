"""Batch-1 forward latency of the model as it runs in PyTorch (fake-quant included).

Fake quantization computes in float32, so this is the cost of the QAT graph, not of a deployed
integer model; the report says so next to the number.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def measure_latency(
    model: nn.Module, input_shape: tuple[int, ...], warmup: int = 5, repeats: int = 30
) -> dict[str, float]:
    """Median, min and max milliseconds of ``repeats`` batch-1 forwards after ``warmup`` ones."""
    if repeats < 1 or warmup < 0:
        raise ValueError("latency needs repeats >= 1 and warmup >= 0")
    device = next(model.parameters()).device
    x = torch.randn(1, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) * 1000)
    finally:
        model.train(was_training)
    return {
        "ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
