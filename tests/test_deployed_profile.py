"""scripts/deployed_profile.py on a tiny W8A8 model: one row per conv layer, timed in int8 and in
both float precisions, and ONNX Runtime's op table. Skips without OpenVINO."""

from __future__ import annotations

import pytest
import torch
from conftest import load_script
from torch import nn

from lowbit.quant import quantize_model

pytest.importorskip("openvino")

SHAPE = (3, 16, 16)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 1),
    )
    return quantize_model(net, input_shape=SHAPE, **load_script("bench").DEPLOYED_QUANT)


def test_each_conv_layer_has_a_row_with_time_in_int8_and_both_float_precisions(tmp_path):
    script = load_script("deployed_profile")
    tables = script.profile(
        tiny_model(), SHAPE, tmp_path, repeats=3, warmup=1, block=3, calibration_count=2
    )
    rows = {row["layer"]: row for row in tables["layers"]}
    assert [(row["layer"], row["kind"]) for row in tables["layers"]] == [
        ("input", "input"),
        ("0", "conv"),
        ("3", "dwconv"),
        ("6", "conv"),
    ]
    for name in ("0", "3", "6"):
        row = rows[name]
        # int8, the plugin's default precision (bf16 where the CPU has it) and fp32
        times = {key: value for key, value in row.items() if key.split()[1:] == ["ms"]}
        assert len(times) == 3 and "int8 ms" in times and "fp32 ms" in times, row
        assert all(value > 0 for value in times.values()), row
        assert row["int8 own ms"] > 0 and "i8" in row["int8 kernel"].lower(), row  # integers
        assert row["float kernel"] and "I8" not in row["float kernel"], row
        assert row["faster"] in {key.split()[0] for key in times}
    kinds = {row["kind"]: row for row in tables["kinds"]}
    assert kinds["total"]["int8 share"] == 1.0 and kinds["conv"]["int8 ms"] > 0
    ops = {row["op"]: row for row in tables["ops"]}
    assert ops["QLinearConv"]["int8 nodes"] >= 1 and ops["QLinearConv"]["int8 ms"] > 0
    assert ops["total"]["fp32 ms"] > 0
