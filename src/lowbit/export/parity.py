"""Where the integer export and the trained model part: layer by layer, in activation codes.

For every layer whose input the integer graph quantizes, ``layer_parity`` compares the integer
codes ONNX Runtime computes there with the codes of the PyTorch model's own input quantizer in
evaluation (its output divided by its grid's step, ``Quantizer.grid``), on the same images:

- ``differ``: the share of codes that are not equal;
- ``max_steps``: the largest difference, in steps of that layer's grid;
- ``codes``: how many codes were compared (``images`` images).

Evaluation computes in integers where the runtime does (``lowbit.quant.integer``): BatchNorm
folded, the bias on the int32 grid, ORT's requantization. There ``differ`` is 0. A layer whose
input lowbit keeps in float (the image with ``input_bits=32``) is quantized by the export with
calibrated min/max and has no codes of the model's own: it is listed with ``None``. Codes still
differ after a layer output the export requantizes on its own (``requantized_output``: an
output that reaches hard-swish or a residual sum where the model holds no ``OutputRequantizer``,
e.g. one trained before arithmetic version 2), so the first layer with a difference is where to
look.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from lowbit.export.onnx import session
from lowbit.export.onnx_graph import INPUT, LAYER_INPUTS_KEY, REQUANTIZED_KEY, UINT8_SHIFT


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in proto.metadata_props}


def requantized_layers(path: str | Path) -> list[str]:
    """The layers whose outputs the export quantized where the fake-quant model does not."""
    value = metadata(onnx.load(str(path))).get(REQUANTIZED_KEY, "")
    return [name for name in value.split(",") if name]


@torch.no_grad()
def fake_quant_codes(model: nn.Module, names: list[str], images: torch.Tensor):
    """{layer: uint8-shifted integer codes of its input quantizer's output} for ``images``."""
    codes: dict[str, np.ndarray] = {}
    hooks = []
    for name in names:
        quantizer = getattr(model.get_submodule(name), "input_quantizer", None)
        grid = quantizer.grid() if quantizer is not None else None
        if grid is None:
            continue

        def hook(_module, _args, output, grid=grid, name=name):
            steps = torch.round(output.double() / float(grid.scale)) + grid.zero_point
            codes[name] = (steps + (UINT8_SHIFT if grid.signed else 0)).numpy()

        hooks.append(quantizer.register_forward_hook(hook))
    try:
        model.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    return codes


def onnx_codes(path: str | Path, images: torch.Tensor, threads: int = 2) -> dict[str, np.ndarray]:
    """{layer: integer input codes computed by ORT} for ``images``: each layer's input tensor is
    made a graph output of a copy of the model (its other nodes unchanged)."""
    proto = onnx.load(str(path))
    layer_inputs = json.loads(metadata(proto).get(LAYER_INPUTS_KEY, "{}"))
    proto.graph.output.extend(
        helper.make_tensor_value_info(tensor, TensorProto.UINT8, None)
        for tensor in layer_inputs.values()
    )
    scratch = Path(path).with_suffix(".parity.onnx")
    onnx.save(proto, str(scratch))
    try:
        runner = session(scratch, threads)
        names = [output.name for output in runner.get_outputs()]
        values = runner.run(None, {INPUT: images.float().numpy()})
    finally:
        scratch.unlink(missing_ok=True)
    by_tensor = dict(zip(names, values))
    return {layer: by_tensor[tensor].astype(np.float64) for layer, tensor in layer_inputs.items()}


def layer_parity(
    model: nn.Module, path: str | Path, images: torch.Tensor, threads: int = 2
) -> list[dict]:
    """One row per layer with an integer input, in graph order (module docstring)."""
    exported = onnx_codes(path, images, threads)
    trained = fake_quant_codes(model, list(exported), images)
    requantized = set(requantized_layers(path))
    rows = []
    for layer, actual in exported.items():
        row = {
            "layer": layer,
            "differ": None,
            "max_steps": None,
            "requantized_output": layer in requantized,
            "codes": 0,
            "images": len(images),
        }
        if layer in trained:
            difference = np.abs(actual - trained[layer].reshape(actual.shape))
            row["differ"] = float((difference > 0).mean())
            row["max_steps"] = float(difference.max(initial=0))
            row["codes"] = int(difference.size)
        rows.append(row)
    return rows


def parity_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    lines = [f"{'layer':<40} {'codes differing':>16} {'max diff (steps)':>17}  note"]
    for row in rows:
        if row["differ"] is None:
            shown, steps, note = "-", "-", "input kept float in training (calibrated)"
        else:
            shown, steps = f"{100 * row['differ']:.3f}%", f"{row['max_steps']:g}"
            note = ""
        if row["requantized_output"]:
            note = (note + "; " if note else "") + "output requantized (8-bit, calibrated)"
        lines.append(f"{row['layer']:<40} {shown:>16} {steps:>17}  {note}")
    return "\n".join(lines)


__all__ = ["layer_parity", "parity_table", "requantized_layers"]
