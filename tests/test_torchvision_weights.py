"""torchvision's MobileNetV3 weights on lowbit's MobileNetV3, proven without a download: the
same random weights in both give the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import FAST, compose_config

from lowbit.errors import ConfigError
from lowbit.models.mobilenetv3 import MobileNetV3
from lowbit.models.torchvision_weights import cached_file, map_state
from lowbit.pretrained import load_initial_weights
from lowbit.results import RESULTS_FILE, STATUS_OK


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight and statistic drawn at random, so that logits are far from zero and a
    wrongly paired tensor shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.3
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return model.eval()


@pytest.mark.parametrize("arch", ["small", "large"])
def test_torchvision_weights_map_onto_lowbit_s_mobilenetv3_logit_for_logit(arch):
    reference = randomized(getattr(torchvision.models, f"mobilenet_v3_{arch}")(weights=None))
    model = MobileNetV3(arch, num_classes=1000, stem="imagenet").eval()
    mapped = map_state(reference.state_dict(), model.state_dict(), f"mobilenet_v3_{arch}")
    assert len(mapped) == len(model.state_dict())
    model.load_state_dict(mapped)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(images), model(images)
    assert expected.abs().max() > 1  # not a comparison of near-zero outputs
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_absent_weights_get_one_line_saying_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError) as error:
        load_initial_weights(MobileNetV3("small", num_classes=10), "torchvision:mobilenet_v3_small")
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "hub" / "checkpoints") in message


def test_ptq_from_torchvision_weights_keeps_the_head_of_other_classes_and_says_so(
    tmp_path, monkeypatch, caplog
):
    """The user's path: the weights file where torchvision's API caches it, digits' 10 classes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = randomized(torchvision.models.mobilenet_v3_small(weights=None))
    path = cached_file("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    out = tmp_path / "run"
    cfg = compose_config(
        [
            *FAST,
            "logger=none",
            "model=mobilenetv3_small",
            "quantizer=lsq",
            "trainer.max_epochs=0",
            "init=torchvision:mobilenet_v3_small",
        ],
        out,
    )
    from lowbit.train import run

    results = run(cfg, out)
    assert results["status"] == STATUS_OK and results["init"]["kind"] == "torchvision"
    assert results["init"]["skipped"] == ["classifier.logits.weight", "classifier.logits.bias"]
    assert (out / "model_int8.onnx").is_file()
    notices = [r.getMessage() for r in caplog.records if "own init" in r.getMessage()]
    assert len(notices) == 1 and "classifier.logits" in notices[0]
    assert json.loads(Path(out / RESULTS_FILE).read_text())["start"] == "ptq"
