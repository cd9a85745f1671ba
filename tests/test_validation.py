"""Every value a user can set has a declared check (lowbit.validation.SCHEMA), and each check
refuses a bad value with one line naming the key, before any work: in-process for every key,
and through the real command line for one key of each group."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import run_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from lowbit.config import CONFIG_DIR
from lowbit.errors import ConfigError
from lowbit.validation import (
    SCHEMA,
    config_keys,
    integer,
    list_of,
    number,
    one_of,
    uncovered_keys,
    validate,
)

# Keys no config file sets but a user may add (+model.num_classes=10): they follow the data.
USER_ADDED = {"model.num_classes", "model.input_size"}


def top_level_groups() -> list[str]:
    """The groups of train.yaml's defaults list, which the command line chooses among."""
    defaults = OmegaConf.load(CONFIG_DIR / "train.yaml").defaults
    return [next(iter(entry)) for entry in defaults if isinstance(entry, DictConfig)]


@pytest.fixture(scope="module")
def composed() -> dict[str, DictConfig]:
    """The default config, for each option of each group the default with that option, and
    scripts/allocate.py's config (conf/allocate.yaml)."""
    variants = [""] + [
        f"{group}={option.stem}"
        for group in top_level_groups()
        for option in sorted((CONFIG_DIR / group).glob("*.yaml"))
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return {
            **{
                variant: compose("train", [variant, *REQUIRED.get(variant, [])] if variant else [])
                for variant in variants
            },
            "allocate.yaml": compose("allocate", []),
        }


# Options with a value the user must give (``???``): composed with one.
REQUIRED = {"sweep=ptq_vs_qat": ["fp32_run=outputs/fp32/nin-digits"]}


def test_every_key_of_every_option_has_a_check(composed):
    missing = {}
    for variant, cfg in composed.items():
        for key in uncovered_keys(cfg):
            missing.setdefault(key, variant or "the default config")
    assert not missing, (
        "config keys without a check in lowbit.validation.SCHEMA (add one for each): "
        + "; ".join(f"{key} (in {variant})" for key, variant in sorted(missing.items()))
    )


def test_every_check_names_a_key_that_a_config_has_or_a_user_may_add(composed):
    present = {key for cfg in composed.values() for key in config_keys(cfg)}
    assert set(SCHEMA) - present - USER_ADDED == set()
    assert USER_ADDED <= set(SCHEMA)


def test_the_default_config_and_every_option_pass(composed):
    for cfg in composed.values():
        validate(cfg)  # raises on any shipped value outside its own check


# One bad value per key: of the wrong type where the range is wide, else just out of range.
BAD_VALUES = {
    "seed": -3,
    "seeds": 0,
    "threads": 0,
    "compile": "max-autotune",
    "channels_last": "nhwc",
    "group": 5,
    "job_type": ["a"],
    "tags": "fast",
    "optuna.study": "",
    "optuna.trial": -1,
    "objectives": ["accuracy"],
    "run_name": "",
    "resume": "",
    "ckpt_path": 3,
    "init": "",
    "fp32_run": "",
    "calibration.method": "kl",
    "calibration.percentile": 50,
    "calibration.batches": 0,
    "calibration.bn_reestimation": "yes",
    "test": "maybe",
    "monitor": "test/acc",
    "task._target_": "lowbit.tasks.NoSuchTask",
    "task.loss": 1.0,
    "task.score_threshold": 1.5,
    "task.iou_threshold": -0.1,
    "task.max_detections": 0,
    "task.num_drawn": -1,
    "task.draw_score_threshold": 2,
    "task.predictions_dir": "",
    "detection.loss.box_weight": -1,
    "detection.loss.objectness_weight": "high",
    "detection.loss.class_weight": -0.5,
    "detection.loss.ignore_iou": 1.5,
    "detection.score_threshold": -0.01,
    "detection.iou_threshold": 2,
    "detection.max_detections": 0,
    "detection.num_drawn": -1,
    "detection.draw_score_threshold": 1.01,
    "export.onnx": "yes",
    "export.threads": 0,
    "latency.warmup": -1,
    "latency.repeats": 0,
    "paths.root_dir": "",
    "paths.data_dir": 3,
    "paths.log_dir": "",
    "paths.output_dir": "",
    "model._target_": "lowbit.models.NoSuchNet",
    "model.in_channels": 0,
    "model.num_classes": 0,
    "model.input_size": -32,
    "model.arch": "medium",
    "model.stem": "tiny",
    "model.width_mult": 0,
    "model.dropout": 1.0,
    "model.bn_momentum": 2,
    "quant._target_": "no.such.Scheme",
    "quant.quantizer": "",
    "quant.wbits": 0,
    "quant.abits": 64,
    "quant.gbits": 2.5,
    "quant.first_layer_bits": 17,
    "quant.last_layer_bits": "eight",
    "quant.input_bits": 12,
    "quant.overrides": ["a"],
    "quant.signed_inputs": "sometimes",
    "quant.requantize_outputs": "maybe",
    "quant.act_scale": 0,
    "quant.alpha_init": -1,
    "quant.alpha_decay": -1e-4,
    "quant.alpha_lr_mult": 0,
    "quant.alpha_calibration": 100.5,
    "quant.weight_quantizer": "lsq",
    "quant.per_channel_weights": "no",
    "quant.allocation": "/no/such/allocation.yaml",
    "dataset._target_": "lowbit.data.NoSuchData",
    "dataset.data_dir": 1,
    "dataset.batch_size": 0,
    "dataset.num_workers": -1,
    "dataset.seed": 1.5,
    "dataset.download": "no",
    "dataset.augment": 1,
    "dataset.val_size": -1,
    "dataset.train_size": 0,
    "dataset.test_size": 0,
    "dataset.val_fraction": 1.0,
    "dataset.test_fraction": 0,
    "dataset.num_classes": 0,
    "dataset.image_size": 0,
    "dataset.flip": 1.5,
    "dataset.min_objects": -1,
    "dataset.max_objects": 0,
    "dataset.min_object_size": 0,
    "dataset.max_object_size": 0.9,
    "dataset.year": "2010",
    "dataset.train_image_set": "",
    "dataset.val_image_set": None,
    "dataset.test_image_set": 7,
    "dataset.train_annotation_file": "",
    "dataset.val_annotation_file": None,
    "dataset.train_image_dir": "",
    "dataset.val_image_dir": None,
    "optimizer._target_": "torch.optim.NoSuchOptimizer",
    "optimizer._partial_": False,
    "optimizer.lr": -1,
    "optimizer.momentum": 1.0,
    "optimizer.nesterov": "true",
    "optimizer.weight_decay": -5e-4,
    "scheduler": "cosine",
    "scheduler._target_": "torch.optim.lr_scheduler.NoSuch",
    "scheduler._partial_": False,
    "scheduler.T_max": -1,
    "scheduler.milestones": [120, 60],
    "scheduler.gamma": 0,
    "trainer._target_": "pytorch_lightning.NoSuchTrainer",
    "trainer.accelerator": "abacus",
    "trainer.devices": 0,
    "trainer.strategy": "ddp_everywhere",
    "trainer.max_epochs": -1,
    "trainer.precision": "8-true",
    "trainer.log_every_n_steps": 0,
    "trainer.gradient_clip_val": 0,
    "trainer.deterministic": "always",
    "trainer.enable_progress_bar": "on",
    "trainer.enable_model_summary": 0,
    "trainer.default_root_dir": "",
    "logger": ["wandb"],
    "logger.wandb._target_": "lowbit.tracking.no_such_logger",
    "logger.wandb.project": "",
    "logger.wandb.entity": "",
    "logger.wandb.name": "",
    "logger.wandb.group": 1,
    "logger.wandb.job_type": 2,
    "logger.wandb.tags": "a,b",
    "logger.wandb.extra_tags": [None],
    "logger.wandb.save_dir": "",
    "logger.wandb.mode": "sometimes",
    "logger.wandb.log_model": "some",
    "logger.wandb.notes": 3,
    "logger.wandb.prefix": None,
    "logger.wandb.settings": "quiet",
    "logger.csv._target_": "csv.NoSuchLogger",
    "logger.csv.save_dir": "",
    "logger.csv.name": 3,
    "logger.tensorboard._target_": "tb.NoSuchLogger",
    "logger.tensorboard.save_dir": "",
    "logger.tensorboard.name": "",
    "callbacks": 5,
    "callbacks.model_checkpoint._target_": "pytorch_lightning.NoSuchCallback",
    "callbacks.model_checkpoint.dirpath": "",
    "callbacks.model_checkpoint.filename": "",
    "callbacks.model_checkpoint.auto_insert_metric_name": "no",
    "callbacks.model_checkpoint.monitor": "accuracy",
    "callbacks.model_checkpoint.mode": "best",
    "callbacks.model_checkpoint.save_top_k": -2,
    "callbacks.model_checkpoint.save_last": 1,
    "callbacks.last_checkpoint._target_": "pytorch_lightning.callbacks.NoSuchCheckpoint",
    "callbacks.last_checkpoint.dirpath": "",
    "callbacks.last_checkpoint.filename": "",
    "callbacks.last_checkpoint.monitor": "loss",
    "callbacks.last_checkpoint.save_top_k": -3,
    "callbacks.last_checkpoint.enable_version_counter": "yes",
    "callbacks.save_on_interrupt._target_": "lowbit.checkpoints.NoSuchCallback",
    "callbacks.save_on_interrupt.dirpath": "",
    "callbacks.save_on_interrupt.filename": "",
    "callbacks.learning_rate_monitor._target_": "pytorch_lightning.callbacks.NoSuchMonitor",
    "callbacks.learning_rate_monitor.logging_interval": "batch",
    "callbacks.bits_summary._target_": "lowbit.callbacks.NoSuchSummary",
    "method": "hessain",
    "widths": [4, 2],
    "budget.size_kb": 0,
    "budget.bops_ratio": -0.5,
    "budget.latency_ms": 0,
    "sensitivity.batches": 0,
    "sensitivity.batch_size": 0,
    "sensitivity.samples": 1,
    "output": "",
    "export.openvino": "maybe",
    "export.format": "qlinear",
}


def test_every_check_has_a_bad_value_here():
    assert sorted(set(SCHEMA) - set(BAD_VALUES)) == []
    assert sorted(set(BAD_VALUES) - set(SCHEMA)) == []


def config_with(composed: dict[str, DictConfig], key: str) -> DictConfig:
    """A copy of the first composed config that has ``key`` (the default one for a key that a
    user adds)."""
    for cfg in composed.values():
        if key in config_keys(cfg):
            return copy.deepcopy(cfg)
    return copy.deepcopy(composed[""])


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_each_check_refuses_its_bad_value_with_one_line_naming_the_key(composed, key):
    cfg = config_with(composed, key)
    OmegaConf.update(cfg, key, BAD_VALUES[key], merge=False, force_add=True)
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    message = str(refused.value)
    assert message.startswith(key) and "\n" not in message, message


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (number(above=0), [1e-9, 3], [0, -1, True, "1", float("nan")]),
        (number(at_least=0, below=1), [0, 0.999], [1, -0.001]),
        (integer(minimum=1), [1, 10**6], [0, 1.0, True, "2"]),
        (one_of(True), [True], [1, "true", False]),
        (one_of(-1, "auto"), [-1, "auto"], [True, "-1", 1]),
        (list_of(integer(minimum=1), increasing=True), [[], [60, 120]], [[120, 60], [60, 60], 60]),
    ],
)
def test_checks_accept_the_range_and_nothing_else(check, good, bad):
    assert all(check.accepts(value) for value in good)
    assert not any(check.accepts(value) for value in bad)


