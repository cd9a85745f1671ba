"""Packed checkpoints: every quantized weight stored at its own bit width, in safetensors.

A k-bit weight tensor is stored as its integer codes on its quantizer's grid, read through the
grid contract (``Quantizer.grid``, ``integer_codes``, ``latent_weight``; ``lowbit.quant.grid``),
so any quantizer that states its grid packs, a user's own included. Each code is stored as its
level index (code - qmin) / code_step, k bits per value, packed little-end first into bytes (a
2-bit tensor of N values takes ceil(2N / 8) bytes). The grid's description goes into the JSON
header, a per-tensor scale with it (DoReFa Eq. 9's 1/n), and a per-channel scale into the payload
as float32 (abs-max's max|w_c| / m: 4 bytes per output channel).

BatchNorm layers are stored as the per-channel affine map they compute in eval mode,
y = a x + b: two float32 numbers per channel, as many as their trainable gamma and beta, instead
of gamma, beta and the running mean and variance. a and b are read from PyTorch's own CPU kernel
(``kernel_affine``), not recomputed, and the restored layer gets mean 0 and a variance v with
v + eps = 1 exactly, so the kernel computes the same a and b again and the restored model's
eval outputs equal the saved model's bit for bit (checked on every layer when saving; a layer
where they would not is stored with its statistics instead). What is lost is the running
statistics' training state: a run continued from a packed file re-estimates them from its
batches. ``save_packed(..., batchnorm="keep")`` stores them as they are.

Every other entry of the state dict (biases, PACT's alpha) is stored as it is, float32. The
latent float weights are not: they are what training needs, not what the model computes with.

``load_packed`` needs a model built and ``quantize_model``-ed with the same config. It does not
swap the quantizers for frozen tensors; it writes into each quantized layer a float weight that
the layer's own quantizer maps back onto exactly the stored codes (its ``latent_weight``; for
DoReFa, atanh(w_q / 2): tanh then undoes atanh and the per-tensor max normalises the 1/2 away),
so the restored model is
the same ordinary QAT model, whose outputs equal the saved model's bit for bit, and it can go on
training. Both ``save_packed`` and ``load_packed`` check that equality on every weight and raise
if a quantizer has no exact packed form (DoReFa's 1-bit Eq. 7, whose scale is a mean over the
tensor, has none yet).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from lowbit.quant.fold import batchnorm_factors
from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.grid import IntegerGrid
from lowbit.quant.modules import QuantizedLayer
from lowbit.storage import write_bytes_atomically

FORMAT = "lowbit-packed"
FORMAT_VERSION = 2  # 2: every grid described through the quantizers' grid contract
CODES, SCALE = "codes", "scale"


# -- bit packing ------------------------------------------------------------------------------


def packed_code_bytes(count: int, bits: int) -> int:
    """Bytes ``pack_codes`` writes for ``count`` codes of ``bits`` bits: ceil(count bits / 8)."""
    return -(-count * bits // 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits) as a uint8 tensor of ``packed_code_bytes`` bytes.

    Bit j of code i lands at bit position i * bits + j of the stream, bytes filled from their
    least significant bit: the layout is the same for any bit width from 1 to 16.
    """
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits")
    shifts = torch.arange(bits, dtype=torch.int32)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1).to(torch.uint8)
    padding = -stream.numel() % 8
    stream = torch.cat([stream, stream.new_zeros(padding)]).reshape(-1, 8)
    return (stream << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of ``pack_codes``: ``count`` codes as an int64 tensor."""
    stream = (packed.reshape(-1, 1) >> torch.arange(8, dtype=torch.uint8)) & 1
    stream = stream.reshape(-1)[: count * bits].reshape(count, bits).to(torch.int64)
    return (stream << torch.arange(bits, dtype=torch.int64)).sum(dim=1)


# -- grids: integer codes <-> the quantizer's float values ------------------------------------


@dataclass(frozen=True)
class PackedWeight:
    """One quantized weight in packed form: its quantizer's grid, shape and integer codes."""

    grid: IntegerGrid
    shape: tuple[int, ...]
    codes: torch.Tensor  # int64, the weight's shape, on the grid's levels

    @property
    def bits(self) -> int:
        return self.grid.bits


def encode_weight(layer: QuantizedLayer) -> PackedWeight:
    """The packed form of ``layer``'s quantized weight, read through the grid contract.

    NotImplementedError if the quantizer has no exact packed form: its grid is missing, or the
    weight it restores (``latent_weight``) does not quantize back to the same values bit for bit.
    """
    quantizer = layer.weight_quantizer
    with torch.no_grad():
        weight = layer.weight.detach().to(torch.float32).cpu()
        fake_quant = quantizer(weight)
        grid = quantizer.grid(weight)
        codes = quantizer.integer_codes(weight)
        grid.check_codes(codes, type(quantizer).__name__)
        restored = quantizer(quantizer.latent_weight(codes, grid))
    if not torch.equal(restored, fake_quant):
        raise NotImplementedError(
            f"no exact packed form for {type(quantizer).__name__} at "
            f"{grid.bits} bits: its latent_weight does not restore the "
            f"fake-quant weight bit for bit"
        )
    return PackedWeight(grid, tuple(weight.shape), codes)


def grid_header(grid: IntegerGrid) -> dict:
    """The grid's description in the file's JSON header; a per-channel scale is a tensor."""
    header = {
        "bits": grid.bits,
        "signed": grid.signed,
        "qmin": grid.qmin,
        "qmax": grid.qmax,
        "zero_point": grid.zero_point,
        "code_step": grid.code_step,
        "axis": grid.axis,
    }
    if not grid.per_channel:  # float32 -> JSON double -> float32 is exact
        header["scale"] = float(grid.scale)
    return header


def grid_from_header(entry: dict, channel_scale: torch.Tensor | None) -> IntegerGrid:
    scale = (
        channel_scale
        if entry["axis"] is not None
        else torch.tensor(entry["scale"], dtype=torch.float32)
    )
    return IntegerGrid(
        int(entry["bits"]),
        bool(entry["signed"]),
        scale,
        int(entry["qmin"]),
        int(entry["qmax"]),
        int(entry["zero_point"]),
        entry["axis"],
        int(entry["code_step"]),
    )


BATCHNORM_MODES = ("affine", "keep")


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Name -> BatchNorm layer, for those with an affine map and running statistics."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.affine
        and m.track_running_stats
        and m.running_mean is not None
    }


