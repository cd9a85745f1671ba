"""A quantized model's dataflow, traced once: where each layer's input quantizer can sit.

An integer runtime quantizes a tensor where it is produced, not where it is read: the
quantizer in front of a layer moves back across the ops that only copy, pick or clip values
(ReLU, max pooling, nearest upsampling, padding, Identity, Dropout in eval) to the output of the
layer that produced it, whose integer kernel then ends in that quantizer (QLinearConv's
requantization). Q(maxpool(relu(y))) = maxpool(Q'(y)), with Q' clipping at the zero point
instead of the ReLU. Both the integer ONNX export (``lowbit.export.onnx_graph``) and the
integer arithmetic of evaluation (``lowbit.quant.integer``) take that placement from
``hoisted_quantizers``, so they agree on where every code is computed.

The trace is torch.fx's with layers (Conv2d, Linear) and quantizers kept whole: their state is
read, their maths is not traced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from lowbit.models.pooling import GlobalAveragePool
from lowbit.quant.modules import Quantizer

LAYERS = (nn.Conv2d, nn.Linear)
# Ops that commute with a monotone quantizer: the Q can move in front of them.
PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.Identity, nn.Dropout)
PAD_MODES = {"constant": "constant", "replicate": "edge"}  # torch's names -> ONNX Pad's


class UntraceableModel(ValueError):
    """torch.fx cannot trace the model (the message names why, in one line)."""


class Tracer(torch.fx.Tracer):
    """Keeps layers and quantizers whole: the exporter reads their state, not their maths."""

    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        # GlobalAveragePool: one exported op whose arithmetic the export writes as its forward
        kept_whole = (*LAYERS, Quantizer, GlobalAveragePool)
        return isinstance(module, kept_whole) or super().is_leaf_module(module, name)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        graph = Tracer().trace(model)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UntraceableModel(
            f"cannot trace {type(model).__name__} with torch.fx ({first})"
        ) from None
    return torch.fx.GraphModule(model, graph)


def is_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    return (
        (node.op == "call_module" and isinstance(modules[node.target], nn.ReLU))
        or (node.op == "call_function" and node.target in (F.relu, torch.relu))
        or (node.op == "call_method" and node.target == "relu")
    )


def pad_mode(node: torch.fx.Node) -> str:
    return node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")


def passes_through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops that commute with a per-tensor Q, so that it can move in front of them: ReLU (with
    the clip's lower bound raised to zero), max pooling, nearest upsampling and replicate or
    zero padding (they only copy or pick values), Identity and Dropout (eval)."""
    if is_relu(node, modules):
        return True
    if node.op == "call_function":
        if node.target is F.max_pool2d:
            return not node.kwargs.get("return_indices", False)
        return node.target is F.pad and pad_mode(node) in PAD_MODES
    if node.op != "call_module":
        return False
    module = modules[node.target]
    if isinstance(module, nn.Upsample):
        return module.mode == "nearest"
    if isinstance(module, nn.MaxPool2d):
        return not module.return_indices
    return isinstance(module, PASS_THROUGH)


@dataclass(frozen=True)
class Hoisted:
    """Where one layer's input quantizer moves: ``consumer`` (the fx node of the layer that
    reads it) and whether a ReLU on the way folds into its clip (lower bound = zero point)."""

    consumer: torch.fx.Node
    relu: bool


def hoisted_quantizers(gm: torch.fx.GraphModule, quantized_inputs: set[str]):
    """For each layer named in ``quantized_inputs`` (its input is quantized), where its input's
    quantizer runs: ``(points, direct)``. ``points`` maps the producing node to ``Hoisted``: the
    walk back over pass-through ops stops at a node whose output nothing else reads. ``direct``
    holds the layer nodes whose quantizer stays at their input (the producer's output is read
    elsewhere too, or is already some other layer's point)."""
    modules = dict(gm.named_modules())
    points: dict[torch.fx.Node, Hoisted] = {}
    direct: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in quantized_inputs:
            continue
        source = node.args[0]
        relu = False
        while (
            passes_through(source, modules)
            and len(source.users) == 1
            and source.op != "placeholder"
        ):
            relu |= is_relu(source, modules)
            source = source.args[0]
        if len(source.users) == 1 and source not in points:
            points[source] = Hoisted(node, relu)
        else:
            direct.add(node)
    return points, direct


def feeds_a_layer(
    gm: torch.fx.GraphModule, layers: set[str] | None = None
) -> dict[torch.fx.Node, bool]:
    """For every node, whether its output reaches a Conv2d/Linear (through any ops); given
    ``layers``, only the layers named there count."""
    modules = dict(gm.named_modules())
    feeds: dict[torch.fx.Node, bool] = {}
    for node in reversed(gm.graph.nodes):
        feeds[node] = any(
            (
                user.op == "call_module"
                and isinstance(modules[user.target], LAYERS)
                and (layers is None or user.target in layers)
            )
            or feeds.get(user, False)
            for user in node.users
        )
    return feeds


__all__ = [
    "LAYERS",
    "Hoisted",
    "Tracer",
    "UntraceableModel",
    "feeds_a_layer",
    "hoisted_quantizers",
    "is_relu",
    "passes_through",
    "trace",
]
