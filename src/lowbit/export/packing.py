"""Packed checkpoints: every quantized weight stored at its own bit width, in safetensors.

A k-bit weight tensor is stored as its integer codes on the quantizer's grid, k bits per value,
packed little-end first into bytes (a 2-bit tensor of N values takes ceil(2N / 8) bytes), plus
whatever its grid needs besides the codes:

- ``dorefa`` (DoReFa Eq. 9, k > 1): codes c in [0, 2^k - 1], w_q = 2 c / (2^k - 1) - 1. The grid
  is fixed in [-1, 1], so nothing else is stored.
- ``channel_abs_max`` (PaddleSlim's per-channel abs-max): codes c + m with c in [-m, m],
  m = 2^(k-1) - 1, and max|w_c| of each output channel in float32; w_q = c max|w_c| / m.

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
the layer's own quantizer maps back onto exactly the stored codes (for DoReFa, atanh(w_q / 2):
tanh then undoes atanh and the per-tensor max normalises the 1/2 away), so the restored model is
the same ordinary QAT model, whose outputs equal the saved model's bit for bit, and it can go on
training. Both ``save_packed`` and ``load_packed`` check that equality on every weight and raise
if a quantizer has no exact packed form (DoReFa's 1-bit Eq. 7, whose scale is a mean over the
tensor, has none yet).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lowbit.quant import functional as Q
from lowbit.quant.modules import ChannelAbsMaxWeight, DoReFaWeight, QuantizedLayer

FORMAT = "lowbit-packed"
FORMAT_VERSION = 1
CODES, MAX_ABS = "codes", "max_abs"


# -- bit packing ------------------------------------------------------------------------------

def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^bits) as a uint8 tensor of ceil(numel * bits / 8) bytes.

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
    """One quantized weight in packed form: its grid's name, bits, shape, codes and extras."""

    grid: str
    bits: int
    shape: tuple[int, ...]
    codes: torch.Tensor  # int64, the weight's shape
    max_abs: torch.Tensor | None = None  # per output channel, channel_abs_max only

    def dequantized(self) -> torch.Tensor:
        """The float32 values the fake-quant layer computes with, with its exact arithmetic."""
        if self.grid == "dorefa":
            # functional.dorefa_weight: 2 * (round(n u) / n) - 1, the same float32 operations.
            return 2 * self.codes.to(torch.float32).div_(Q.levels(self.bits)) - 1
        scale = self.channel_scale()
        return self.codes.to(torch.float32) * scale

    def channel_scale(self) -> torch.Tensor:
        m = Q.symmetric_levels(self.bits)
        scale = self.max_abs.clamp_min(torch.finfo(torch.float32).tiny) / m
        return scale.reshape(-1, *[1] * (len(self.shape) - 1))

    def latent_weight(self) -> torch.Tensor:
        """A float weight that the layer's own quantizer maps back onto these codes exactly."""
        values = self.dequantized()
        if self.grid == "dorefa":
            # tanh(atanh(w_q / 2)) / (2 max|.|) + 1/2 = c / n up to a few ulps, far inside the
            # rounding's half step; max|w_q| = 1 always (the largest |tanh| maps to 0 or n).
            return torch.atanh(values / 2)
        # Entries at +-m carry max|w_c| itself, so the quantizer recomputes the same scale.
        m = Q.symmetric_levels(self.bits)
        extreme = self.codes.abs() == m
        max_abs = self.max_abs.reshape(self.channel_scale().shape).expand(self.shape)
        return torch.where(extreme, self.codes.sign().to(torch.float32) * max_abs, values)


def encode_weight(layer: QuantizedLayer) -> PackedWeight:
    """The packed form of ``layer``'s quantized weight; raises if it has none that is exact."""
    quantizer, bits = layer.weight_quantizer, layer.wbits
    with torch.no_grad():
        weight = layer.weight.detach().to(torch.float32).cpu()
        fake_quant = quantizer(weight)
    shape = tuple(weight.shape)
    if isinstance(quantizer, DoReFaWeight) and bits > 1:
        n = Q.levels(bits)
        codes = torch.round((fake_quant + 1) * (n / 2)).to(torch.int64)
        packed = PackedWeight("dorefa", bits, shape, codes)
    elif isinstance(quantizer, ChannelAbsMaxWeight):
        scale = Q.channelwise_absmax_scale(weight, bits).reshape(-1, *[1] * (weight.dim() - 1))
        codes = torch.round(weight / scale).to(torch.int64)
        packed = PackedWeight("channel_abs_max", bits, shape, codes, Q.channelwise_max_abs(weight))
    else:
        raise NotImplementedError(
            f"no exact packed form for {type(quantizer).__name__} at {bits} bits"
        )
    if not torch.equal(packed.dequantized(), fake_quant):
        raise AssertionError(f"packed {packed.grid} codes do not reproduce the fake-quant weight")
    return packed


