"""lowbit.quant.fold_bn: folding BatchNorm into the convs changes nothing beyond float rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.models import NIN
from lowbit.models.mobilenetv3 import mobilenetv3_small
from lowbit.quant import quantize_model
from lowbit.quant.fold import FoldedQuantConv2d, fold_bn


def with_trained_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm far from identity (fresh BN would make folding a no-op the test cannot see)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.2)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize(
    "build", [NIN, lambda: mobilenetv3_small(num_classes=10)], ids=["nin", "mobilenetv3_small"]
)
def test_folded_float_model_matches_to_1e_5(build):
    torch.manual_seed(0)
    model = with_trained_statistics(build())
    folded = fold_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is kept
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_quantized_conv_folds_after_its_weight_quantizer():
    torch.manual_seed(0)
    model = with_trained_statistics(
        quantize_model(NIN(), quantizer="dorefa", wbits=4, abits=4, input_shape=(3, 32, 32))
    )
    folded = fold_bn(model)
    convs = [m for m in folded.modules() if isinstance(m, FoldedQuantConv2d)]
    assert len(convs) == 9 and convs[1].wbits == 4 and convs[1].abits == 4
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the first conv-BN pair alone (no activation quantizer yet to amplify rounding)
        expected = model.features[0][1](model.features[0][0](x))
        actual = folded.features[0][0](x)
        assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
        # weight = s x W_q: dividing s out gives back the 4-bit grid of the unfolded layer
        grid = convs[1].weight / convs[1].channel_scale.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(grid, model.features[1][0].quantized_weight())
        assert torch.equal(folded(x).argmax(1), model(x).argmax(1))