def unit_variance(eps: float) -> torch.Tensor:
    """The float32 v with v + eps == 1 exactly, so that the kernel's 1 / sqrt(v + eps) is 1."""
    eps32 = torch.tensor(eps, dtype=torch.float32)
    v = 1 - eps32
    while (total := (v + eps32).item()) != 1.0:  # one ulp off at most, if ever
        v = torch.nextafter(v, torch.tensor(2.0 if total < 1 else 0.0))
    return v


def kernel_affine(layer: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with y = a x + b, exactly as PyTorch's CPU eval kernel computes them: a is the
    output at x = 1 with mean and beta 0, b the output at x = 0 (``batchnorm_factors``)."""
    return batchnorm_factors(layer)


@torch.no_grad()
def affine_batchnorm(
    layer: nn.modules.batchnorm._BatchNorm, scale: torch.Tensor, shift: torch.Tensor
) -> nn.modules.batchnorm._BatchNorm:
    """A copy of ``layer`` on the CPU that computes a x + b from mean 0 and unit variance."""
    restored = copy.deepcopy(layer).float().cpu().eval()
    restored.weight.copy_(scale)
    restored.bias.copy_(shift)
    restored.running_mean.zero_()
    restored.running_var.fill_(float(unit_variance(layer.eps)))
    return restored


@torch.no_grad()
def restores_exactly(
    layer: nn.modules.batchnorm._BatchNorm, scale: torch.Tensor, shift: torch.Tensor
) -> bool:
    """Whether the affine form gives the layer's eval outputs bit for bit on a probe batch."""
    spatial = (5, 7) if isinstance(layer, nn.BatchNorm2d) else ()
    probe = (
        torch.randn((3, layer.num_features, *spatial), generator=torch.Generator().manual_seed(0))
        * 4
    )
    original = copy.deepcopy(layer).float().cpu().eval()
    return torch.equal(original(probe), affine_batchnorm(layer, scale, shift)(probe))


def quantized_weights(model: nn.Module) -> dict[str, QuantizedLayer]:
    """State-dict key of each quantized weight -> its layer (layers kept in float excluded)."""
    return {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, QuantizedLayer) and module.wbits < FULL_PRECISION
    }


# -- files ------------------------------------------------------------------------------------


