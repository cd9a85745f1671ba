"""bf16 mixed precision: the quantizers keep their own arithmetic in float32 under autocast.

On a GPU, ``trainer=gpu trainer.precision=bf16-mixed`` runs the convolutions in bfloat16; the
same autocast exists on CPU, so these tests hold the quantizers to float32 there.
"""

from __future__ import annotations

import pytest
import torch

from lowbit.quant import functional as Q
from lowbit.quant import quantize_model
from lowbit.quant.modules import (
    ChannelAbsMaxWeight,
    DoReFaActivation,
    DoReFaSignedActivation,
    DoReFaWeight,
    PACTActivation,
    PACTSymmetricActivation,
    QuantConv2d,
)


def bf16_autocast():
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


QUANTIZERS = [
    lambda: DoReFaWeight(8),
    lambda: DoReFaWeight(1),
    lambda: DoReFaActivation(8),
    lambda: DoReFaSignedActivation(8),
    lambda: ChannelAbsMaxWeight(8),
    lambda: PACTActivation(8, alpha_init=2.0),
    lambda: PACTSymmetricActivation(8, alpha_init=2.0),
]


@pytest.mark.parametrize("make", QUANTIZERS, ids=lambda make: type(make()).__name__)
def test_quantizers_compute_in_float32_on_a_bf16_input(make):
    quantizer = make().eval()
    x = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with bf16_autocast():
        y = quantizer(x)
    assert y.dtype == torch.float32
    assert torch.equal(y, quantizer(x.float()))  # exactly the float32 result
    assert torch.isfinite(y).all()


def test_gradient_quantization_of_a_bf16_gradient_runs_in_float32():
    g = torch.randn(4, 300, generator=torch.Generator().manual_seed(1)) * 1e-3
    quantized = Q.quantize_gradient_tensor(
        g.to(torch.bfloat16), 8, torch.Generator().manual_seed(2)
    )
    expected = Q.quantize_gradient_tensor(
        g.to(torch.bfloat16).float(), 8, torch.Generator().manual_seed(2)
    )
    assert quantized.dtype == torch.bfloat16
    assert torch.equal(quantized, expected.to(torch.bfloat16))


@pytest.mark.parametrize("quantizer", ["dorefa", "pact"])
def test_a_quantized_network_trains_a_step_under_bf16_autocast(quantizer):
    torch.manual_seed(0)
    model = quantize_model(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 4 * 4, 10),
        ),
        quantizer=quantizer,
        wbits=4,
        abits=4,
        gbits=8,
        input_shape=(3, 8, 8),
    )
    seen: list[torch.dtype] = []
    inner = model[3]
    assert isinstance(inner, QuantConv2d)
    inner.input_quantizer.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    x = torch.randn(2, 3, 8, 8)
    with bf16_autocast():
        loss = model(x).float().logsumexp(dim=1).mean()
    loss.backward()
    assert seen == [torch.float32]  # the activation quantizer's output, between bf16 convs
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
