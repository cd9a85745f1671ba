"""lowbit.export.onnx: the integer ONNX export computes what the fake-quant model computes.

Models are NIN on 16x16 inputs (a quarter of the 32x32 cost; the global pool makes NIN
size-agnostic) and torch runs on one thread here (two threads on a shared two-core machine can
be 30x slower), so the file stays fast.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import load_script
from onnx import numpy_helper
from torch import nn

from lowbit.config import CONFIG_DIR
from lowbit.data.digits import DigitsData
from lowbit.export import save_packed
from lowbit.export.onnx import (
    export_fp32_onnx,
    export_int8_onnx,
    float_model,
    onnx_predict,
    optimized_op_types,
    top1_agreement,
)
from lowbit.export.onnx_graph import FLOAT_OPS, UnsupportedModel
from lowbit.export.onnx_run import export_run
from lowbit.models import NIN
from lowbit.quant import fold_bn, quantize_model

SHAPE = (3, 16, 16)
ROOT = CONFIG_DIR.parent


# ONNX Runtime and torch on one thread each: the suite shares two cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def nin(quantizer: str, bits: int, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return quantize_model(
        NIN(num_classes=10),
        input_shape=SHAPE,
        quantizer=quantizer,
        wbits=bits,
        abits=bits,
        gbits=32,
        first_layer_bits=8,
        last_layer_bits=8,
        **options,
    )


def unbiased_with_gains(model: nn.Module, alpha: float = 1.7) -> nn.Module:
    """BN with random gains (per-channel weight scales, activations well past every clip) and a
    folded bias of exactly zero: then nothing in the export rounds but the quantizers, and the
    integer model must reproduce the folded fake-quant model to float rounding."""
    generator = torch.Generator().manual_seed(0)
    conv = None
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                conv = module
            elif isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(conv.bias)  # (b - mean) s + beta = 0
                module.running_var.copy_(torch.rand(c, generator=generator) * 0.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) * 3 + 0.5)
                module.bias.zero_()
            elif hasattr(module, "alpha"):
                module.alpha.fill_(alpha)
    return model.eval()


def structured_inputs() -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    noise = torch.randn(8, *SHAPE, generator=generator)
    ramp = torch.linspace(-3, 3, SHAPE[1]).expand(SHAPE).unsqueeze(0)
    checker = ((torch.arange(SHAPE[1])[:, None] + torch.arange(SHAPE[2])) % 2).float()
    return torch.cat(
        [
            noise,
            noise * 4,
            ramp,
            -ramp,
            3 * checker.expand(1, *SHAPE),
            torch.zeros(1, *SHAPE),
            torch.full((1, *SHAPE), 2.0),
        ]
    )


@pytest.mark.parametrize(
    "quantizer,options",
    [
        ("dorefa", {}),
        ("dorefa", {"act_scale": 0.5}),
        ("pact", {}),
        ("pact_symmetric", {}),
    ],
    ids=["dorefa", "dorefa_act_scale", "pact", "pact_symmetric"],
)
def test_w4a4_export_reproduces_the_folded_fake_quant_model(tmp_path, quantizer, options):
    model = unbiased_with_gains(nin(quantizer, 4, **options))
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    x = structured_inputs()
    with torch.no_grad():
        expected = fold_bn(model)(x)
        fake_quant = model(x)
    actual = onnx_predict(path, x)
    per_input = (actual - expected).abs().amax(1) / expected.abs().max()
    # Measured: most inputs agree to 1e-7..3e-7 of max |logit| (float rounding); on 1-3 of the
    # 21 a float tie in the first (float) conv flips one activation step, which the large BN
    # gains spread (up to 6e-2). Sabotaged exports were measured too: without the k-bit clip
    # every input is off by 5e-2..3e-1, with DoReFa's act_scale multiplied back by about 1.
    assert per_input.median() <= 1e-5
    assert (per_input <= 1e-4).float().mean() >= 0.6
    assert (actual.argmax(1) == fake_quant.argmax(1)).float().mean() >= 0.9


def test_weights_are_the_layers_integer_codes(tmp_path):
    model = unbiased_with_gains(nin("dorefa", 4))
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 9  # BN folded away
    codes = {
        i.name: numpy_helper.to_array(i)
        for i in graph.initializer
        if i.name.endswith("weight_codes")
    }
    # convs 1..7 are 4-bit DoReFa: the odd codes 2c - 15, as trained (no rescaling: the bias
    # grid is the one the model's integer evaluation rounds to)
    middle = codes["features_4_0_weight_codes"]
    assert middle.dtype == np.int8
    assert set(np.unique(np.abs(middle))) <= set(range(1, 16, 2))
    # the 8-bit classifier: the narrow range -127..127, exact in int8 (the float-input first
    # conv keeps a float weight)
    assert np.abs(codes["features_10_0_weight_codes"]).max() == 127
    # a k < 8 grid is clipped on the integers (Q saturates at 255, the grid at 15): the inputs
    # of convs 1-7; the classifier's input is 8-bit, where uint8 saturation is the clip
    assert ops.count("Clip") == 7


def test_integer_convs_survive_ort_fusion(tmp_path):
    model = nin("pact", 4)
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    ops = optimized_op_types(path, tmp_path / "optimized.onnx")
    # every conv between two quantizers is one QLinearConv; only the float-input first conv
    # and the float-output classifier stay float
    assert ops.count("QLinearConv") == 7
    calibrated = export_int8_onnx(
        model, SHAPE, tmp_path / "cal.onnx", calibration=torch.randn(16, *SHAPE)
    )
    ops = optimized_op_types(calibrated, tmp_path / "optimized_cal.onnx")
    assert ops.count("QLinearConv") == 8  # the calibrated image input puts conv 0 on integers
    assert not any(op in ("Conv", "FusedConv") for op in ops[:-6])


def test_a_layer_with_float_weights_runs_float_between_integer_layers(tmp_path):
    """wbits=32 on a middle layer (an allocation's float width, lowbit.mixed): the export writes
    it float between the DQ of its input and the Q of its output, and ONNX Runtime runs it float
    (its WeightBiasQuantization would put a float weight behind a per-tensor DQ on int8), as
    the model computes it."""
    model = unbiased_with_gains(nin("pact", 4, overrides={"features.4.0": {"wbits": 32}}))
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    ops = optimized_op_types(path, tmp_path / "optimized.onnx")
    assert ops.count("QLinearConv") == 6  # 7 between quantizers (above) less the float one
    middle = ops[ops.index("MaxPool") + 1 : ops.index("QuantizeLinear", ops.index("MaxPool"))]
    assert "Conv" in middle and "QLinearConv" not in middle
    x = structured_inputs()
    with torch.no_grad():
        expected = model(x)
    per_input = (onnx_predict(path, x) - expected).abs().amax(1) / expected.abs().max()
    assert per_input.median() <= 1e-5  # as the all-integer export above


@pytest.fixture(scope="module")
def digits():
    data = DigitsData()
    data.setup()

    def resize(t):
        return F.interpolate(t, size=SHAPE[1:], mode="bilinear", align_corners=False)

    train = data.train_set.tensors
    held_out = [torch.cat(parts) for parts in zip(data.val_set.tensors, data.test_set.tensors)]
    return resize(train[0]), train[1], resize(held_out[0]), held_out[1]


def trained(model: nn.Module, digits, steps: int = 40) -> nn.Module:
    images, labels = digits[:2]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_w8a8_dorefa_top1_agreement(tmp_path, digits):
    # 8-bit DoReFa weights on the narrow range (-127..127) export exactly. The image stays
    # float here (input_bits 32): as exported, the first conv runs in float; with calibration
    # images the export quantizes the image on its own, a departure from the trained model.
    model = trained(nin("dorefa", 8), digits)
    images, labels = digits[2:]
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).float().mean() > 0.8  # sane margins
    path = export_int8_onnx(model, SHAPE, tmp_path / "int8.onnx")
    assert top1_agreement(model, path, images) >= 0.99
    calibrated = export_int8_onnx(model, SHAPE, tmp_path / "cal.onnx", calibration=digits[0][:64])
    batches = [(images[:300], None), (images[300:], None)]  # (images, labels), as a DataLoader
    assert top1_agreement(model, calibrated, batches) >= 0.98


def test_fp32_export_is_the_float_model(tmp_path):
    model = unbiased_with_gains(nin("pact", 4))
    path = export_fp32_onnx(model, SHAPE, tmp_path / "fp32.onnx")
    assert "BatchNormalization" not in [n.op_type for n in onnx.load(str(path)).graph.node]
    x = structured_inputs()
    with torch.no_grad():
        expected = float_model(model)(x)
    torch.testing.assert_close(onnx_predict(path, x), expected, rtol=1e-4, atol=1e-4)


class Gelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(F.gelu(self.conv(x))).mean((2, 3))


@pytest.mark.parametrize(
    "build,words",
    [
        (
            lambda: quantize_model(Gelu(), quantizer="dorefa", wbits=4, abits=4, input_shape=SHAPE),
            "gelu",
        ),
        (lambda: nin("dorefa", 10), "10-bit activations"),
        (lambda: NIN(num_classes=10), "no quantized layer"),
    ],
    ids=["gelu", "10_bit", "float_model"],
)
def test_unsupported_models_fail_with_one_line(tmp_path, build, words):
    with pytest.raises(ValueError) as error:
        export_int8_onnx(build(), SHAPE, tmp_path / "x.onnx")
    assert isinstance(error.value, UnsupportedModel)
    assert words in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "x.onnx").exists()


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.Tanh()
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(self.act(self.conv(x))).flatten(1)


def test_an_unsupported_module_is_told_with_exactly_the_ops_of_the_table(tmp_path):
    """The list of supported ops is written from the emitter's table, so it cannot drift from
    what the export writes: the layers, then every entry of ``FLOAT_OPS``, nothing else."""
    model = quantize_model(Tanh(), quantizer="dorefa", wbits=4, abits=4, input_shape=SHAPE)
    with pytest.raises(UnsupportedModel) as error:
        export_int8_onnx(model, SHAPE, tmp_path / "x.onnx")
    message = str(error.value)
    assert message.startswith("cannot export module act (Tanh) to integer ONNX: supported are ")
    listed = message.split("supported are ", 1)[1].split(", ")
    assert listed == ["Conv2d", "Linear", *(op.label for op in FLOAT_OPS)]


def finished_run(run_dir, model: nn.Module, input_bits: int = 32) -> None:
    """The files a finished digits run leaves: config, packed weights, results.json."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        "model:\n  _target_: lowbit.models.nin.NIN\n  in_channels: 3\n"
        "quant:\n  quantizer: pact\n  wbits: 4\n  abits: 4\n  gbits: 32\n"
        f"  first_layer_bits: 8\n  last_layer_bits: 8\n  input_bits: {input_bits}\n"
        "dataset:\n  _target_: lowbit.data.digits.DigitsData\n  batch_size: 128\n"
    )
    save_packed(model, run_dir / "model_packed.safetensors")
    (run_dir / "results.json").write_text(json.dumps({"status": "ok", "metrics": {"val/acc": 0.5}}))


