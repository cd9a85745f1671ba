"""Every config group composes, and the daily command lines mean what they say."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from lowbit.cli import config_groups
from lowbit.quant import SCHEMES

GROUPS = {g: options for g, options in config_groups().items()}


def all_group_options():
    for group, options in GROUPS.items():
        for option in options:
            if group == "trainer" and option == "gpu":
                continue  # composes below without instantiation: no GPU in CI
            yield group, option


# Options with a value the user must give (``???``): composed with one.
REQUIRED = {("sweep", "ptq_vs_qat"): ["fp32_run=outputs/fp32/nin-digits"]}


@pytest.mark.parametrize("group, option", list(all_group_options()))
def test_every_group_option_composes(make_cfg, group, option):
    from hydra.core.hydra_config import HydraConfig

    from lowbit.validation import validate

    cfg = make_cfg(f"{group}={option}", *REQUIRED.get((group, option), []))
    assert HydraConfig.get().runtime.choices[group] == option  # the option, not the default
    validate(cfg)  # and every value it brings is in range


def test_required_groups_exist():
    for group in (
        "model",
        "quantizer",
        "dataset",
        "trainer",
        "logger",
        "callbacks",
        "experiment",
        "paths",
    ):
        assert group in GROUPS, group


def test_quantizer_choice_fills_the_quant_node(make_cfg):
    cfg = make_cfg("quantizer=dorefa", "quant.wbits=4")
    assert cfg.quant.quantizer == "dorefa" and cfg.quant.wbits == 4
    assert cfg.quant.abits == 4 and cfg.quant.gbits == 32


def test_every_quantizer_config_names_a_registered_scheme(make_cfg):
    for option in GROUPS["quantizer"]:
        assert make_cfg(f"quantizer={option}").quant.quantizer in SCHEMES


def test_run_name_in_the_users_words(make_cfg):
    cfg = make_cfg("quantizer=dorefa", "quant.wbits=4", "quant.abits=4")
    assert cfg.run_name == "nin-dorefa-w4a4g32-digits"


def test_seed_zero_is_kept(make_cfg):
    assert make_cfg("seed=0").seed == 0


def test_gpu_trainer_composes(make_cfg):
    cfg = make_cfg("trainer=gpu")
    assert cfg.trainer.accelerator == "gpu"


def test_optimizer_and_scheduler_instantiate_as_factories(make_cfg):
    import torch

    cfg = make_cfg("optimizer=adam", "scheduler=multistep")
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = instantiate(cfg.optimizer)(params)
    assert isinstance(optimizer, torch.optim.Adam)
    assert isinstance(instantiate(cfg.scheduler)(optimizer), torch.optim.lr_scheduler.MultiStepLR)


def leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a plain config dict."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("preset", GROUPS["experiment"])
def test_every_value_a_preset_sets_survives_composition(make_cfg, preset):
    """What a preset says is what runs: main-config keys (objectives) do not win over it."""
    from omegaconf import OmegaConf

    from lowbit.config import CONFIG_DIR

    stated = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "experiment" / f"{preset}.yaml"))
    stated.pop("defaults", None)
    cfg = make_cfg(f"experiment={preset}", fast=False)
    for key, value in leaves(stated):
        assert OmegaConf.select(cfg, key) == value, f"{preset}: {key}"
    if preset == "yolov3_tiny_shapes":
        assert list(cfg.objectives) == ["val/map50_best"]


@pytest.mark.parametrize("preset", GROUPS["experiment"])
def test_every_preset_states_its_monitor_and_objectives(make_cfg, preset):
    """A paper's setup says what it is judged by; the checkpoint callback watches that metric,
    and the sweep objective is its best value."""
    from omegaconf import OmegaConf

    from lowbit.config import CONFIG_DIR

    stated = OmegaConf.load(CONFIG_DIR / "experiment" / f"{preset}.yaml")
    assert "monitor" in stated and "objectives" in stated, preset
    cfg = make_cfg(f"experiment={preset}", fast=False)
    assert cfg.callbacks.model_checkpoint.monitor == stated.monitor
    assert list(cfg.objectives) == [f"{stated.monitor}_best"]


@pytest.mark.parametrize(
    "dataset, task, monitor",
    [
        ("digits", "ClassificationTask", "val/acc"),
        ("cifar10", "ClassificationTask", "val/acc"),
        ("shapes_det", "DetectionTask", "val/map50"),
        ("voc", "DetectionTask", "val/map50"),
        ("coco", "DetectionTask", "val/map50"),
    ],
)
def test_the_data_set_chooses_the_task_and_its_metrics_without_a_preset(
    make_cfg, dataset, task, monitor
):
    cfg = make_cfg(f"dataset={dataset}")
    assert cfg.task._target_.rsplit(".", 1)[-1] == task
    assert cfg.monitor == cfg.callbacks.model_checkpoint.monitor == monitor
    assert list(cfg.objectives) == [f"{monitor}_best"]


def test_every_config_group_names_its_code_with_target(make_cfg):
    """One hop from config to code: the node each group fills holds a _target_ that imports."""
    from hydra.utils import get_class

    nodes = {
        "model": "model",
        "quantizer": "quant",
        "dataset": "dataset",
        "task": "task",
        "optimizer": "optimizer",
        "scheduler": "scheduler",
        "trainer": "trainer",
    }
    for group, node in nodes.items():
        for option in GROUPS[group]:
            cfg = make_cfg(f"{group}={option}")
            if not cfg[node]:
                assert (group, option) == ("scheduler", "none")  # constant lr: no code
                continue
            assert isinstance(get_class(cfg[node]._target_), type), f"{group}={option}"