def save_packed(model: nn.Module, path: str | Path, batchnorm: str = "affine") -> Path:
    """Write ``model`` as a packed safetensors file; returns the path.

    Tensors: ``packed/<key>/codes`` (uint8, bit-packed) and ``packed/<key>/max_abs`` for each
    quantized weight, ``state/<key>`` for every other state-dict entry (with ``batchnorm=
    "affine"``, a BatchNorm's weight and bias hold its eval affine map and its statistics are
    left out; ``"keep"`` stores them as they are). The safetensors metadata holds one JSON
    header (``lowbit``) with each packed weight's grid, bits and shape and the affine layers.
    """
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm={batchnorm!r}: use one of {', '.join(BATCHNORM_MODES)}")
    path = Path(path)
    layers = quantized_weights(model)
    tensors: dict[str, torch.Tensor] = {}
    header: dict[str, dict] = {}
    affine: dict[str, float] = {}  # BatchNorm stored as its affine map -> its eps
    replaced: dict[str, torch.Tensor] = {}
    if batchnorm == "affine":
        for name, layer in batchnorm_layers(model).items():
            scale, shift = kernel_affine(layer)
            if not restores_exactly(layer, scale, shift):
                continue  # kept with its statistics: exactness comes first
            affine[name] = float(layer.eps)
            replaced[f"{name}.weight"], replaced[f"{name}.bias"] = scale, shift
    skipped = {
        f"{name}.{buffer}"
        for name in affine
        for buffer in ("running_mean", "running_var", "num_batches_tracked")
    }
    for key, layer in layers.items():
        packed = encode_weight(layer)
        tensors[f"packed/{key}/{CODES}"] = pack_codes(
            packed.grid.indices(packed.codes), packed.bits
        )
        if packed.grid.per_channel:
            tensors[f"packed/{key}/{SCALE}"] = packed.grid.scale.float().contiguous()
        header[key] = {**grid_header(packed.grid), "shape": list(packed.shape)}
    for key, value in model.state_dict().items():
        if key in layers or key in skipped:
            continue
        value = replaced.get(key, value).detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        tensors[f"state/{key}"] = value.clone().contiguous()  # safetensors refuses shared storage
    metadata = {
        "lowbit": json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "weights": header,
                "affine_batchnorm": affine,
            },
            sort_keys=True,
        )
    }
    # whole or not at all: a full disk leaves no half file that load_packed would read
    return write_bytes_atomically(path, safetensors_bytes(tensors, metadata=metadata))


def read_packed(path: str | Path) -> tuple[dict[str, PackedWeight], dict[str, torch.Tensor]]:
    """(packed weights by state-dict key, every other state-dict entry) from a packed file.

    BatchNorm layers stored as their affine map get mean 0, variance ``unit_variance(eps)`` and
    ``num_batches_tracked`` 0 back (see the module docstring).
    """
    with safe_open(str(path), framework="pt") as file:
        raw = (file.metadata() or {}).get("lowbit")
        info = json.loads(raw) if raw else {}
        if info.get("format") != FORMAT or info.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} is not a lowbit packed checkpoint (version {FORMAT_VERSION})")
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    weights = {}
    for key, entry in info["weights"].items():
        grid = grid_from_header(entry, tensors.get(f"packed/{key}/{SCALE}"))
        shape = tuple(entry["shape"])
        count = math.prod(shape)
        indices = unpack_codes(tensors[f"packed/{key}/{CODES}"], grid.bits, count)
        weights[key] = PackedWeight(grid, shape, grid.codes_of(indices).reshape(shape))
    state = {
        name.removeprefix("state/"): value
        for name, value in tensors.items()
        if name.startswith("state/")
    }
    for name, eps in info.get("affine_batchnorm", {}).items():
        channels = state[f"{name}.weight"].numel()
        state[f"{name}.running_mean"] = torch.zeros(channels)
        state[f"{name}.running_var"] = torch.full((channels,), float(unit_variance(eps)))
        state[f"{name}.num_batches_tracked"] = torch.tensor(0)
    return weights, state


def load_packed(path: str | Path, model: nn.Module) -> nn.Module:
    """Load a packed file into ``model`` (built and quantized like the saved one); returns it.

    Raises ValueError when the model's quantized layers, bits or grids differ from the file's,
    and AssertionError if a restored weight does not quantize back to the stored values.
    """
    weights, state = read_packed(path)
    layers = quantized_weights(model)
    if set(weights) != set(layers):
        raise ValueError(
            f"{path}: the packed weights ({len(weights)}) are not the model's quantized weights "
            f"({len(layers)}): build and quantize the model with the run's config"
        )
    for key, packed in weights.items():
        if packed.bits != layers[key].wbits:
            raise ValueError(
                f"{path}: {key} is packed at {packed.bits} bits, "
                f"the model quantizes it to {layers[key].wbits}"
            )
        state[key] = layers[key].weight_quantizer.latent_weight(packed.codes, packed.grid)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        for key, packed in weights.items():
            quantizer = layers[key].weight_quantizer
            restored = layers[key].weight.detach().float().cpu()
            if not (
                torch.equal(quantizer.integer_codes(restored), packed.codes)
                and torch.equal(quantizer.grid(restored).scale.float(), packed.grid.scale)
            ):
                raise AssertionError(f"{key}: the restored weight does not quantize back exactly")
    return model


def header_bytes(path: str | Path) -> int:
    """Bytes of the safetensors header (8-byte length + JSON: names, shapes, our metadata)."""
    with open(path, "rb") as file:
        return 8 + int.from_bytes(file.read(8), "little")


def payload_bytes(path: str | Path) -> int:
    """Bytes of tensor data in a packed file: its size less the header."""
    return Path(path).stat().st_size - header_bytes(path)
