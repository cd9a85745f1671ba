"""Every value a user can set, with its type and range: checked before any work starts.

``SCHEMA`` declares one ``Check`` per key of the composed config (``optimizer.lr``,
``trainer.max_epochs``, ``quant.wbits``, ...), for every option of every config group, in one
table. ``validate(cfg)`` walks the composed config and answers the first value outside its
check with a ``ConfigError`` of one line, ``optimizer.lr: must be a number > 0, got -1``, which
the CLI prints before exiting with status 2 (``lowbit.cli.EXIT_BAD_INPUT``); ``check_config``
calls it before any data is loaded or any model built.

The checks here are the ones every option shares. What depends on one option or on two values
together stays with the code that knows it and runs next, still before any work: a data set's
own constructor (``dataset.image_size`` a multiple of 32 for a detector), the quantizer's
scheme (``quantizer=fp32`` takes no bits below 32), ``build_model`` (``model.num_classes``
against the data). A key that no entry names (a user's own quantizer option, a ``+key`` for
Lightning) is left to the code that takes it; tests/test_validation.py fails when one of
lowbit's own config files has a key without an entry here.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from lowbit.bit_widths import INPUT_BITS, check_bits
from lowbit.compiled import compile_requested
from lowbit.errors import ConfigError, one_line
from lowbit.mixed.allocation import check_allocation

# ---------------------------------------------------------------------------------------------
# Checks: what a value must be, in words, and the test of it.


@dataclass(frozen=True)
class Check:
    """``accepts(value)`` is the test; ``expected`` completes "must be ..." in the error. A
    check whose rule lives with the code it guards (one rule, one place) gives ``rule(key,
    value)`` instead, which raises the ConfigError itself."""

    expected: str
    accepts: Callable[[Any], bool] | None = None
    rule: Callable[[str, Any], None] | None = None
    # True where the check imports other code (a _target_, Lightning's registries, a model's
    # tables): ``validate`` runs these after the others, so that a bad seed or bit width is
    # answered before torch is imported.
    imports: bool = False

    def __call__(self, key: str, value: Any) -> None:
        if self.rule is not None:
            self.rule(key, value)
        elif not self.accepts(value):
            raise ConfigError(f"{key}: must be {self.expected}, got {value!r}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    if maximum is None:
        words = "an integer" if minimum is None else f"an integer >= {minimum}"
    else:
        words = f"an integer in {minimum}..{maximum}"
    return Check(
        words,
        lambda v: (
            is_integer(v)
            and (minimum is None or v >= minimum)
            and (maximum is None or v <= maximum)
        ),
    )


def number(
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> Check:
    """A real number in the interval the bounds give: ``above``/``below`` exclusive,
    ``at_least``/``at_most`` inclusive."""
    low = f"({above:g}" if above is not None else f"[{at_least:g}" if at_least is not None else None
    high = f"{below:g})" if below is not None else f"{at_most:g}]" if at_most is not None else None
    if low and high:
        words = f"a number in {low}, {high}"
    elif low:
        words = f"a number {'>' if above is not None else '>='} {low[1:]}"
    elif high:
        words = f"a number {'<' if below is not None else '<='} {high[:-1]}"
    else:
        words = "a number"

    def accepts(value: Any) -> bool:
        return (
            is_number(value)
            and value == value
            and all(
                (
                    above is None or value > above,
                    at_least is None or value >= at_least,
                    at_most is None or value <= at_most,
                    below is None or value < below,
                )
            )
        )

    return Check(words, accepts)


BOOLEAN = Check("true or false", lambda v: isinstance(v, bool))
TEXT = Check("a string", lambda v: isinstance(v, str))
NON_EMPTY_TEXT = Check("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))


def one_of(*choices: Any) -> Check:
    # bools are ints in Python: true must not pass for 1, nor 1 for true
    def accepts(value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in choices)

    return Check("one of " + ", ".join(map(repr, choices)), accepts)


def optional(check: Check) -> Check:
    return Check(f"null or {check.expected}", lambda v: v is None or check.accepts(v))


def either(*checks: Check) -> Check:
    return Check(
        " or ".join(c.expected for c in checks), lambda v: any(c.accepts(v) for c in checks)
    )


def list_of(check: Check, increasing: bool = False) -> Check:
    words = f"a list, each {check.expected}"

    def accepts(value: Any) -> bool:
        if not isinstance(value, (list, tuple)) or not all(map(check.accepts, value)):
            return False
        return not increasing or all(a < b for a, b in zip(value, value[1:]))

    return Check(words + (", increasing" if increasing else ""), accepts)


MAPPING_OR_NULL = Check("a mapping or null", lambda v: v is None or isinstance(v, dict))


def importable(value: Any) -> bool:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][\w.]*\.\w+", value):
        return False
    from hydra.utils import get_object

    try:
        get_object(value)
    except Exception:  # any failure to import is "not importable"
        return False
    return True


# A class or function for Hydra's instantiate: imported here, so a typo fails before any work.
TARGET = Check("an importable dotted path (package.module.Name)", importable, imports=True)
# Metric keys are split/name (lowbit's STYLE): val/acc, model/size_bytes, latency/int8_ms.
METRIC = Check(
    "a metric name such as val/acc (split/name)",
    lambda v: isinstance(v, str) and re.fullmatch(r"[a-z0-9_]+/[\w./-]+", v) is not None,
)
LOGGED_METRIC = Check(
    "a metric the task logs during training: train/... or val/...",
    lambda v: isinstance(v, str) and re.fullmatch(r"(train|val)/\w+", v) is not None,
)
PROBABILITY = number(at_least=0, at_most=1)
COUNT = integer(minimum=1)  # sizes, epochs, repeats, threads
NON_NEGATIVE_COUNT = integer(minimum=0)  # workers, warm-up runs, seeds


def bit_width(key: str, value: Any) -> None:
    check_bits(key, value)


BITS = Check("an integer bit width 1-16, or 32", rule=bit_width)


def image_bits(key: str, value: Any) -> None:
    bit_width(key, value)
    if value not in INPUT_BITS:
        raise ConfigError(
            f"{key}: must be 2-8 (an integer runtime's uint8 input) or 32 to "
            f"keep the image float, got {value!r}"
        )


def layer_overrides(value: Any) -> bool:
    """null or {module-name pattern: {wbits/abits/gbits: bits}}; the bits and whether a
    pattern matches a layer are checked against the model (``plan_bits``)."""
    return value is None or (
        isinstance(value, dict)
        and all(
            isinstance(pattern, str) and isinstance(bits, dict) for pattern, bits in value.items()
        )
    )


# ---------------------------------------------------------------------------------------------
# Choices that other code defines: read from it, never repeated here.


def lightning_accelerators() -> tuple[str, ...]:
    from pytorch_lightning.accelerators import AcceleratorRegistry

    # "gpu" and "auto" are the Trainer's own aliases, not registry entries
    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def lightning_strategies() -> tuple[str, ...]:
    from pytorch_lightning.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def lightning_precisions() -> tuple[Any, ...]:
    from lightning_fabric.connector import _PRECISION_INPUT

    def flatten(annotation: Any) -> tuple[Any, ...]:
        args = typing.get_args(annotation)
        return tuple(a for arg in args for a in (flatten(arg) if typing.get_args(arg) else (arg,)))

    return flatten(_PRECISION_INPUT)


def openvino_setting(key: str, value: Any) -> None:
    from lowbit.export.openvino_run import check_openvino_setting

    check_openvino_setting(key, value)


# auto, true or false; true asks whether OpenVINO imports (lowbit.export.openvino_run)
OPENVINO = Check("'auto', true or false", rule=openvino_setting, imports=True)


def export_formats() -> tuple[str, ...]:
    from lowbit.export.onnx_graph import FORMATS

    return FORMATS


def lazy_choice(choices: Callable[[], tuple[Any, ...]], words: str) -> Check:
    """one_of over ``choices()``, asked only when a value is checked (no import at load)."""
    return Check(words, rule=lambda key, value: one_of(*choices())(key, value), imports=True)


def mobilenet_choices(table: str) -> tuple[str, ...]:
    from lowbit.models import mobilenetv3

    return tuple(getattr(mobilenetv3, table))


def voc_year(key: str, value: Any) -> None:
    """A VOC year as the config writes it ("2007") or as Hydra reads ``dataset.year=2012``
    from the command line (an integer); lowbit.data.voc takes either."""
    from lowbit.data.voc import YEARS

    if not (isinstance(value, str) or is_integer(value)) or str(value) not in YEARS:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, YEARS))}, got {value!r}")


def weight_quantizers() -> tuple[str, ...]:
    from lowbit.quant.schemes import WEIGHT_QUANTIZERS

    return tuple(WEIGHT_QUANTIZERS)


def sensitivity_methods() -> tuple[str, ...]:
    from lowbit.mixed.sensitivity import METHODS

    return tuple(METHODS)


def signed_input_modes() -> tuple[str, ...]:
    from lowbit.quant.convert import SIGNED_INPUT_MODES

    return tuple(SIGNED_INPUT_MODES)


# ---------------------------------------------------------------------------------------------
# The schema: every key of conf/, by group, in the order of conf/train.yaml.

DEVICES = either(integer(minimum=1), one_of(-1, "auto"), list_of(integer(minimum=0)))

SCHEMA: dict[str, Check] = {
    # train.yaml
    "seed": optional(NON_NEGATIVE_COUNT),
    "seeds": COUNT,  # sweep/ presets: seeds per configuration (seed=range(0,seeds))
    "fp32_run": NON_EMPTY_TEXT,  # sweep=ptq_vs_qat: the trained FP32 run every job starts from
    "threads": optional(COUNT),
    "compile": BOOLEAN,  # torch.compile the training step (lowbit.compiled)
    "channels_last": BOOLEAN,  # train NHWC (QuantTrainingTask.train_channels_last)
    "group": optional(TEXT),
    "job_type": optional(TEXT),
    "tags": list_of(either(TEXT, integer())),
    "optuna.study": optional(NON_EMPTY_TEXT),  # set by hydra/sweeper=optuna for each trial
    "optuna.trial": optional(NON_NEGATIVE_COUNT),
    "objectives": list_of(METRIC),
    "run_name": NON_EMPTY_TEXT,
    "resume": optional(NON_EMPTY_TEXT),
    "ckpt_path": optional(NON_EMPTY_TEXT),
    "init": optional(NON_EMPTY_TEXT),  # trained weights to start from (lowbit.pretrained)
    # calibration of the activation quantizers after init= (lowbit.quant.calibrate)
    "calibration.method": one_of("minmax", "percentile", "mse"),
    "calibration.percentile": number(above=50, at_most=100),
    "calibration.batches": COUNT,
    "calibration.bn_reestimation": BOOLEAN,
    "test": BOOLEAN,
    # task/ (the data set chooses it): the best checkpoint's metric, and the task's settings
    "monitor": LOGGED_METRIC,
    "task._target_": TARGET,
    "task.loss": Check("a mapping of loss settings", lambda v: isinstance(v, dict)),
    "task.score_threshold": PROBABILITY,
    "task.iou_threshold": PROBABILITY,
    "task.max_detections": COUNT,
    "task.num_drawn": NON_NEGATIVE_COUNT,
    "task.draw_score_threshold": PROBABILITY,
    "task.predictions_dir": NON_EMPTY_TEXT,
    "detection.loss.box_weight": number(at_least=0),
    "detection.loss.objectness_weight": number(at_least=0),
    "detection.loss.class_weight": number(at_least=0),
    "detection.loss.ignore_iou": PROBABILITY,
    "detection.score_threshold": PROBABILITY,
    "detection.iou_threshold": PROBABILITY,
    "detection.max_detections": COUNT,
    "detection.num_drawn": NON_NEGATIVE_COUNT,
    "detection.draw_score_threshold": PROBABILITY,
    "export.onnx": BOOLEAN,
    "export.threads": COUNT,
    "export.openvino": OPENVINO,
    "export.format": lazy_choice(export_formats, "'qdq' or 'qop'"),
    "latency.warmup": NON_NEGATIVE_COUNT,
    "latency.repeats": COUNT,
    # paths/
    "paths.root_dir": NON_EMPTY_TEXT,
    "paths.data_dir": NON_EMPTY_TEXT,
    "paths.log_dir": NON_EMPTY_TEXT,
    "paths.output_dir": NON_EMPTY_TEXT,
    # model/ (num_classes and input_size follow the data set: lowbit.train.build_model)
    "model._target_": TARGET,
    "model.in_channels": COUNT,
    "model.num_classes": optional(COUNT),
    "model.input_size": optional(COUNT),
    "model.arch": lazy_choice(
        lambda: mobilenet_choices("ARCHITECTURES"), "a MobileNetV3 architecture (small, large)"
    ),
    "model.stem": lazy_choice(
        lambda: mobilenet_choices("STEM_STRIDES"), "a MobileNetV3 stem (cifar, imagenet)"
    ),
    "model.width_mult": number(above=0),
    "model.dropout": number(at_least=0, below=1),
    "model.bn_momentum": number(at_least=0, at_most=1),
    # quantizer/ (package quant): bits here; what a method allows at which bits, its scheme
    "quant._target_": TARGET,
    "quant.quantizer": NON_EMPTY_TEXT,
    "quant.wbits": BITS,
    "quant.abits": BITS,
    "quant.gbits": BITS,
    "quant.first_layer_bits": BITS,
    "quant.last_layer_bits": BITS,
    "quant.input_bits": Check("2-8 or 32", rule=image_bits),
    "quant.overrides": Check(
        "null or a mapping of layer-name patterns to {wbits, abits, gbits}", layer_overrides
    ),
    # a file from scripts/allocate.py: per-layer weight widths (lowbit.mixed.allocation)
    "quant.allocation": Check("null or an allocation file", rule=check_allocation),
    "quant.signed_inputs": lazy_choice(signed_input_modes, "auto or never"),
    "quant.requantize_outputs": BOOLEAN,  # lowbit.quant.integer.use_integer_arithmetic
    "quant.act_scale": number(above=0),
    "quant.alpha_init": number(above=0),
    "quant.alpha_decay": optional(number(at_least=0)),
    "quant.alpha_lr_mult": number(above=0),
    "quant.alpha_calibration": optional(number(above=0, at_most=100)),
    "quant.weight_quantizer": lazy_choice(weight_quantizers, "a PACT weight quantizer"),
    "quant.per_channel_weights": BOOLEAN,
    # dataset/
    "dataset._target_": TARGET,
    "dataset.data_dir": TEXT,  # "" for the sets generated in memory
    "dataset.batch_size": COUNT,
    "dataset.num_workers": NON_NEGATIVE_COUNT,
    "dataset.seed": NON_NEGATIVE_COUNT,
    "dataset.download": BOOLEAN,
    "dataset.augment": BOOLEAN,
    "dataset.val_size": NON_NEGATIVE_COUNT,  # torchvision sets: 0 validates on the test split
    "dataset.train_size": COUNT,
    "dataset.test_size": COUNT,
    "dataset.val_fraction": number(above=0, below=1),
    "dataset.test_fraction": number(above=0, below=1),
    "dataset.num_classes": COUNT,
    "dataset.image_size": COUNT,  # a detector's: a multiple of 32 (lowbit.data.detection)
    "dataset.flip": PROBABILITY,
    "dataset.min_objects": NON_NEGATIVE_COUNT,
    "dataset.max_objects": COUNT,
    "dataset.min_object_size": number(above=0, at_most=0.8),
    "dataset.max_object_size": number(above=0, at_most=0.8),
    "dataset.year": Check("a VOC year", rule=voc_year, imports=True),
    "dataset.train_image_set": NON_EMPTY_TEXT,  # which lists a year has: lowbit.data.voc
    "dataset.val_image_set": NON_EMPTY_TEXT,
    "dataset.test_image_set": NON_EMPTY_TEXT,
    "dataset.train_annotation_file": NON_EMPTY_TEXT,
    "dataset.val_annotation_file": NON_EMPTY_TEXT,
    "dataset.train_image_dir": NON_EMPTY_TEXT,
    "dataset.val_image_dir": NON_EMPTY_TEXT,
    # optimizer/: a partial, completed with the model's parameters by the task
    "optimizer._target_": TARGET,
    "optimizer._partial_": one_of(True),
    "optimizer.lr": number(above=0),
    "optimizer.momentum": number(at_least=0, below=1),
    "optimizer.nesterov": BOOLEAN,
    "optimizer.weight_decay": number(at_least=0),
    # scheduler/ (none: no scheduler, a constant learning rate)
    "scheduler": MAPPING_OR_NULL,
    "scheduler._target_": TARGET,
    "scheduler._partial_": one_of(True),
    "scheduler.T_max": NON_NEGATIVE_COUNT,  # 0 only with trainer.max_epochs=0 (check_start)
    "scheduler.milestones": list_of(COUNT, increasing=True),
    "scheduler.gamma": number(above=0, at_most=1),
    # trainer/: pytorch_lightning.Trainer's arguments
    "trainer._target_": TARGET,
    "trainer.accelerator": lazy_choice(lightning_accelerators, "a Lightning accelerator"),
    "trainer.devices": DEVICES,
    "trainer.strategy": lazy_choice(lightning_strategies, "a Lightning strategy"),
    "trainer.max_epochs": NON_NEGATIVE_COUNT,  # 0: post-training quantization (needs init=)
    "trainer.precision": lazy_choice(lightning_precisions, "a Lightning precision"),
    "trainer.log_every_n_steps": COUNT,
    "trainer.gradient_clip_val": optional(number(above=0)),
    "trainer.deterministic": either(BOOLEAN, one_of("warn")),
    "trainer.enable_progress_bar": BOOLEAN,
    "trainer.enable_model_summary": BOOLEAN,
    "trainer.default_root_dir": NON_EMPTY_TEXT,
    # logger/ (none: no tracker; results.json is still written)
    "logger": MAPPING_OR_NULL,
    "logger.wandb._target_": TARGET,
    "logger.wandb.project": NON_EMPTY_TEXT,
    "logger.wandb.entity": optional(NON_EMPTY_TEXT),
    "logger.wandb.name": NON_EMPTY_TEXT,
    "logger.wandb.group": optional(TEXT),
    "logger.wandb.job_type": optional(TEXT),
    "logger.wandb.tags": list_of(either(TEXT, integer())),
    "logger.wandb.extra_tags": list_of(either(TEXT, integer())),
    "logger.wandb.save_dir": NON_EMPTY_TEXT,
    "logger.wandb.mode": optional(one_of("online", "offline", "disabled", "dryrun")),
    # true: the checkpoints at the end of training, "all": each as it is saved (Lightning's)
    "logger.wandb.log_model": either(BOOLEAN, one_of("all")),
    "logger.wandb.notes": optional(TEXT),
    "logger.wandb.prefix": TEXT,
    "logger.wandb.settings": Check(
        "a mapping of wandb.Settings fields", lambda v: isinstance(v, dict)
    ),
    "logger.csv._target_": TARGET,
    "logger.csv.save_dir": NON_EMPTY_TEXT,
    "logger.csv.name": NON_EMPTY_TEXT,
    "logger.tensorboard._target_": TARGET,
    "logger.tensorboard.save_dir": NON_EMPTY_TEXT,
    "logger.tensorboard.name": NON_EMPTY_TEXT,
    # callbacks/ (none: no checkpoints)
    "callbacks": MAPPING_OR_NULL,
    "callbacks.model_checkpoint._target_": TARGET,
    "callbacks.model_checkpoint.dirpath": NON_EMPTY_TEXT,
    "callbacks.model_checkpoint.filename": NON_EMPTY_TEXT,
    "callbacks.model_checkpoint.auto_insert_metric_name": BOOLEAN,
    # a name Lightning never logs would fail at the end of the first epoch
    "callbacks.model_checkpoint.monitor": optional(LOGGED_METRIC),
    "callbacks.model_checkpoint.mode": one_of("min", "max"),
    "callbacks.model_checkpoint.save_top_k": integer(minimum=-1),
    "callbacks.model_checkpoint.save_last": BOOLEAN,
    "callbacks.last_checkpoint._target_": TARGET,
    "callbacks.last_checkpoint.dirpath": NON_EMPTY_TEXT,
    "callbacks.last_checkpoint.filename": NON_EMPTY_TEXT,
    "callbacks.last_checkpoint.monitor": optional(LOGGED_METRIC),
    "callbacks.last_checkpoint.save_top_k": integer(minimum=-1),
    "callbacks.last_checkpoint.enable_version_counter": BOOLEAN,
    "callbacks.save_on_interrupt._target_": TARGET,
    "callbacks.save_on_interrupt.dirpath": NON_EMPTY_TEXT,
    "callbacks.save_on_interrupt.filename": NON_EMPTY_TEXT,
    "callbacks.learning_rate_monitor._target_": TARGET,
    "callbacks.learning_rate_monitor.logging_interval": optional(one_of("step", "epoch")),
    "callbacks.bits_summary._target_": TARGET,
    # allocate.yaml: scripts/allocate.py's own keys (lowbit.mixed)
    "method": lazy_choice(sensitivity_methods, "a sensitivity method"),
    "widths": list_of(either(integer(minimum=1, maximum=16), one_of(32)), increasing=True),
    # a list: one allocation per value, from one scoring pass (lowbit.mixed.allocate)
    "budget.size_kb": optional(either(number(above=0), list_of(number(above=0)))),
    "budget.bops_ratio": optional(either(number(above=0), list_of(number(above=0)))),
    "budget.latency_ms": optional(either(number(above=0), list_of(number(above=0)))),
    "sensitivity.batches": COUNT,
    "sensitivity.batch_size": COUNT,
    "sensitivity.samples": integer(minimum=2),
    "output": optional(NON_EMPTY_TEXT),
}


# ---------------------------------------------------------------------------------------------
# Walking a composed config.


def config_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every key of ``cfg`` as a dotted path, mappings included (``logger``, ``logger.wandb``,
    ``logger.wandb.project``), without resolving any value."""
    keys = []
    for name in cfg.keys():
        key = f"{prefix}{name}"
        keys.append(key)
        node = cfg._get_node(name)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_interpolation():
            keys += config_keys(node, key + ".")
    return keys


