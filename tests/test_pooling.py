"""GlobalAveragePool: the float32 mean PyTorch and ONNX Runtime compute bit for bit (issue #27)."""

from __future__ import annotations

import onnx
import torch
from torch import nn

from lowbit.export.onnx import export_int8_onnx
from lowbit.export.parity import layer_parity
from lowbit.models.pooling import GlobalAveragePool
from lowbit.quant import quantize_model


def test_mean_is_the_float_mean_and_independent_of_the_order():
    torch.manual_seed(0)
    x = torch.randn(8, 32, 5, 7) * torch.logspace(-3, 3, 7)
    pooled = GlobalAveragePool()(x)
    assert pooled.dtype == torch.float32 and pooled.shape == (8, 32, 1, 1)
    torch.testing.assert_close(pooled, nn.AdaptiveAvgPool2d(1)(x))
    shuffled = x.flatten(2)[..., torch.randperm(35)].reshape(x.shape)
    assert torch.equal(GlobalAveragePool()(shuffled), pooled)


def test_the_exported_pool_computes_the_same_float32_mean(tmp_path):
    # a quantizer reads the mean: the codes ONNX Runtime gives equal the model's own
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 64, 3, padding=1)
            self.pool = GlobalAveragePool()
            self.head = nn.Conv2d(64, 10, 1)

        def forward(self, x):
            return self.head(self.pool(torch.relu(self.conv(x)))).flatten(1)

    torch.manual_seed(0)
    model = quantize_model(
        Pooled(), quantizer="lsq", wbits=8, abits=8, input_bits=8, input_shape=(3, 9, 9)
    )
    images = torch.rand(256, 3, 9, 9)
    model.train()(images)
    model.eval()
    path = export_int8_onnx(model, (3, 9, 9), tmp_path / "pooled.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"ReduceSum", "Div"} <= ops and "GlobalAveragePool" not in ops
    rows = {row["layer"]: row for row in layer_parity(model, path, images)}
    assert rows["head"]["codes"] == 256 * 64 and rows["head"]["differ"] == 0.0
