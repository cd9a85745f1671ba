"""Shared fixtures: compose the real configs the way train.py does, into a temporary run dir."""

from __future__ import annotations

import importlib.util
import inspect
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lowbit.config import CONFIG_DIR
from lowbit.models.nin import NIN_STAGES

ROOT = CONFIG_DIR.parent

# Small and quick: every test run trains on a handful of batches and never goes online. Every
# stage a user's run has after training (measure, pack, integer export) stays on.
FAST = [
    "trainer.max_epochs=1",
    "dataset.batch_size=16",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "latency.warmup=1",
    "latency.repeats=2",
]
# Detection models train on a detection set: small generated scenes keep the test quick.
MODEL_DATA = {
    "yolov3_tiny": [
        "dataset=shapes_det",
        "dataset.image_size=64",
        "dataset.train_size=8",
        "dataset.val_size=8",
        "dataset.test_size=8",
    ]
}


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path_factory):
    """No credentials and no user netrc: W&B must choose offline by itself."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path_factory.mktemp("home") / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path_factory.mktemp("wandb-config")))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path_factory.mktemp("wandb-cache")))
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The job config train.py would get, with ``${hydra:...}`` resolvable and runs in tmp."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests (``pytestmark = usefixtures(...)``), restored
    after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, fast: bool = True, name: str = "run") -> DictConfig:
        output_dir = tmp_path / name
        return compose_config([*(FAST if fast else []), *overrides], output_dir)

    return make


@pytest.fixture
def offline(monkeypatch):
    """Every network open fails at once, and counts the attempts (data sets' download tests)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise urllib.error.URLError("network is unreachable\nsecond line of the reason")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def run_env() -> dict[str, str]:
    """The environment of a training subprocess: no W&B credentials, and its own W&B service.

    wandb.init in the test process exports WANDB_SERVICE; a child that inherits it shares this
    process's W&B service, where a killed child's unfinished run would stay registered.
    """
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    env.pop("WANDB_SERVICE", None)
    return env


def run_code(code: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` from the repository root, as a training child runs (``run_env``):
    a script that wraps lowbit's functions, then runs train.py as ``python train.py`` does."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,
        cwd=ROOT,
    )


def run_train(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` as a user runs it, its run (or sweep) folder under ``tmp_path``
    (``run``, ``sweep``) and no experiment tracker."""
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            *args,
            f"hydra.run.dir={tmp_path}/run",
            f"hydra.sweep.dir={tmp_path}/sweep",
            "logger=none",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=300,
        cwd=tmp_path,
    )


def nin_layer_shapes(num_classes: int = 10, in_channels: int = 3, side: int = 32):
    """(C_in, C_out, k, output side) of each NIN conv, from its stage table: "same" padding, and
    the 3x3/2 max-pool (padding 1) between stages halves the side, rounding up."""
    shapes, channels = [], in_channels
    for stage_index, stage in enumerate(NIN_STAGES):
        if stage_index > 0:
            side = (side - 1) // 2 + 1
        for out_channels, kernel_size in stage:
            out_channels = num_classes if out_channels is None else out_channels
            shapes.append((channels, out_channels, kernel_size, side))
            channels = out_channels
    return shapes


def nin_macs(num_classes: int = 10, in_channels: int = 3, side: int = 32) -> int:
    """NIN's multiply-accumulates for one image: side^2 k^2 C_in C_out per conv."""
    return sum(
        out_side**2 * k * k * c_in * c_out
        for c_in, c_out, k, out_side in nin_layer_shapes(num_classes, in_channels, side)
    )


def nin_params(num_classes: int = 10, in_channels: int = 3) -> int:
    """NIN's parameters: each conv's k^2 C_in C_out weights and C_out biases, and its
    BatchNorm's C_out scales and C_out shifts."""
    return sum(
        k * k * c_in * c_out + 3 * c_out
        for c_in, c_out, k, _ in nin_layer_shapes(num_classes, in_channels)
    )


CONF_DATASET = ROOT / "conf" / "dataset"


def assert_one_line_naming(error: pytest.ExceptionInfo, text: object) -> None:
    """The raised error's message is one line and names ``text`` (a path, a key)."""
    message = str(error.value)
    assert "\n" not in message and str(text) in message, message


def dataset_option(name: str) -> DictConfig:
    """conf/dataset/NAME.yaml as its class takes it: without Hydra's ``defaults`` list (the
    task the data set chooses), which is no constructor argument."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF_DATASET / f"{name}.yaml")
    node.pop("defaults", None)
    return node


def assert_config_mirrors_the_constructor(node: DictConfig) -> None:
    """A data set option's keys are its class's constructor arguments, with the same defaults
    (``data_dir`` and ``num_workers`` excepted: where data lives and how it is read is the
    config's business)."""
    from hydra.utils import get_class

    parameters = inspect.signature(get_class(node._target_).__init__).parameters
    keys = set(node.keys()) - {"_target_"}
    assert keys == set(parameters) - {"self"}
    for key in keys:
        default = parameters[key].default
        if key not in ("data_dir", "num_workers") and default is not inspect.Parameter.empty:
            assert node[key] == default, key


def load_script(name: str):
    """A script of scripts/ as a module (they are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