def test_export_run_writes_models_and_merges_metrics(tmp_path):
    torch.manual_seed(0)
    model = quantize_model(
        NIN(num_classes=10), input_shape=(3, 32, 32), quantizer="pact", wbits=4, abits=4, gbits=32
    )
    finished_run(tmp_path, model)
    metrics = export_run(tmp_path, threads=1)
    assert (tmp_path / "model_int8.onnx").is_file() and (tmp_path / "model_fp32.onnx").is_file()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"]["val/acc"] == 0.5  # merged, not replaced
    for key in ("latency/fp32_ms", "latency/int8_ms", "export/top1_agreement"):
        assert results["metrics"][key] == metrics[key] and metrics[key] > 0
    assert metrics["latency/export_threads"] == 1
    # a re-export of a finished run checks the whole val set: digits' 270 images
    assert metrics["export/agreement_images"] == 270


@pytest.mark.parametrize(
    "setup,words",
    [
        (lambda d: None, "no such run dir"),
        (
            lambda d: (d.mkdir(), (d / ".hydra").mkdir(), (d / ".hydra" / "config.yaml").touch()),
            "has not finished",
        ),
    ],
    ids=["missing", "unfinished"],
)
def test_script_refuses_bad_run_dirs_with_one_line(tmp_path, capsys, setup, words):
    run_dir = tmp_path / "run"
    setup(run_dir)
    with pytest.raises(SystemExit) as stopped:  # in-process: the command line's main
        load_script("export").main([str(run_dir)])
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert words in err and len(err.strip().splitlines()) == 1
    assert out == ""