def leaf_keys(cfg: DictConfig) -> list[str]:
    """The keys that hold a value: not a mapping with keys of its own (an empty group such as
    ``logger: none`` counts as a value)."""
    keys = config_keys(cfg)
    return [k for k in keys if not any(other.startswith(k + ".") for other in keys)]


def uncovered_keys(cfg: DictConfig) -> list[str]:
    """The value keys of ``cfg`` that ``SCHEMA`` has no check for."""
    return [key for key in leaf_keys(cfg) if key not in SCHEMA]


UNRESOLVED = object()


def resolved_value(cfg: DictConfig, key: str) -> Any:
    """The value at ``key`` as the run will see it (plain Python containers), or UNRESOLVED
    when it cannot be resolved outside Hydra's run: the preflight composes without Hydra's
    runtime (``${hydra:...}`` values such as the run dir), and the run checks them again."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf.errors import InterpolationResolutionError

    try:
        value = OmegaConf.select(cfg, key, throw_on_missing=True)
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except InterpolationResolutionError as error:
        if not HydraConfig.initialized():
            return UNRESOLVED
        raise ConfigError(f"{key}: cannot be resolved ({one_line(error)})") from None
    except Exception as error:  # a ??? value left unset
        raise ConfigError(f"{key}: {one_line(error, max_lines=1)}") from None
    return value


def check_values(cfg: DictConfig, imports: bool = True, plain: bool = True) -> None:
    """The checks of the composed config alone: ``validate``, ``compile`` (refused with DDP,
    for every job of a multirun) and a quantizer named. The command line runs the checks that
    import nothing (``imports=False``) on every job before it imports anything heavy (torch,
    torchvision and Lightning take seconds), so such bad input is answered at once;
    ``check_config`` then runs the rest (``plain=False``), or all of them when it is called
    without the command line (a notebook, a test)."""
    validate(cfg, imports, plain)
    if plain:
        compile_requested(cfg)
        openvino_reads_the_format(cfg)
        if not (cfg.get("quant") or {}).get("quantizer"):
            raise ConfigError("quant.quantizer is missing: choose a method with quantizer=NAME")


def openvino_reads_the_format(cfg: DictConfig) -> None:
    """OpenVINO asked for by name (``export.openvino=true``) reads lowbit's int8 graph only in
    the QDQ form: its QLinearConv reader (2026.4) takes per-output-channel weight scales along
    the wrong axis (docs/export.md), so ``qop`` with ``true`` would measure nothing it asked."""
    export = cfg.get("export") or {}
    if export.get("openvino") is True and export.get("format") == "qop":
        raise ConfigError(
            "export.openvino=true cannot read export.format=qop (OpenVINO reads lowbit's int8 "
            "graph in the qdq form only): use export.format=qdq, or export.openvino=auto"
        )


def validate(cfg: DictConfig, imports: bool = True, plain: bool = True) -> None:
    """ConfigError (one line naming the key, what it must be and what it got) for the first
    value of ``cfg`` outside its check in ``SCHEMA``; keys without an entry are left alone. The
    checks that import code (``Check.imports``) run when ``imports``, the others when
    ``plain``."""
    keys = [
        key
        for key in config_keys(cfg)
        if key in SCHEMA and (imports if SCHEMA[key].imports else plain)
    ]
    # The checks that import nothing first (see Check.imports); within each, the values set
    # directly first, then those that repeat another (${trainer.max_epochs}), so that the
    # error names the key the user set rather than one that copies it.
    for key in sorted(keys, key=lambda key: (SCHEMA[key].imports, is_interpolation(cfg, key))):
        value = resolved_value(cfg, key)
        if value is not UNRESOLVED:
            SCHEMA[key](key, value)


def is_interpolation(cfg: DictConfig, key: str) -> bool:
    parent, _, name = key.rpartition(".")
    node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(name)
    return node._is_interpolation()
