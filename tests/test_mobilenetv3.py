"""MobileNetV3 (Howard et al. 2019): the paper's sizes, both stems, and every layer quantized."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from lowbit.errors import ConfigError
from lowbit.models import MobileNetV3
from lowbit.models.mobilenetv3 import FINAL_MAP_SIZE_32, mobilenetv3_large, mobilenetv3_small
from lowbit.quant import QuantizedLayer, quantize_model
from lowbit.quant.modules import PACTActivation, PACTSymmetricActivation

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
PAPER_PARAMETERS = {"small": 2_542_856, "large": 5_483_032}
TORCHVISION = {
    "small": torchvision.models.mobilenet_v3_small,
    "large": torchvision.models.mobilenet_v3_large,
}


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def float_layers(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QuantizedLayer)
    ]


@pytest.mark.parametrize("arch", ["small", "large"])
def test_parameter_count_matches_the_paper_and_torchvision(arch):
    model = MobileNetV3(arch, num_classes=1000, width_mult=1.0)
    assert parameter_count(model) == PAPER_PARAMETERS[arch]
    assert parameter_count(model) == parameter_count(TORCHVISION[arch](weights=None))


@pytest.mark.parametrize("arch", ["small", "large"])
@pytest.mark.parametrize("width_mult", [0.35, 0.75])
def test_other_widths_match_torchvision(arch, width_mult):
    ours = MobileNetV3(arch, width_mult=width_mult)
    assert parameter_count(ours) == parameter_count(
        TORCHVISION[arch](weights=None, width_mult=width_mult)
    )


@torch.no_grad()
@pytest.mark.parametrize("arch", ["small", "large"])
def test_same_function_as_torchvision_with_the_imagenet_stem(arch):
    """Same layers in the same order: torchvision's tensors, copied over, give the same logits."""
    torch.manual_seed(0)
    reference = TORCHVISION[arch](weights=None).eval()
    ours = MobileNetV3(arch, num_classes=1000, stem="imagenet").eval()
    theirs = list(reference.state_dict().values())
    mine = ours.state_dict()
    assert [t.shape for t in theirs] == [t.shape for t in mine.values()]
    ours.load_state_dict(dict(zip(mine, theirs)))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["small", "large"])
@pytest.mark.parametrize(
    "stem, shape, final_map",
    [
        ("cifar", (2, 3, 32, 32), FINAL_MAP_SIZE_32),
        ("imagenet", (1, 3, 224, 224), 7),
    ],
)
def test_forward_shape_and_final_feature_map(arch, stem, shape, final_map):
    assert FINAL_MAP_SIZE_32 == 4  # the docstring's promise: total stride 8 on CIFAR
    model = MobileNetV3(arch, num_classes=10, stem=stem).eval()
    assert model.num_classes == 10
    x = torch.randn(shape)
    features = model.features(x)
    assert features.shape[1:] == ({"small": 576, "large": 960}[arch], final_map, final_map)
    assert model(x).shape == (shape[0], 10)


@torch.no_grad()
@pytest.mark.parametrize("stem, size", [("cifar", 32), ("imagenet", 224)])
def test_width_035_builds_and_runs(stem, size):
    """PP-OCR's text-direction classifier is MobileNetV3-Small x0.35."""
    model = mobilenetv3_small(num_classes=2, width_mult=0.35, stem=stem).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 2)