def test_parity_script_prints_each_layer_and_a_json_line(tmp_path, capsys):
    torch.manual_seed(0)
    model = quantize_model(
        NIN(num_classes=10), input_shape=(3, 32, 32), quantizer="pact", wbits=4, abits=4, gbits=32
    )
    finished_run(tmp_path, model)
    load_script("export").main(["--parity", "--images", "16", "--threads", "1", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = json.loads(lines[-1])["parity"]
    quantized = [
        name for name, module in model.named_modules() if getattr(module, "abits", 32) < 32
    ]
    # Every layer the fake-quant model quantizes has a row with its measured codes; the image's
    # layer (calibrated by the export) has a row without.
    assert [row["layer"] for row in rows if row["differ"] is not None] == quantized
    assert all(
        0 <= row["differ"] <= 1 and row["max_steps"] >= 0
        for row in rows
        if row["differ"] is not None
    )
    assert rows[0]["differ"] is None and "calibrated" in lines[1]
    assert len(lines) == len(rows) + 2  # header, one line per layer, the JSON line


def test_parity_summary_writes_one_csv_row_per_run(tmp_path, capsys):
    import csv
    import io

    torch.manual_seed(0)
    model = quantize_model(
        NIN(num_classes=10),
        input_shape=(3, 32, 32),
        quantizer="pact",
        wbits=4,
        abits=4,
        gbits=32,
        input_bits=8,  # a run's default: the image on the model's own grid
    )
    model.train()(torch.rand(8, 3, 32, 32))  # the image range, from a training batch
    finished_run(tmp_path, model.eval(), input_bits=8)
    script = load_script("parity_summary")  # in-process: the command line's main
    script.main(["--images", "8", "--threads", "1", str(tmp_path)])
    (row,) = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["integer_layers"] == "9" and row["layers_differing"] == "0"
    assert row["images"] == "8" and int(row["codes_compared"]) > 0
    with pytest.raises(SystemExit) as stopped:
        script.main([str(tmp_path / "nope")])
    assert stopped.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "trainer, expected",
    [
        ({}, None),
        ({"fast_dev_run": True}, 1),
        ({"fast_dev_run": 3, "limit_val_batches": 10}, 3),
        ({"fast_dev_run": False, "limit_val_batches": 5}, 5),
        ({"limit_val_batches": 0.25}, 10),
        ({"limit_val_batches": 0.001}, 1),
        ({"limit_val_batches": 1.0}, None),
        ({"limit_val_batches": 0}, None),  # validation off: the export still sees the val set
        (None, None),
    ],
)
def test_the_export_agreement_runs_on_the_batches_the_trainer_validates_on(trainer, expected):
    from lowbit.export.onnx_run import validation_batches

    assert validation_batches(trainer, loader_batches=40) == expected


def test_agreements_and_accuracies_come_from_one_pass_and_need_labels():
    """A runner that answers class 0 for everything against a model that answers the label:
    its agreement and its accuracy, and none without labels."""
    from lowbit.export.onnx import top1_agreements_and_accuracies

    labels = torch.tensor([0, 1, 2, 0])
    images = nn.functional.one_hot(labels, 3).float()  # the model reads the label off the input
    model = nn.Identity()
    model.register_parameter("unused", nn.Parameter(torch.zeros(1)))  # a device to run on
    always_zero = lambda x: [np.eye(3, dtype=np.float32)[np.zeros(len(x), dtype=int)]]  # noqa: E731
    agreement, accuracy = top1_agreements_and_accuracies(
        model, {"int8": always_zero}, [(images[:2], labels[:2]), (images[2:], labels[2:])]
    )
    assert agreement == {"int8": 0.5}
    assert accuracy == {"fake_quant": 1.0, "int8": 0.5}
    assert top1_agreements_and_accuracies(model, {"int8": always_zero}, images)[1] == {}
    unlabelled = [(images[:2], labels[:2]), (images[2:], None)]
    assert top1_agreements_and_accuracies(model, {"int8": always_zero}, unlabelled)[1] == {}
