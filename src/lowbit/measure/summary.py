"""A per-layer map of a (quantized) model: kind, bits, parameters, MACs and packed size."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lowbit.measure.complexity import count_macs
from lowbit.measure.size import model_size, parameter_bytes
from lowbit.quant.convert import quantizable_layers
from lowbit.quant.modules import QuantizedLayer, describe_bits


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    bits: str
    params: int
    macs: int
    size_bytes: int


def describe_layer(layer: nn.Module) -> str:
    if isinstance(layer, nn.Conv2d):
        kh, kw = layer.kernel_size
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels
        kind = "dwconv" if depthwise else "conv"
        return f"{kind} {kh}x{kw}/{layer.stride[0]} {layer.in_channels}->{layer.out_channels}"
    return f"linear {layer.in_features}->{layer.out_features}"


def layer_bits(layer: nn.Module) -> str:
    if isinstance(layer, QuantizedLayer):
        return "/".join(describe_bits(b) for b in (layer.wbits, layer.abits, layer.gbits))
    return "fp32"


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[LayerRow], dict]:
    """One row per Conv2d/Linear, then the totals (``params``, ``macs``, ``size_bytes``)."""
    macs = count_macs(model, input_shape)
    sizes = parameter_bytes(model)
    rows = []
    for name, layer in quantizable_layers(model):
        own = [f"{name}.{p}" for p, _ in layer.named_parameters(recurse=False)]
        rows.append(
            LayerRow(
                name=name,
                kind=describe_layer(layer),
                bits=layer_bits(layer),
                params=sum(p.numel() for p in layer.parameters(recurse=False)),
                macs=macs.get(name, 0),
                size_bytes=sum(sizes[n] for n in own if n in sizes),
            )
        )
    size = model_size(model)
    totals = {
        "params": size.params,
        "macs": sum(macs.values()),
        "size_bytes": size.size_bytes,
        "size_fp32_bytes": size.size_fp32_bytes,
    }
    return rows, totals


def format_table(rows: list[LayerRow], totals: dict) -> list[str]:
    header = ("layer", "kind", "W/A/G", "params", "MACs", "bytes")
    body = [
        (r.name, r.kind, r.bits, f"{r.params:,}", f"{r.macs:,}", f"{r.size_bytes:,}") for r in rows
    ]
    other_params = totals["params"] - sum(r.params for r in rows)
    other_bytes = totals["size_bytes"] - sum(r.size_bytes for r in rows)
    body.append(
        (
            "(other parameters)",
            "norm, alpha, ...",
            "fp32",
            f"{other_params:,}",
            "",
            f"{other_bytes:,}",
        )
    )
    body.append(
        (
            "total",
            "",
            "",
            f"{totals['params']:,}",
            f"{totals['macs']:,}",
            f"{totals['size_bytes']:,}",
        )
    )
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *body]):
        cells = [
            cell.ljust(w) if i < 3 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells))
        if index == 0 or index == len(body) - 1:
            lines.append("  ".join("-" * w for w in widths))
    return lines