@pytest.mark.parametrize("arch, downsampling_block", [("small", 0), ("large", 1)])
def test_cifar_stem_changes_exactly_two_strides(arch, downsampling_block):
    def strides(model):
        return {name: m.stride for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    cifar = strides(MobileNetV3(arch, stem="cifar"))
    imagenet = strides(MobileNetV3(arch, stem="imagenet"))
    changed = sorted(name for name in cifar if cifar[name] != imagenet[name])
    assert changed == sorted(["stem.conv", f"blocks.{downsampling_block}.depthwise.conv"])
    assert all(cifar[name] == (1, 1) and imagenet[name] == (2, 2) for name in changed)


def test_no_layer_input_is_overwritten_in_place():
    """Forward pre-hooks (the signed-input probe, MAC counting) see the inputs unchanged."""
    model = MobileNetV3("small", num_classes=10).train()
    seen = []
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer.register_forward_pre_hook(
                lambda _m, inputs: seen.append((inputs[0], inputs[0].detach().clone()))
            )
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert seen and all(torch.equal(tensor, copy) for tensor, copy in seen)


def test_every_conv_and_linear_is_quantized():
    model = MobileNetV3("small", num_classes=10)
    layer_count = len(float_layers(model))
    model = quantize_model(
        model, quantizer="pact_symmetric", wbits=4, abits=4, input_shape=(3, 32, 32)
    )
    assert float_layers(model) == []
    quantized = [name for name, m in model.named_modules() if isinstance(m, QuantizedLayer)]
    assert len(quantized) == layer_count
    assert "blocks.0.squeeze_excite.squeeze" in quantized
    assert "blocks.0.squeeze_excite.excite" in quantized
    assert "classifier.logits" in quantized

    model.train()
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_signed_inputs_get_the_symmetric_pact():
    model = quantize_model(
        MobileNetV3("small", num_classes=10),
        quantizer="pact",
        wbits=4,
        abits=4,
        input_shape=(3, 32, 32),
    )

    def input_quantizer(name):
        return type(model.get_submodule(name).input_quantizer)

    after_hardswish = [
        "blocks.0.depthwise.conv",  # the stem's hard-swish
        "blocks.3.depthwise.conv",  # an HS bneck's expansion
        "blocks.3.project.conv",  # an HS bneck's depthwise (times the SE gate)
        "blocks.3.squeeze_excite.squeeze",  # pooled hard-swish can be negative
        "classifier.hidden",
        "classifier.logits",
    ]
    no_activation = ["blocks.1.expand.conv", "blocks.4.expand.conv", "last_conv.conv"]
    after_relu = [
        "blocks.0.squeeze_excite.squeeze",  # pooled ReLU (the RE bneck 0)
        "blocks.0.project.conv",  # ReLU times the hard-sigmoid gate
        "blocks.1.depthwise.conv",
        "blocks.2.project.conv",
        "blocks.3.squeeze_excite.excite",  # every SE's second layer reads its ReLU
        "blocks.10.squeeze_excite.excite",
    ]
    for name in after_hardswish + no_activation:
        assert input_quantizer(name) is PACTSymmetricActivation, name
    for name in after_relu:
        assert input_quantizer(name) is PACTActivation, name


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"arch": "medium"}, "small or large"),
        ({"stem": "mnist"}, "imagenet or cifar"),
        ({"width_mult": 0}, "> 0"),
        ({"width_mult": -0.5}, "> 0"),
        ({"num_classes": 0}, ">= 1"),
        ({"in_channels": 0}, ">= 1"),
        ({"dropout": 1.0}, "[0, 1)"),
        ({"bn_momentum": 0}, "(0, 1]"),
        ({"bn_momentum": 1.5}, "(0, 1]"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, words):
    with pytest.raises(ConfigError) as error:
        MobileNetV3(**kwargs)
    message = str(error.value)
    assert words in message and "\n" not in message


@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_bn_momentum_reaches_every_batchnorm(momentum):
    model = MobileNetV3("small", num_classes=10, bn_momentum=momentum)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) > 30 and {m.momentum for m in norms} == {momentum}


@pytest.mark.parametrize("arch", ["small", "large"])
def test_config_mirrors_the_constructor(arch):
    cfg = OmegaConf.load(CONF_MODEL / f"mobilenetv3_{arch}.yaml")
    assert cfg._target_ == "lowbit.models.mobilenetv3.MobileNetV3"
    arguments = set(inspect.signature(MobileNetV3).parameters) - {"num_classes"}
    assert set(cfg) - {"_target_"} == arguments
    assert cfg.arch == arch
    model = instantiate(cfg, num_classes=1000)
    assert isinstance(model, MobileNetV3) and model.num_classes == 1000
    assert parameter_count(model) == PAPER_PARAMETERS[arch]
    helper = {"small": mobilenetv3_small, "large": mobilenetv3_large}[arch]
    assert parameter_count(helper()) == PAPER_PARAMETERS[arch]
