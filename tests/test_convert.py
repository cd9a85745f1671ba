"""quantize_model: layer surgery and the bits policy, on NIN and on a user's own network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.measure import count_macs, model_size
from lowbit.models import NIN
from lowbit.quant import QuantConv2d, QuantizedLayer, QuantLinear, quantize_model
from lowbit.quant.modules import ImageQuantizer


class UsersNet(nn.Module):
    """A network lowbit has never seen: convs nested in blocks, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3)]
        )
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def quantized_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLayer)}


def test_nin_has_the_reference_parameter_count_and_macs():
    model = NIN(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 969_822
    macs = sum(count_macs(model, (3, 32, 32)).values())
    assert abs(macs - 222.5e6) / 222.5e6 < 0.01


def test_users_network_is_converted_with_first_last_policy():
    model = quantize_model(UsersNet(), quantizer="dorefa", wbits=2, abits=3, gbits=6)
    layers = quantized_layers(model)
    assert isinstance(model.head, QuantLinear) and isinstance(model.stem, QuantConv2d)
    assert list(layers) == ["stem", "blocks.0.0", "blocks.1.0", "blocks.2.0", "head"]
    # first layer: weights and gradients at >= 8 bits, input (the image) never quantized
    assert (layers["stem"].wbits, layers["stem"].abits, layers["stem"].gbits) == (8, 32, 8)
    assert (layers["blocks.1.0"].wbits, layers["blocks.1.0"].abits, layers["blocks.1.0"].gbits) == (
        2,
        3,
        6,
    )
    assert (layers["head"].wbits, layers["head"].abits, layers["head"].gbits) == (8, 8, 8)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_first_last_bits_never_lower_the_precision():
    model = quantize_model(
        UsersNet(), quantizer="dorefa", wbits=16, abits=4, first_layer_bits=8, last_layer_bits=8
    )
    assert quantized_layers(model)["head"].wbits == 16


def test_first_last_bits_32_keeps_them_in_float():
    model = quantize_model(
        UsersNet(), quantizer="dorefa", wbits=4, abits=4, first_layer_bits=32, last_layer_bits=32
    )
    # gbits=32 as well: nothing to quantize in those layers, so they stay plain float layers.
    assert type(model.stem) is nn.Conv2d and type(model.head) is nn.Linear
    assert isinstance(model.blocks[0][0], QuantConv2d)


def test_overrides_by_pattern_give_mixed_precision():
    model = quantize_model(
        UsersNet(),
        quantizer="dorefa",
        wbits=4,
        abits=4,
        overrides={"blocks.*": {"wbits": 2}, "blocks.2.*": {"abits": 8}},
    )
    layers = quantized_layers(model)
    assert [layers[f"blocks.{i}.0"].wbits for i in range(3)] == [2, 2, 2]
    assert [layers[f"blocks.{i}.0"].abits for i in range(3)] == [4, 4, 8]


def test_override_on_first_layer_keeps_its_input_in_float():
    model = quantize_model(
        UsersNet(),
        quantizer="dorefa",
        wbits=4,
        abits=4,
        overrides={"stem": {"wbits": 2, "abits": 2}},
    )
    assert model.stem.wbits == 2 and model.stem.abits == 32


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"wbits": 0}, "quant.wbits=0 is not supported"),
        ({"abits": 33}, "quant.abits=33 is not supported"),
        ({"gbits": "8"}, "quant.gbits must be an integer"),
        ({"wbits": 4.5}, "quant.wbits must be an integer"),
        ({"overrides": {"nothing.*": {"wbits": 2}}}, "matches no Conv2d/Linear layer"),
        ({"overrides": {"blocks.*": {"bits": 2}}}, "unknown key"),
        ({"quantizer": "nope"}, "unknown quantizer 'nope'"),
        ({"quantizer": "dorefa", "act_scael": 0.1}, "has no option act_scael"),
        ({"quantizer": "fp32", "wbits": 4}, "quantizer=fp32 cannot quantize to quant.wbits=4"),
    ],
)
def test_bad_settings_are_rejected_before_the_model_changes(kwargs, message):
    model = UsersNet()
    settings = {"quantizer": "dorefa", "wbits": 4, "abits": 4, **kwargs}
    with pytest.raises(ConfigError, match=message):
        quantize_model(model, **settings)
    assert not quantized_layers(model)