def test_messages_say_what_is_expected_and_what_came():
    with pytest.raises(ConfigError, match=r"^optimizer.lr: must be a number > 0, got -1$"):
        SCHEMA["optimizer.lr"]("optimizer.lr", -1)


def test_bad_value_through_the_command_line_exits_2_before_a_run_dir(tmp_path):
    result = run_train(["optimizer.lr=-1"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["lowbit: error: optimizer.lr: must be a number > 0, got -1"]
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


# A key of each group through the entry point's checks in-process (all that train.py runs
# before Hydra starts, as above), in a fraction of the time a new interpreter takes.
PREFLIGHT_CASES = [
    (["trainer.max_epochs=-1"], "trainer.max_epochs: must be an integer >= 0, got -1"),
    (["latency.repeats=0"], "latency.repeats: must be an integer >= 1, got 0"),
    (["scheduler=multistep", "scheduler.gamma=0"], "scheduler.gamma: must be a number in (0, 1]"),
    (["export.threads=0"], "export.threads: must be an integer >= 1, got 0"),
    (["export.openvino=yes"], "export.openvino: must be one of 'auto', true, false, got 'yes'"),
    (["export.format=qlinear"], "export.format: must be one of 'qdq', 'qop', got 'qlinear'"),
    (["export.openvino=true", "export.format=qop"], "export.openvino=true cannot read"),
    (["threads=-2"], "threads: must be null or an integer >= 1, got -2"),
    (["test=maybe"], "test: must be true or false, got 'maybe'"),
    (["callbacks.model_checkpoint.mode=best"], "callbacks.model_checkpoint.mode: must be one of"),
    (["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode: must be null or one of"),
    (["dataset.batch_size=0"], "dataset.batch_size: must be an integer >= 1, got 0"),
    (["model=mobilenetv3_small", "model.dropout=1.5"], "model.dropout: must be a number in [0, 1)"),
    (["quantizer=dorefa", "quant.act_scale=0"], "quant.act_scale: must be a number > 0, got 0"),
    (["detection.iou_threshold=2"], "detection.iou_threshold: must be a number in [0, 1], got 2"),
    (["trainer.accelerator=abacus"], "trainer.accelerator: must be one of 'auto', 'gpu'"),
    (["paths.data_dir="], "paths.data_dir: must be a non-empty string"),
    (["compile=true", "trainer=ddp"], "compile=true is not supported with multi-process"),
]


@pytest.mark.parametrize(
    "args, message", PREFLIGHT_CASES, ids=[" ".join(a) for a, _ in PREFLIGHT_CASES]
)
def test_bad_value_of_each_group_stops_the_preflight(tmp_path, capsys, args, message):
    from lowbit.cli import preflight

    with pytest.raises(SystemExit) as stopped:
        preflight(
            [*args, f"hydra.run.dir={tmp_path}/run", "logger=none"]
            if "logger=wandb" not in args
            else [*args, f"hydra.run.dir={tmp_path}/run"]
        )
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"lowbit: error: {message}"), lines
    assert not (tmp_path / "run").exists()


def test_voc_year_is_taken_as_the_command_line_writes_it():
    """docs/index.md: ``dataset=voc dataset.year=2012``; Hydra reads 2012 as an integer."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", ["model=yolov3_tiny", "dataset=voc", "dataset.year=2012"])
    assert cfg.dataset.year == 2012 and isinstance(cfg.dataset.year, int)
    validate(cfg)
    SCHEMA["dataset.year"]("dataset.year", "2007")
    for bad in (2010, "2010", True, 2012.0, None):
        with pytest.raises(ConfigError, match=r"^dataset.year: must be one of '2007', '2012'"):
            SCHEMA["dataset.year"]("dataset.year", bad)


def test_a_bad_value_in_python_leaves_results_that_claim_no_success(make_cfg, tmp_path):
    from lowbit.train import run

    cfg = make_cfg("optimizer.lr=-1", "logger=none")
    with pytest.raises(ConfigError, match="optimizer.lr: must be a number > 0"):
        run(cfg)
    written = tmp_path / "run" / "results.json"
    assert not written.exists() or json.loads(written.read_text())["status"] != "ok"
