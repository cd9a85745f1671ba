"""Model surgery: swap the Conv2d/Linear layers of any nn.Module for quantized ones.

Policy (documented in docs/extending.md):
- Layers are ordered as ``model.named_modules()`` visits them (registration order); the first
  and the last Conv2d/Linear are the "first" and "last" layers. A model with several outputs
  names its output layers in a ``last_layers`` attribute (YOLOv3-tiny's two output convs); all
  of them are then "last" layers.
- The first layer's input, the image, is quantized at ``input_bits`` (default 8; 32 keeps it
  float) by ``ImageQuantizer``, whatever the method: an asymmetric grid over the range the
  training batches reach, the grid an integer runtime feeds the first conv on. Training then
  sees the image the deployed model sees (before, lowbit kept it float and the export quantized
  it on its own, a difference that one-step flips at 2 bits made visible).
- The first and last layers are never quantized more coarsely than ``first_layer_bits`` /
  ``last_layer_bits``, in W, A and G: their bits are max(bits, first/last_layer_bits). PACT's
  Table 2 shows that 8-bit first/last layers cost almost nothing, 2-bit ones a lot; 32 keeps
  them in float as the DoReFa paper does.
- ``overrides`` maps module-name patterns (fnmatch, e.g. ``"features.3*"``) to bits; they are
  applied in order after the first/last rule, so a later pattern wins. A pattern that matches
  no layer is an error.
- A layer whose W, A and G all end up at 32 bits stays the original float layer.
- Signed inputs: given ``input_shape``, a probe batch of random N(0, 1) images (fixed seed) runs
  through the float model in eval mode, and every layer whose input took a negative value is
  marked ``signed_input``; the method then quantizes that input on a signed grid (PACT switches
  to its symmetric form, DoReFa to its signed variant). After ReLU (or max-pooling of a ReLU) an
  input is never negative; after hard-swish, leaky ReLU, a residual sum or no activation it is.
  Without ``input_shape`` no probe runs and every input is treated as unsigned.
  ``signed_inputs="never"`` turns the probe off on purpose: every input is quantized on the
  method's unsigned grid, as the PACT and DoReFa papers do, which clips the negative half of
  hard-swish outputs to zero (the failure PaddleOCR's symmetric PACT avoids); it exists to
  measure that loss. ``pact_symmetric`` is signed everywhere and rejects it.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from lowbit.bit_widths import INPUT_BITS, SUPPORTED_BITS, check_bits  # noqa: F401  (re-exported)
from lowbit.errors import ConfigError
from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.integer import use_integer_arithmetic
from lowbit.quant.modules import (
    FullPrecision,
    ImageQuantizer,
    QuantizedLayer,
    Quantizer,
    quantized_copy,
)
from lowbit.quant.schemes import SCHEMES, Scheme

BIT_KEYS = ("wbits", "abits", "gbits")
QUANTIZABLE = (nn.Conv2d, nn.Linear)
SIGNED_INPUT_MODES = ("auto", "never")


@dataclass(frozen=True)
class LayerBits:
    wbits: int
    abits: int
    gbits: int
    quantize_input: bool = True
    signed_input: bool = False

    @property
    def is_full_precision(self) -> bool:
        return all(getattr(self, key) >= FULL_PRECISION for key in BIT_KEYS)


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def edge_layers(model: nn.Module) -> tuple[str, ...]:
    """The first and the last layers under this module's policy: the first Conv2d/Linear and
    the model's ``last_layers`` (default: the last Conv2d/Linear)."""
    names = [name for name, _ in quantizable_layers(model)]
    return tuple(dict.fromkeys([*names[:1], *(getattr(model, "last_layers", None) or names[-1:])]))


