"""Seeded gradient noise and the random state that checkpoints carry (lowbit.randomness)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.quant import quantize_model
from lowbit.quant.modules import gradient_quantizers, use_noise_stream
from lowbit.randomness import RandomState, capture_global_state, restore_global_state
from lowbit.train import run


def tiny_dorefa_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return quantize_model(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.ReLU(),
            torch.nn.Conv2d(4, 4, 3),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 4 * 4, 3),
        ),
        quantizer="dorefa",
        wbits=4,
        abits=4,
        gbits=2,
    )


def gradients_with_noise_seed(seed: int, rank: int = 0, steps: int = 1) -> torch.Tensor:
    model = tiny_dorefa_net()
    assert use_noise_stream(model, seed, rank) == 3
    before = torch.get_rng_state()
    for _ in range(steps):
        model.zero_grad()
        model(torch.ones(2, 3, 8, 8)).sum().backward()
    assert torch.equal(torch.get_rng_state(), before)  # the global generator was not touched
    return model[0].weight.grad.clone()


def test_gradient_noise_comes_from_its_own_seeded_streams():
    first = gradients_with_noise_seed(0)
    assert torch.equal(first, gradients_with_noise_seed(0))
    assert not torch.equal(first, gradients_with_noise_seed(1))
    assert not torch.equal(first, gradients_with_noise_seed(0, rank=1))  # ranks differ


def test_each_step_draws_new_noise_and_the_count_is_the_state():
    model = tiny_dorefa_net()
    use_noise_stream(model, 0)
    grads = []
    for _ in range(3):
        model.zero_grad()
        model(torch.ones(2, 3, 8, 8)).sum().backward()
        grads.append(model[0].weight.grad.clone())
    assert not torch.equal(grads[1], grads[2])
    counts = {name: int(q.draws) for name, q in gradient_quantizers(model).items()}
    assert set(counts.values()) == {3}
    # a fresh model given the counts draws what the third step drew
    again = tiny_dorefa_net()
    use_noise_stream(again, 0)
    for name, quantizer in gradient_quantizers(again).items():
        quantizer.draws.fill_(counts[name] - 1)
    again(torch.ones(2, 3, 8, 8)).sum().backward()
    assert torch.equal(again[0].weight.grad, grads[2])


def test_draw_counts_are_not_in_the_state_dict():
    assert not any(key.endswith("draws") for key in tiny_dorefa_net().state_dict())


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
    cfg = make_cfg("quantizer=pact", "quant.gbits=8", "quant.alpha_calibration=99", "logger=none")
    assert run(cfg)["status"] == "ok"
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    state = checkpoint["callbacks"]["RandomState"]
    assert set(state) == {"global", "gradient_noise"}
    counts = state["gradient_noise"]  # one draw count per gradient quantizer, all equal
    assert counts and len(set(counts.values())) == 1 and next(iter(counts.values())) > 0
    weights = checkpoint["state_dict"]
    assert "val_acc_best.max_value" in weights  # the best epoch survives a resume
    assert weights["model.features.1.0.input_quantizer.calibrated"].item() is True
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    # The task's hyperparameters (lowbit.tasks) are plain data: nothing needs unpickling.
    assert checkpoint["hyper_parameters"]["num_classes"] == 10


@pytest.mark.parametrize("seed", [0, 7])
def test_random_state_keys_every_gradient_quantizer_and_restores_counts(seed):
    model = tiny_dorefa_net()

    class Module(torch.nn.Module):  # what on_fit_start reads of a LightningModule
        device = torch.device("cpu")

        def __init__(self):
            super().__init__()
            self.model = model

    callback = RandomState(seed)
    callback.on_fit_start(None, Module())
    bases = [q.noise_base for q in gradient_quantizers(model).values()]
    assert None not in bases and len(set(bases)) == 3  # a stream per layer
    model(torch.ones(2, 3, 8, 8)).sum().backward()
    saved = callback.state_dict()["gradient_noise"]
    assert set(saved.values()) == {1}

    restored = RandomState(seed)
    restored.load_state_dict({"global": capture_global_state(), "gradient_noise": saved})
    other = tiny_dorefa_net()

    class Other(Module):
        def __init__(self):
            torch.nn.Module.__init__(self)
            self.model = other

    restored.on_fit_start(None, Other())
    assert [q.noise_base for q in gradient_quantizers(other).values()] == bases
    assert all(int(q.draws) == 1 for q in gradient_quantizers(other).values())
