"""What a weight width costs: packed bytes as the packer writes them, BOPs as ``count_bops``
counts them.

Bytes: a b-bit weight of n values is ceil(n b / 8) bytes of codes in the packed file
(``lowbit.export.packing.packed_code_bytes``). The rest of the file (per-channel scales,
biases, BatchNorm, the edge layers, the safetensors header) is measured, not modelled: the model
is quantized at an allocation and written by ``save_packed`` (``measure``). Of that rest only
the header's text changes with training: a per-tensor weight scale is written as a decimal
number in JSON, at most ``SCALE_CHARS`` characters, and the header is padded to 8 bytes;
``header_slack`` is what those can still grow by, which a size budget reserves, so the file a
QAT run writes stays within it.

BOPs: MACs x wbits x abits per layer (``lowbit.measure.complexity``), the abits of the run's
plan; ``BOPS_REFERENCE_BITS`` squared per MAC is the uniform W8A8 model that ``bops_ratio``
is relative to.

Width 32 keeps a layer's weights float: 4 bytes a weight, the float32 tensor the packer writes
for a layer it does not quantize, and MACs x 32 x abits BOPs, as ``count_bops`` counts a float
weight. A float layer's weight also drops its grid from the file (the scale, per channel or in
the header); the rest of the file is measured at the widest integer width, so it keeps those
bytes and a float layer's price is an upper bound by them (the size printed is measured).

Time (``budget.latency_ms``): each layer's int8 and float time in ONNX Runtime, measured by
``lowbit.mixed.latency``.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lowbit.export.packing import packed_code_bytes, quantized_weights, save_packed
from lowbit.measure.complexity import count_bops, count_macs
from lowbit.mixed.allocation import Allocation, with_allocation
from lowbit.quant.convert import LayerBits, quantize_model

SIZE, BOPS, LATENCY = "size_bytes", "bops", "latency_ms"
BOPS_REFERENCE_BITS = 8
SCALE_CHARS = 22  # repr of a positive float32 as a double: 17 digits, '.', 'e-05' at most
HEADER_ALIGNMENT = 8  # safetensors pads its header to a multiple of 8 bytes


def width_costs(
    model: nn.Module,
    plan: dict[str, LayerBits],
    layers: list[str],
    widths: list[int],
    input_shape: tuple[int, ...],
) -> dict[str, dict[int, dict[str, int]]]:
    """{layer: {width: {"size_bytes": code bytes, "bops": BOPs}}} of the float ``model``'s
    ``layers`` at each width, activations at the plan's abits."""
    macs = count_macs(model, input_shape)
    modules = dict(model.named_modules())
    return {
        name: {
            b: {
                SIZE: packed_code_bytes(modules[name].weight.numel(), b),
                BOPS: macs[name] * b * plan[name].abits,
            }
            for b in widths
        }
        for name in layers
    }


def reference_bops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """BOPs of the model at uniform W8A8: what ``budget.bops_ratio`` is a fraction of."""
    return sum(count_macs(model, input_shape).values()) * BOPS_REFERENCE_BITS**2


def header_slack(model: nn.Module) -> int:
    """Bytes the packed file's header can still grow by as training moves the per-tensor weight
    scales (module docstring)."""
    slack = HEADER_ALIGNMENT - 1
    for layer in quantized_weights(model).values():
        grid = layer.weight_quantizer.grid(layer.weight.detach().float().cpu())
        if not grid.per_channel:
            slack += SCALE_CHARS - len(repr(float(grid.scale)))
    return slack


@dataclass(frozen=True)
class Measured:
    size_bytes: int  # the packed file's bytes, as save_packed writes it now
    bops: int
    slack: int  # header_slack


def measure(
    model: nn.Module, quant: dict[str, Any], allocation: Allocation, input_shape: tuple[int, ...]
) -> Measured:
    """Quantize a copy of the float ``model`` at ``allocation`` (as ``quant.allocation`` does in
    a run), pack it and count its BOPs."""
    quantized = quantize_model(
        copy.deepcopy(model), input_shape=input_shape, **with_allocation(quant, allocation)
    )
    with tempfile.TemporaryDirectory() as folder:
        size = save_packed(quantized, Path(folder) / "model.safetensors").stat().st_size
    bops = sum(count_bops(quantized, input_shape).values())
    return Measured(size, bops, header_slack(quantized))