def plan_bits(
    layer_names: list[str],
    wbits: int,
    abits: int,
    gbits: int,
    first_layer_bits: int,
    last_layer_bits: int,
    overrides: Mapping[str, Mapping[str, int]] | None = None,
    last_layers: tuple[str, ...] | None = None,
    input_bits: int = FULL_PRECISION,
) -> dict[str, LayerBits]:
    """The bits of every layer under the policy in this module's docstring.

    ``last_layers``: the output layers' names (default: the last of ``layer_names``);
    ``input_bits``: the image's bits (the first layer's ``abits``).
    """
    base = LayerBits(
        check_bits("quant.wbits", wbits),
        check_bits("quant.abits", abits),
        check_bits("quant.gbits", gbits),
    )
    check_bits("quant.first_layer_bits", first_layer_bits)
    check_bits("quant.last_layer_bits", last_layer_bits)
    if check_bits("quant.input_bits", input_bits) not in INPUT_BITS:
        raise ConfigError(
            f"quant.input_bits={input_bits}: the image is quantized to 2-8 bits "
            f"(an integer runtime's uint8 input), or 32 to keep it float"
        )
    if not layer_names:
        raise ConfigError("the model has no Conv2d or Linear layer to quantize")

    def at_least(bits: LayerBits, floor: int) -> LayerBits:
        return replace(bits, **{k: max(getattr(bits, k), floor) for k in BIT_KEYS})

    plan = {name: base for name in layer_names}
    for name in last_layers or layer_names[-1:]:
        if name not in plan:
            raise ValueError(f"last_layers names {name!r}, which is not a Conv2d/Linear layer")
        plan[name] = at_least(base, last_layer_bits)
    first = at_least(base, first_layer_bits)
    image_bits = FULL_PRECISION if first.is_full_precision else input_bits
    plan[layer_names[0]] = replace(first, abits=image_bits, quantize_input=False)

    for pattern, bits in (overrides or {}).items():
        matched = fnmatch.filter(layer_names, pattern)
        if not matched:
            shown = ", ".join(layer_names[:6]) + (", ..." if len(layer_names) > 6 else "")
            raise ConfigError(
                f"quant.overrides pattern {pattern!r} matches no Conv2d/Linear layer "
                f"(layers: {shown})"
            )
        if not isinstance(bits, Mapping) or not bits:
            raise ConfigError(
                f"quant.overrides[{pattern!r}] must map some of {', '.join(BIT_KEYS)} to bits"
            )
        unknown = set(bits) - set(BIT_KEYS)
        if unknown:
            raise ConfigError(
                f"quant.overrides[{pattern!r}] has unknown key(s) {sorted(unknown)}: "
                f"allowed are {', '.join(BIT_KEYS)}"
            )
        checked = {k: check_bits(f"quant.overrides[{pattern!r}].{k}", v) for k, v in bits.items()}
        for name in matched:
            plan[name] = replace(plan[name], **checked)
            if not plan[name].quantize_input:  # the first layer's input stays the image's grid
                plan[name] = replace(plan[name], abits=image_bits)
    return plan


PROBE_BATCH = 4


@torch.no_grad()
def probe_signed_inputs(model: nn.Module, input_shape: tuple[int, ...]) -> set[str]:
    """Names of the Conv2d/Linear layers whose input is negative somewhere on a probe batch."""
    signed: set[str] = set()

    def record(name):
        def hook(_module, inputs):
            if inputs and torch.is_tensor(inputs[0]) and bool((inputs[0] < 0).any()):
                signed.add(name)

        return hook

    hooks = [
        layer.register_forward_pre_hook(record(name)) for name, layer in quantizable_layers(model)
    ]
    was_training = model.training
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG untouched
    probe = torch.randn(PROBE_BATCH, *input_shape, generator=generator).to(device)
    try:
        model.eval()
        model(probe)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return signed


TARGET_KEY = "_target_"

# What ``plan_quantization`` returns: the method's scheme and each layer's bits by name.
QuantizationPlan = tuple[Scheme, dict[str, LayerBits]]


def scheme_class(quantizer: str, target: str | None = None) -> type[Scheme]:
    """The Scheme class of a quantizer config: its ``_target_`` (a dotted class path, one hop
    from config to code, a user's own module included) or, without one, the name registered
    with ``register_scheme``."""
    if target is None:
        if quantizer not in SCHEMES:
            raise ConfigError(
                f"unknown quantizer {quantizer!r}: available are {', '.join(sorted(SCHEMES))}"
            )
        return SCHEMES[quantizer]
    from hydra.utils import get_class

    try:
        found = get_class(target)
    except Exception as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConfigError(
            f"quantizer={quantizer}: cannot import its _target_ {target} "
            f"({first}); is its module on PYTHONPATH?"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Scheme)):
        raise ConfigError(
            f"quantizer={quantizer}: _target_ {target} is not a lowbit.quant.Scheme subclass"
        )
    return found


def make_scheme(quantizer: str, options: Mapping[str, Any]) -> Scheme:
    options = dict(options)
    found = scheme_class(quantizer, options.pop(TARGET_KEY, None))
    accepted = [name for name in inspect.signature(found).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"quantizer={quantizer} has no option {', '.join(unknown)} "
            f"(its options: {', '.join(accepted) or 'none'}; bits: {', '.join(BIT_KEYS)})"
        )
    return found(**options)