BATCHNORM_MODES = ("affine", "keep")


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """Name -> BatchNorm layer, for those with an affine map and running statistics."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            and m.track_running_stats and m.running_mean is not None}


def unit_variance(eps: float) -> torch.Tensor:
    """The float32 v with v + eps == 1 exactly, so that the kernel's 1 / sqrt(v + eps) is 1."""
    eps32 = torch.tensor(eps, dtype=torch.float32)
    v = 1 - eps32
    while (total := (v + eps32).item()) != 1.0:  # one ulp off at most, if ever
        v = torch.nextafter(v, torch.tensor(2.0 if total < 1 else 0.0))
    return v


@torch.no_grad()
def kernel_affine(layer: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with y = a x + b, exactly as PyTorch's CPU eval kernel computes them.

    b is the output at x = 0; a is the output at x = 1 of a copy whose mean and beta are 0
    (a depends only on gamma, the variance and eps, and then the kernel adds exactly 0).
    """
    ones = (1, layer.num_features) + (1,) * (2 if isinstance(layer, nn.BatchNorm2d) else 0)
    cpu = copy.deepcopy(layer).float().cpu().eval()
    shift = cpu(torch.zeros(ones)).flatten()
    cpu.bias.zero_()
    cpu.running_mean.zero_()
    scale = cpu(torch.ones(ones)).flatten()
    return scale, shift


@torch.no_grad()
def affine_batchnorm(layer: nn.modules.batchnorm._BatchNorm, scale: torch.Tensor,
                     shift: torch.Tensor) -> nn.modules.batchnorm._BatchNorm:
    """A copy of ``layer`` on the CPU that computes a x + b from mean 0 and unit variance."""
    restored = copy.deepcopy(layer).float().cpu().eval()
    restored.weight.copy_(scale)
    restored.bias.copy_(shift)
    restored.running_mean.zero_()
    restored.running_var.fill_(float(unit_variance(layer.eps)))
    return restored


@torch.no_grad()
def restores_exactly(layer: nn.modules.batchnorm._BatchNorm, scale: torch.Tensor,
                     shift: torch.Tensor) -> bool:
    """Whether the affine form gives the layer's eval outputs bit for bit on a probe batch."""
    spatial = (5, 7) if isinstance(layer, nn.BatchNorm2d) else ()
    probe = torch.randn((3, layer.num_features, *spatial),
                        generator=torch.Generator().manual_seed(0)) * 4
    original = copy.deepcopy(layer).float().cpu().eval()
    return torch.equal(original(probe), affine_batchnorm(layer, scale, shift)(probe))


def quantized_weights(model: nn.Module) -> dict[str, QuantizedLayer]:
    """State-dict key of each quantized weight -> its layer (layers kept in float excluded)."""
    return {f"{name}.weight": module for name, module in model.named_modules()
            if isinstance(module, QuantizedLayer) and module.wbits < Q.FULL_PRECISION}


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
    skipped = {f"{name}.{buffer}" for name in affine
               for buffer in ("running_mean", "running_var", "num_batches_tracked")}
    for key, layer in layers.items():
        packed = encode_weight(layer)
        offset = Q.symmetric_levels(packed.bits) if packed.grid == "channel_abs_max" else 0
        tensors[f"packed/{key}/{CODES}"] = pack_codes(packed.codes + offset, packed.bits)
        if packed.max_abs is not None:
            tensors[f"packed/{key}/{MAX_ABS}"] = packed.max_abs.contiguous()
        header[key] = {"grid": packed.grid, "bits": packed.bits, "shape": list(packed.shape)}
    for key, value in model.state_dict().items():
        if key in layers or key in skipped:
            continue
        value = replaced.get(key, value).detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float32)
        tensors[f"state/{key}"] = value.clone().contiguous()  # safetensors refuses shared storage
    metadata = {"lowbit": json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                                      "weights": header, "affine_batchnorm": affine},
                                     sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


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
        bits, shape = int(entry["bits"]), tuple(entry["shape"])
        count = 1
        for size in shape:
            count *= size
        codes = unpack_codes(tensors[f"packed/{key}/{CODES}"], bits, count).reshape(shape)
        if entry["grid"] == "channel_abs_max":
            codes = codes - Q.symmetric_levels(bits)
        weights[key] = PackedWeight(entry["grid"], bits, shape, codes,
                                    tensors.get(f"packed/{key}/{MAX_ABS}"))
    state = {name.removeprefix("state/"): value for name, value in tensors.items()
             if name.startswith("state/")}
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
            raise ValueError(f"{path}: {key} is packed at {packed.bits} bits, "
                             f"the model quantizes it to {layers[key].wbits}")
        state[key] = packed.latent_weight()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        for key, packed in weights.items():
            layer = layers[key]
            restored = layer.weight_quantizer(layer.weight.detach().float().cpu())
            if not torch.equal(restored, packed.dequantized()):
                raise AssertionError(f"{key}: the restored weight does not quantize back exactly")
    return model


def header_bytes(path: str | Path) -> int:
    """Bytes of the safetensors header (8-byte length + JSON: names, shapes, our metadata)."""
    with open(path, "rb") as file:
        return 8 + int.from_bytes(file.read(8), "little")


def payload_bytes(path: str | Path) -> int:
    """Bytes of tensor data in a packed file: its size less the header."""
    return Path(path).stat().st_size - header_bytes(path)
