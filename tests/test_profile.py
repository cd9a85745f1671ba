"""The step profile: rows per layer and quantizer that add up to the step, time charged to the
module that spent it (forward and backward), the script's table and last JSON line."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from conftest import ROOT
from torch import nn

from lowbit.measure.profile import KINDS, TrainingStep, profile_step
from lowbit.quant import quantize_model
from lowbit.quant.modules import use_noise_stream

SLEEP_S = 0.1  # far above what any other row of this tiny model takes


class _SleepInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        time.sleep(SLEEP_S)
        return grad


class SlowForward(nn.Module):
    def forward(self, x):
        time.sleep(SLEEP_S)
        return x * 1.0


class SlowBackward(nn.Module):
    def forward(self, x):
        return _SleepInBackward.apply(x * 1.0)


def tiny(slow: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    layers += [SlowForward(), SlowBackward()] if slow else []
    layers += [nn.Flatten(), nn.Linear(4 * 6 * 6, 5)]
    return nn.Sequential(*layers)


def step_of(model: nn.Module) -> TrainingStep:
    generator = torch.Generator().manual_seed(0)
    return TrainingStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        torch.randn(4, 3, 6, 6, generator=generator),
        torch.randint(0, 5, (4,), generator=generator),
        nn.functional.cross_entropy,
    )


def quantized(slow: bool = False) -> nn.Module:
    model = quantize_model(
        tiny(slow), quantizer="dorefa", wbits=4, abits=4, gbits=8, input_shape=(3, 6, 6)
    )
    use_noise_stream(model, seed=0)
    return model


def test_rows_add_up_to_the_step_and_name_every_quantizer():
    result = profile_step(step_of(quantized()), step_of(tiny()), warmup=1, repeats=2)
    rows = result["rows"]
    assert sum(row["ms"] for row in rows) == pytest.approx(result["step_ms"])
    assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    assert rows[-1]["name"] == "other" and 0 <= result["coverage"] <= 1
    assert result["coverage"] == pytest.approx(1 - result["other_ms"] / result["step_ms"])
    by_key = {(row["name"], row["kind"]): row for row in rows}
    # each quantized layer has its compute row and one row per quantizer kind
    for layer in ("0", "4"):  # the conv and the linear
        assert {(layer, kind) for kind in ("compute", "weight", "activation", "gradient")} <= set(
            by_key
        )
        assert by_key[(layer, "compute")]["fp32_ms"] is not None  # the FP32 twin's layer
        assert by_key[(layer, "weight")]["fp32_ms"] is None
    assert by_key[("0", "compute")]["module"] == "QuantConv2d"
    assert by_key[("1", "compute")]["module"] == "BatchNorm2d"
    assert set(result["kinds"]) == set(KINDS)
    assert sum(k["ms"] for k in result["kinds"].values()) == pytest.approx(result["step_ms"])
    assert result["kinds"]["gradient"]["ms"] > 0 and result["kinds"]["loss"]["ms"] > 0
    for key in ("plain_step_ms", "plain_fp32_step_ms", "ratio", "plain_ratio"):
        assert result[key] > 0


def test_time_goes_to_the_module_that_spent_it_forward_and_backward():
    result = profile_step(
        step_of(quantized(slow=True)), step_of(tiny(slow=True)), warmup=1, repeats=1
    )
    by_key = {(row["name"], row["kind"]): row for row in result["rows"]}
    slow_forward, slow_backward = by_key[("3", "compute")], by_key[("4", "compute")]
    assert slow_forward["forward_ms"] >= SLEEP_S * 1000 > slow_forward["backward_ms"]
    assert slow_backward["backward_ms"] >= SLEEP_S * 1000 > slow_backward["forward_ms"]
    # and nowhere else: every other row is smaller than one sleep
    others = [row for key, row in by_key.items() if key not in {("3", "compute"), ("4", "compute")}]
    assert all(row["ms"] < SLEEP_S * 1000 for row in others), others
    assert by_key[("3", "compute")]["fp32_ms"] >= SLEEP_S * 1000


def script():
    spec = importlib.util.spec_from_file_location(
        "profile_step", ROOT / "scripts" / "profile_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_profiles_a_composed_config_and_ends_with_json(capsys):
    assert (
        script().main(
            [  # overrides on both sides of the options, as train.py allows
                "quantizer=dorefa",
                "--warmup",
                "0",
                "--repeats",
                "1",
                "quant.gbits=8",
                "--threads",
                "1",
                "--top",
                "5",
                "dataset.batch_size=4",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["model"] == "NIN" and result["batch_size"] == 4 and result["gbits"] == 8
    assert sum(row["share"] for row in result["rows"]) == pytest.approx(1.0, abs=1e-9)
    assert "coverage" in result and result["rows"][-1]["kind"] == "other"
    assert any("smaller rows" in line for line in lines)  # --top 5 hides the rest in one line
    assert any(line.startswith("step ") and "coverage" in line for line in lines)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "--threads and --repeats must be at least 1"),
        (["quantizer=nope"], "quantizer"),
        (["--compiled", "--warmup", "1"], "--compiled needs --warmup of at least 2"),
    ],
)
def test_script_refuses_bad_input_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        script().main(argv)
    assert stop.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_kernel_profile_gives_each_interleaved_step_its_own_events():
    # two steps taking turns under one profiler: each event goes to the step it ran in
    from lowbit.measure.kernels import profile_kernels

    x = torch.randn(64, 64)
    steps = {"plain": lambda: x @ x, "with_sine": lambda: torch.sin(x @ x)}
    profiles = profile_kernels(steps, warmup=1, repeats=3)
    assert set(profiles) == {"plain", "with_sine"}
    assert (
        "aten::mm" in profiles["plain"]["events"] and "aten::sin" not in profiles["plain"]["events"]
    )
    assert {"aten::mm", "aten::sin"} <= set(profiles["with_sine"]["events"])
    for profile in profiles.values():
        assert profile["step_ms"] > 0 and 0 < profile["coverage"] <= 1.05
        assert "python between ops" in profile["events"]


@pytest.mark.slow  # a cold compile with inductor's kernel events: 25 to 45 s on 2 cores
def test_compiled_profile_names_each_kernel_and_adds_up(monkeypatch):
    """The compiled step, kernel by kernel: inductor's fused kernels, Eq. 12's operator and the
    torch ops the compiled code calls, each event's self time once, against the FP32 twin."""
    import torch._inductor.config as inductor_config

    from lowbit.measure.kernels import (
        ATEN,
        GENERATED,
        KINDS,
        LOWBIT,
        compiled_step,
        format_kernel_table,
        kernel_table,
        profile_kernels,
    )

    monkeypatch.setattr(inductor_config.cpp, "enable_kernel_profile", True)
    torch._dynamo.reset()
    profile = profile_kernels({"q": compiled_step(step_of(quantized()))}, warmup=2, repeats=2)["q"]
    # the twin's side, made up (a second compile would double the test's time): 1 ms of conv
    fp32 = {"step_ms": 10.0, "events": {"aten::convolution_backward": 1.0}, "coverage": 0.1}
    result = kernel_table(profile, fp32)
    kinds = {row["event"]: row["kind"] for row in result["rows"]}
    assert kinds["lowbit::eq12_gradient"] == LOWBIT
    assert any(name.startswith("graph_") and kind == GENERATED for name, kind in kinds.items())
    assert kinds["aten::convolution_backward"] == ATEN
    by_event = {row["event"]: row for row in result["rows"]}
    assert by_event["lowbit::eq12_gradient"]["ms"] > 0
    assert by_event["lowbit::eq12_gradient"]["fp32_ms"] == 0  # the twin quantizes nothing
    assert by_event["aten::convolution_backward"]["fp32_ms"] == 1.0
    assert result["kinds"][ATEN]["fp32_ms"] == 1.0 and result["fp32_step_ms"] == 10.0
    assert set(result["kinds"]) == set(KINDS)
    total = sum(kind["ms"] for kind in result["kinds"].values())
    assert total == pytest.approx(sum(row["ms"] for row in result["rows"]))
    # self times do not overlap: together they fit in the step's wall time
    assert 0 < result["coverage"] <= 1.05
    table = format_kernel_table(result, top=3)
    assert "lowbit" in table and "smaller rows" in table and "coverage" in table