def plan_quantization(
    model: nn.Module,
    quantizer: str = "dorefa",
    wbits: int = FULL_PRECISION,
    abits: int = FULL_PRECISION,
    gbits: int = FULL_PRECISION,
    first_layer_bits: int = 8,
    last_layer_bits: int = 8,
    overrides: Mapping[str, Mapping[str, int]] | None = None,
    signed_inputs: str = "auto",
    input_shape: tuple[int, ...] | None = None,
    input_bits: int = FULL_PRECISION,
    requantize_outputs: bool = True,
    **options: Any,
) -> QuantizationPlan:
    """Every check of a quantization request, without touching the model: (scheme, plan).

    The arguments are those of ``quantize_model`` (the ``quant`` config node);
    ``requantize_outputs`` is checked here and applied by ``apply_plan``.
    """
    if not isinstance(requantize_outputs, bool):
        raise ConfigError(
            f"quant.requantize_outputs must be true or false, got {requantize_outputs!r}"
        )
    scheme = make_scheme(quantizer, options)
    if signed_inputs not in SIGNED_INPUT_MODES:
        raise ConfigError(
            f"quant.signed_inputs={signed_inputs!r} is unknown: use "
            f"{' or '.join(SIGNED_INPUT_MODES)}"
        )
    if signed_inputs == "never" and getattr(scheme, "symmetric_everywhere", False):
        raise ConfigError(
            f"quant.signed_inputs=never contradicts quantizer={quantizer}, which is signed "
            f"everywhere: use quantizer=pact for unsigned PACT"
        )
    if any(isinstance(m, QuantizedLayer) for m in model.modules()):
        raise ConfigError("the model is already quantized: call quantize_model on a float model")
    names = [name for name, _ in quantizable_layers(model)]
    if names and names[0] == "":
        raise ConfigError("quantize_model needs a model that contains layers, not a bare layer")
    plan = plan_bits(
        names,
        wbits,
        abits,
        gbits,
        first_layer_bits,
        last_layer_bits,
        overrides,
        last_layers=getattr(model, "last_layers", None),
        input_bits=input_bits,
    )
    if input_shape is not None and signed_inputs == "auto":
        signed = probe_signed_inputs(model, tuple(input_shape))
        plan = {
            name: replace(bits, signed_input=bits.quantize_input and name in signed)
            for name, bits in plan.items()
        }
    # The user's own numbers first, so that the message names what they typed. The image's
    # bits are lowbit's (ImageQuantizer), not the method's: not the scheme's to check.
    scheme.check(
        {
            "quant": LayerBits(wbits, abits, gbits),
            **{
                name: bits if bits.quantize_input else replace(bits, abits=FULL_PRECISION)
                for name, bits in plan.items()
            },
        }
    )
    return scheme, plan


def image_quantizer(bits: int) -> Quantizer:
    return FullPrecision() if bits >= FULL_PRECISION else ImageQuantizer(bits)


def quantize_model(model: nn.Module, **quant: Any) -> nn.Module:
    """Quantize ``model`` in place and return it.

    ``quant`` is the ``quant`` config node: ``quantizer`` (the method's name, e.g. "dorefa"),
    ``wbits``/``abits``/``gbits`` (1-16, or 32 for full precision), ``first_layer_bits``,
    ``last_layer_bits``, ``input_bits`` (the image's, default 32 here and 8 in the configs),
    ``overrides``, and the method's own options (e.g. ``act_scale``);
    ``input_shape`` (C, H, W) turns on the signed-input probe (``signed_inputs="never"`` keeps
    it off). ``integer_arithmetic`` (default True): evaluation computes what the integer ONNX
    graph computes, bit for bit (``lowbit.quant.integer``); ``requantize_outputs`` (default
    True; ``quant.requantize_outputs``): whether layer outputs no input quantizer reads are
    requantized on 8 bits in training and in the export (``use_integer_arithmetic``). Every
    check runs before the model is touched; the policy is in this module's docstring.
    """
    integer = quant.pop("integer_arithmetic", True)
    requantize = quant.get("requantize_outputs", True)
    return apply_plan(
        model,
        *plan_quantization(model, **quant),
        integer_arithmetic=integer,
        requantize_outputs=requantize,
    )


def apply_plan(
    model: nn.Module,
    scheme: Scheme,
    plan: Mapping[str, LayerBits],
    integer_arithmetic: bool = True,
    requantize_outputs: bool = True,
) -> nn.Module:
    """Swap ``model``'s layers for the quantized ones ``plan_quantization`` planned, in place.

    The plan is made once and checked before any work (``lowbit.train.check_config``); a run
    then applies it here without planning (and probing the model's inputs) again."""
    for name, layer in quantizable_layers(model):
        bits = plan[name]
        if bits.is_full_precision:
            continue
        new = quantized_copy(
            layer,
            weight=scheme.weight(bits.wbits),
            input=(
                scheme.activation(bits.abits, signed=bits.signed_input)
                if bits.quantize_input
                else image_quantizer(bits.abits)
            ),
            gradient=scheme.gradient(bits.gbits),
        )
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, new)
    if integer_arithmetic:
        use_integer_arithmetic(model, requantize=requantize_outputs)
    return model
