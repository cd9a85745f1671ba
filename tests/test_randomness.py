"""Seeded gradient noise and the random state that checkpoints carry (lowbit.randomness)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.quant import quantize_model
from lowbit.quant.modules import DoReFaGradient, use_noise_generator
from lowbit.randomness import (
    RandomState,
    capture_global_state,
    noise_seed,
    restore_global_state,
)
from lowbit.train import run


def tiny_dorefa_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)), quantizer="dorefa", wbits=4,
        abits=4, gbits=2)


def gradients_with_noise_seed(seed: int) -> torch.Tensor:
    model = tiny_dorefa_net()
    generator = torch.Generator().manual_seed(noise_seed(seed))
    assert use_noise_generator(model, generator) == 3
    before = torch.get_rng_state()
    model(torch.ones(2, 3, 8, 8)).sum().backward()
    assert torch.equal(torch.get_rng_state(), before)  # the global generator was not touched
    return model[0].weight.grad.clone()


def test_gradient_noise_comes_from_its_own_seeded_generator():
    first = gradients_with_noise_seed(0)
    assert torch.equal(first, gradients_with_noise_seed(0))
    assert not torch.equal(first, gradients_with_noise_seed(1))


def test_noise_seed_is_a_stream_of_its_own():
    assert noise_seed(0) != 0 and noise_seed(0) != noise_seed(1)
    assert 0 <= noise_seed(123) < 2 ** 63


def test_global_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = tmp_path / "state.pt"
    torch.save(capture_global_state(), path)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_global_state(torch.load(path, weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_a_runs_checkpoint_loads_weights_only_and_carries_all_resume_state(make_cfg):
    cfg = make_cfg("quantizer=pact", "quant.gbits=8", "quant.alpha_calibration=99",
                   "logger=none")
    assert run(cfg)["status"] == "ok"
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    state = checkpoint["callbacks"]["RandomState"]
    assert set(state) == {"global", "gradient_noise"} and state["gradient_noise"] is not None
    weights = checkpoint["state_dict"]
    assert "val_acc_best.max_value" in weights  # the best epoch survives a resume
    assert weights["model.features.1.0.input_quantizer.calibrated"].item() is True
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    assert "hyper_parameters" not in checkpoint  # nothing that needs unpickling of objects


@pytest.mark.parametrize("seed", [0, 7])
def test_random_state_seeds_every_gradient_quantizer_of_the_model(seed):
    model = tiny_dorefa_net()

    class Module(torch.nn.Module):  # what on_fit_start reads of a LightningModule
        device = torch.device("cpu")

        def __init__(self):
            super().__init__()
            self.model = model

    callback = RandomState(seed)
    callback.on_fit_start(None, Module())
    generators = {id(m.generator) for m in model.modules() if isinstance(m, DoReFaGradient)}
    assert generators == {id(callback.noise)}
    assert torch.equal(callback.noise.get_state(),
                       torch.Generator().manual_seed(noise_seed(seed)).get_state())