def test_converted_layers_share_the_float_parameters():
    model = UsersNet()
    weight = model.blocks[0][0].weight
    quantize_model(model, quantizer="dorefa", wbits=4, abits=4)
    assert model.blocks[0][0].weight is weight


def test_fp32_quantizer_leaves_the_model_untouched():
    model = NIN()
    before = repr(model)
    quantize_model(model, quantizer="fp32")
    assert repr(model) == before


def test_print_shows_every_layers_bits():
    text = repr(quantize_model(NIN(), quantizer="dorefa", wbits=4, abits=2))
    assert "wbits=4, abits=2, gbits=fp32" in text
    assert "wbits=8, abits=fp32, gbits=fp32" in text  # the first layer


def test_quantizing_twice_is_refused():
    model = quantize_model(UsersNet(), quantizer="dorefa", wbits=4, abits=4)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(model, quantizer="dorefa", wbits=4, abits=4)


def test_quantized_nin_trains_one_step_with_gradient_bits():
    torch.manual_seed(0)
    model = quantize_model(NIN(), quantizer="dorefa", wbits=2, abits=2, gbits=4)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bits_aware_size():
    model = UsersNet()
    fp32 = model_size(model)
    params = sum(p.numel() for p in model.parameters())
    assert fp32.params == params and fp32.size_bytes == fp32.size_fp32_bytes == params * 4
    quantize_model(model, quantizer="dorefa", wbits=2, abits=2)
    size = model_size(model)
    # stem and head at 8 bits, the three blocks at 2 bits, each + a 4-byte scale; rest at fp32
    w8 = model.stem.weight.numel() + model.head.weight.numel()
    w2 = sum(b[0].weight.numel() for b in model.blocks)
    other = params - w8 - w2
    assert size.size_bytes == w8 + 2 * 4 + (w2 // 4) + 3 * 4 + other * 4
    assert size.compression == pytest.approx(params * 4 / size.size_bytes)


def test_the_image_is_quantized_at_input_bits_on_the_training_batches_range():
    model = quantize_model(UsersNet(), quantizer="dorefa", wbits=4, abits=4, input_bits=8)
    image = model.stem.input_quantizer
    assert isinstance(image, ImageQuantizer) and model.stem.abits == 8
    assert image.grid() is None  # no range before a training batch: the image passes unchanged
    x = torch.tensor([-1.0, 0.0, 0.3, 3.0]).reshape(1, 1, 2, 2).expand(1, 3, 2, 2)
    assert torch.equal(image.eval()(x), x)
    image.train()(x)
    image(x * 0.5)  # a later batch inside the range leaves it
    grid = image.grid()
    scale = 4.0 / 255
    assert grid.scale.item() == pytest.approx(scale) and grid.zero_point == round(1.0 / scale)
    image.eval()
    y = image(torch.tensor([5.0, -2.0, 0.3]))
    # clipped to the range, on the grid whose zero point is an integer
    low, high = -grid.zero_point * scale, (255 - grid.zero_point) * scale
    assert y[0].item() == pytest.approx(high) and y[1].item() == pytest.approx(low)
    assert y[2].item() == pytest.approx(round(0.3 / scale) * scale)


@pytest.mark.parametrize(
    "input_bits, message",
    [(1, "quant.input_bits=1"), (12, "quant.input_bits=12"), (3.5, "quant.input_bits must be")],
)
def test_input_bits_outside_2_to_8_or_32_are_refused(input_bits, message):
    with pytest.raises(ConfigError, match=message):
        quantize_model(UsersNet(), quantizer="dorefa", wbits=4, abits=4, input_bits=input_bits)


def test_a_float_first_layer_keeps_a_float_image():
    model = quantize_model(
        UsersNet(), quantizer="dorefa", wbits=4, abits=4, input_bits=8, first_layer_bits=32
    )
    assert type(model.stem) is nn.Conv2d  # W, A, G all 32: the plain layer, the image float
