"""One training run from a composed config: check, build, fit, test, measure, record.

``run(cfg)`` is the one function the root ``train.py`` calls; tests and notebooks call it too
with configs from Hydra's compose API. Every check of the user's input happens in
``check_config`` before any data is loaded or any step is taken.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowbit.allocator import keep_freed_memory
from lowbit.build import (
    build_datamodule,
    build_model,
    build_task,
    check_task_fits_data,
    kind_of,
    quant_settings,
    quantization_plan,
    quantize,
)
from lowbit.checkpoints import AtomicCheckpointIO, Interrupted, check_checkpoint
from lowbit.compiled import compile_requested
from lowbit.config import chosen_option, start_kind
from lowbit.data.base import ClassificationData
from lowbit.data.faults import DataFault, data_fault_of
from lowbit.distributed import ReplicaSync, is_global_zero
from lowbit.errors import ConfigError, one_line
from lowbit.export import save_packed
from lowbit.measure import count_bops, count_macs, measure_latency, model_size
from lowbit.mixed.allocation import allocation_of, check_fits_model
from lowbit.pretrained import InitSource, describe_source, is_set, load_initial_weights
from lowbit.quant.calibrate import calibrate, input_quantizers, reestimate_batchnorm
from lowbit.quant.convert import TARGET_KEY, QuantizationPlan, scheme_class
from lowbit.quant.integer import ARITHMETIC_VERSION, integer_layers
from lowbit.quant.optim import learned_values
from lowbit.randomness import RandomState, capture_global_state, restore_global_state
from lowbit.results import (  # noqa: F401  (RESULTS_FILE: tests import it from here)
    PACKED_FILE,
    RESULTS_FILE,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_OK,
    check_writable,
    read_results,
    write_json_atomically,
)
from lowbit.resume import INIT_KEY, checkpoint_to_resume, how_to_continue, pin_wandb_run_id
from lowbit.startup import FirstStepTime
from lowbit.storage import (
    SpaceNeeded,
    StorageFault,
    fault_advice,
    has_storage_fault,
    space_needed,
    storage_fault_of,
)
from lowbit.sweep.job import in_multirun
from lowbit.tasks.base import Diverged
from lowbit.tracker_guard import tracker_faults
from lowbit.tracking import check_logger_config
from lowbit.validation import check_values
from lowbit.wandb_log import dashboard_stage, finish_run, start_dashboard, wandb_logger_of

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything ``check_config`` built, handed to the run so that nothing is built twice: the
    command line's checks build them for a single run (``lowbit.cli.preflight``) and ``run``
    goes on with them."""

    datamodule: ClassificationData
    model: nn.Module  # float, as built (and loaded, with init=): ``plan`` quantizes it
    plan: QuantizationPlan
    # torch's, NumPy's and Python's generators once the parts were built from the seed: the
    # run goes on from here wherever the parts were built, so its draws do not depend on it
    random_state: dict[str, Any]
    space: SpaceNeeded  # what the run will write (the free-space check, a full disk's message)
    init_source: InitSource | None = None  # where the run's weights came from (init=)
    loaded: bool = False  # loaded into ``model`` now (not a resumed run's): calibrate them


def is_post_training(cfg: DictConfig) -> bool:
    """``trainer.max_epochs=0``: post-training quantization, no training step."""
    return start_of(cfg) == "ptq"


def check_start(cfg: DictConfig) -> None:
    """init= against the other ways a run can start; ConfigError with one line."""
    if is_set(cfg.get(INIT_KEY)) and is_set(cfg.get("ckpt_path")):
        raise ConfigError(
            "init= and ckpt_path= both given: init= loads weights only and starts training "
            "afresh; ckpt_path= restores a whole training state. Choose one"
        )
    if not is_post_training(cfg) and (cfg.get("scheduler") or {}).get("T_max") == 0:
        raise ConfigError("scheduler.T_max must be an integer >= 1 for a run that trains, got 0")
    if is_post_training(cfg) and not is_set(cfg.get(INIT_KEY)):
        raise ConfigError(
            "trainer.max_epochs=0 is post-training quantization and needs trained weights: "
            "add init=RUN_DIR (a finished FP32 run), init=FILE or init=torchvision:NAME"
        )


def check_config(
    cfg: DictConfig, output_dir: Path | None = None, values_checked: bool = False
) -> Components:
    """Every check of the user's input, cheapest first, and the parts built on the way (data,
    float model, quantization plan); ConfigError with one line on failure. ``values_checked``:
    the checks of ``check_values`` that import nothing already ran (the command line runs them
    on every job first), so only those that import code run here."""
    check_values(cfg, plain=not values_checked)  # types and ranges, compile, a quantizer named
    check_logger_config(cfg)  # logger.wandb: only what WandbLogger and wandb.init take
    quant = quant_settings(cfg)
    # an unknown name or _target_ fails before anything is built
    scheme_class(quant["quantizer"], quant.get(TARGET_KEY))
    check_start(cfg)
    if output_dir is not None:
        check_writable(output_dir)
    if cfg.get("seed") is not None:  # before the model is built: it seeds the init
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    model = build_model(cfg, datamodule)
    check_task_fits_data(cfg, datamodule)
    checkpoint = checkpoint_to_resume(cfg)
    init_source, loaded = None, False
    if is_set(cfg.get(INIT_KEY)):
        if checkpoint is None:
            init_source, loaded = load_initial_weights(model, cfg.get(INIT_KEY)), True
        else:  # resumed: the checkpoint has the weights; the source is recorded, not read
            init_source = describe_source(cfg.get(INIT_KEY))
    allocation = allocation_of(cfg)
    if allocation is not None:
        check_fits_model(allocation, model)
    planned = quantization_plan(cfg, model, datamodule)
    if checkpoint is not None:  # names and shapes against the quantized model, before any data
        check_checkpoint(checkpoint, quantize(cfg, copy.deepcopy(model), datamodule, planned))
    datamodule.check()
    return Components(
        datamodule,
        model,
        planned,
        random_state=capture_global_state(),
        space=run_space_needed(cfg, model),
        init_source=init_source,
        loaded=loaded,
    )


def run_space_needed(cfg: DictConfig, model: nn.Module) -> SpaceNeeded:
    """What a run of ``cfg`` writes at most (``lowbit.storage.space_needed``): the checkpoints
    its ModelCheckpoints keep at once (``save_top_k`` each; -1 keeps one per epoch), one more
    while one is replaced, the packed checkpoint and the ONNX export."""
    kept = 0
    for node in (cfg.get("callbacks") or {}).values():
        if node and str(node.get("_target_", "")).endswith("ModelCheckpoint"):
            top_k = int(node.get("save_top_k", 1))
            kept += top_k if top_k >= 0 else int(cfg.trainer.get("max_epochs") or 1)
    optimizer = str((cfg.get("optimizer") or {}).get("_target_", "")).rpartition(".")[2]
    return space_needed(
        model,
        optimizer,
        checkpoints_kept=kept + 1 if kept else 0,
        export_onnx=bool((cfg.get("export") or {}).get("onnx", True)),
    )


def logged_metrics(trainer: pl.Trainer | None) -> dict[str, float]:
    """The ``train/``, ``val/`` and ``test/`` metrics the trainer holds now."""
    if trainer is None:
        return {}
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith(("val/", "train/", "test/"))
    }


def calibrate_from_data(cfg: DictConfig, model: nn.Module, datamodule) -> dict[str, Any]:
    """Every activation quantizer's range from ``calibration.batches`` training batches, and
    BatchNorm re-estimated if asked (``lowbit.quant.calibrate``); what results.json records."""
    settings = OmegaConf.to_container(cfg.calibration, resolve=True)
    record = dict(settings)
    if not input_quantizers(model):  # FP32: nothing to calibrate, the model stays as trained
        return {**record, "quantizers": 0}
    datamodule.setup("fit")
    if settings["bn_reestimation"]:  # first: the ranges are then those of the corrected model
        record["batchnorm_layers"] = reestimate_batchnorm(
            model, datamodule.train_dataloader(), settings["batches"]
        )
    observed = calibrate(
        model,
        datamodule.train_dataloader(),
        method=settings["method"],
        percentile=settings["percentile"],
        batches=settings["batches"],
    )
    record["quantizers"] = len(observed)
    return record


def make_loggers(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("logger") or {}).values()]


def make_callbacks(cfg: DictConfig) -> list:
    return [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]


def loggable_config(cfg: DictConfig, init_source: InitSource | None = None) -> dict[str, Any]:
    """The whole composed config, resolved, with ``quantizer`` and the model's and data set's
    option names (``model_name``, ``dataset_name``) also at the top for W&B filters, and where
    the weights came from (``init_source``: path, run name and id, its val metric)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config["quantizer"] = cfg.quant.quantizer
    config["model_name"], config["dataset_name"] = chosen_option("model"), chosen_option("dataset")
    config["start"] = start_of(cfg)
    config["arithmetic"] = ARITHMETIC_VERSION  # the report pools no runs of different arithmetic
    if init_source is not None:
        config["init_source"] = init_source.record()
    return config


def arithmetic_record(model: nn.Module) -> dict[str, Any]:
    """What results.json says of the run's arithmetic (``lowbit.quant.integer``): its version,
    the layers that evaluate in integers, and the 8-bit DoReFa weight grid."""
    return {
        "version": ARITHMETIC_VERSION,
        "integer_layers": integer_layers(model),
        "dorefa_8bit_weights": "narrow range: 255 levels, codes -127..127",
    }


def start_of(cfg: DictConfig) -> str:
    """How the run starts: "ptq", "init" or "scratch" (``lowbit.config.start_kind``)."""
    return start_kind((cfg.get("trainer") or {}).get("max_epochs"), cfg.get(INIT_KEY))


def measure_costs(
    model: nn.Module, input_shape: tuple[int, ...], device: torch.device, cfg: DictConfig
) -> dict[str, float]:
    """Parameters, size limit, MACs, BOPs and latency of the fake-quant model on ``device``."""
    size = model_size(model)
    macs = sum(count_macs(model, input_shape).values())
    bops = sum(count_bops(model, input_shape).values())
    latency = measure_latency(model.to(device), input_shape, **cfg.get("latency", {}))
    return {
        "model/params": size.params,
        "model/size_limit_bytes": size.size_limit_bytes,
        "model/size_fp32_bytes": size.size_fp32_bytes,
        "model/macs": macs,
        "model/bops": bops,
        "latency/ms": latency["ms"],
        "latency/threads": latency["threads"],
    }


def pack_costs(model: nn.Module, output_dir: Path) -> dict[str, float]:
    """The measured size: the packed checkpoint written into ``output_dir``, and its ratio to
    the fp32 size. A model without an exact packed form is logged and has no measured size."""
    try:
        packed = save_packed(model, output_dir / PACKED_FILE)
    except NotImplementedError as error:  # 1-bit DoReFa (Eq. 7): no exact packed form yet
        log.warning("no packed checkpoint, so no measured model/size_bytes: %s", error)
        return {}
    size_bytes = packed.stat().st_size
    return {
        "model/size_bytes": size_bytes,
        "model/compression": model_size(model).size_fp32_bytes / size_bytes,
    }


def export_costs(model: nn.Module, datamodule, cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The integer ONNX export and what it measures (``lowbit.export.onnx_run.export_model``):
    ``latency/int8_ms`` (ONNX Runtime), ``latency/fp32_ms`` (PyTorch eager, float model), the
    OpenVINO latencies where it is installed, ``latency/best_float_ms`` with its path and
    ``latency/int8_speedup``, ``export/top1_agreement`` (a detector: ``export/map50_int8``) on
    the val batches the trainer validates on (``validation_batches``), timed with the
    ``latency`` settings. A model with an op that has no integer form (a user's own layer) is
    one warning line: the run itself succeeded."""
    settings = cfg.get("export") or {}
    if not settings.get("onnx", True):
        return {}
    from lowbit.export.onnx_graph import UnsupportedModel
    from lowbit.export.onnx_run import THREADS, export_model, validation_batches

    latency = cfg.get("latency") or {}
    try:
        return export_model(
            model.cpu(),
            datamodule,
            output_dir,
            threads=int(settings.get("threads", THREADS)),
            warmup=int(latency.get("warmup", 10)),
            repeats=int(latency.get("repeats", 50)),
            decoding=OmegaConf.to_container(cfg.detection, resolve=True)
            if cfg.get("detection")
            else None,
            # the batches the run validated on: a fast_dev_run checks the export on one batch
            max_batches=validation_batches(cfg.get("trainer"), len(datamodule.val_dataloader())),
            openvino=settings.get("openvino", "auto"),
            form=settings.get("format"),
        )
    except UnsupportedModel as error:
        log.warning("no integer ONNX export: %s", error)
        return {}


Stage = tuple[str, Callable[[], dict[str, float]]]


@dataclass(frozen=True)
class StageFailure:
    """Which stage failed and how, as results.json records it."""

    stage: str
    error: str  # "<ExceptionType>: <message>", one line
    fault: StorageFault | None = None  # a fault of the storage (a full disk), not a bug


class StageFailed(RuntimeError):
    """A stage after testing failed (``run_stages``). Training and testing succeeded, and
    ``results`` (what results.json holds) keeps every metric measured before and besides it."""

    def __init__(self, results: dict[str, Any]):
        super().__init__(f"the {results['failed_stage']} stage failed: {results['error']}")
        self.results = results


def measuring_stages(
    model: nn.Module, datamodule, device: torch.device, cfg: DictConfig, output_dir: Path
) -> list[Stage]:
    """The work after testing, as named stages in the order they run. Each needs only the
    trained model, never another stage's result, so a failed stage does not stop the next one:
    the model is still packed when its latency could not be measured, and exported when it
    could not be packed. The export comes last since it leaves the model on the CPU."""
    return [
        ("measure", lambda: measure_costs(model, datamodule.image_shape, device, cfg)),
        ("pack", lambda: pack_costs(model, output_dir)),
        ("export", lambda: export_costs(model, datamodule, cfg, output_dir)),
    ]


def describe(error: Exception) -> str:
    """``Type: message`` on one line, as results.json's ``error`` holds it."""
    message = one_line(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def run_stages(stages: list[Stage], metrics: dict[str, float]) -> StageFailure | None:
    """Runs every stage, adding what each measures to ``metrics``, so that no failure loses the
    metrics of the others; returns the first failure (each one's traceback goes to the log)."""
    first_failure = None
    for name, measure in stages:
        try:
            metrics.update(measure())
        except Exception as error:
            log.exception("the %s stage failed; the metrics measured so far are kept", name)
            fault = storage_fault_of(error)
            first_failure = first_failure or StageFailure(name, describe(error), fault)
    return first_failure


def finish_wandb(loggers: list, summary: dict[str, Any], status: str) -> dict[str, Any] | None:
    """Write the summary into the W&B run and finish it (a sweep runs many jobs in one process)."""
    logger = wandb_logger_of(loggers)
    return None if logger is None else finish_run(logger, summary, status)


def best_checkpoint(trainer: pl.Trainer) -> str | None:
    """The best checkpoint's file by the task's monitor (the ModelCheckpoint that has one; the
    monitor-less one writes last.ckpt), or None to test the weights training ended with."""
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.best_model_path:
            return callback.best_model_path
    return None


# Lightning's pytree helper builds torch's deprecated LeafSpec on every optimizer step and says
# so in a FutureWarning about its own code: nothing a lowbit user can act on, so runs hide it.
LIGHTNING_LEAFSPEC_NOTICE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def print_results_line(results: dict[str, Any]) -> None:
    """The results as one JSON line on stdout, where results.json cannot be written."""
    print(json.dumps(results, default=str, sort_keys=True), flush=True)


def write_results(
    output_dir: Path, results: dict[str, Any], space: SpaceNeeded | None
) -> StorageFault | None:
    """results.json into ``output_dir``; when the storage refuses even that, the results go to
    stdout as one JSON line instead (nothing measured is lost), and the fault is returned."""
    try:
        write_json_atomically(output_dir / RESULTS_FILE, results)
        return None
    except StorageFault as fault:
        fault.advice = fault_advice(fault, output_dir, space) + (
            f"; {RESULTS_FILE} could not be written, so the results are on stdout as one JSON line"
        )
        if "failed_stage" not in results:
            results.update(status=STATUS_FAILED, failed_stage="results", error=fault.advice)
        if not has_storage_fault(results):
            results.setdefault("faults", []).append(fault.record())
        print_results_line(results)
        return fault


@dataclass
class RunState:
    """What the stages of one run share with its error handling and its record: the results
    being filled in (results.json), the stage under way, and what the record needs to finish
    (the loggers, the trainer's metrics, the space the run needs)."""

    output_dir: Path
    results: dict[str, Any]
    stage: str = "setup"  # the stage a fault stopped, as results.json names it
    space: SpaceNeeded | None = None
    loggers: list = field(default_factory=list)
    trainer: pl.Trainer | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.results["metrics"]


def new_results(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """results.json as a run starts: ``failed`` until a stage says otherwise."""
    return {
        "status": STATUS_FAILED,
        "run_name": cfg.get("run_name"),
        "model": chosen_option("model"),
        "dataset": chosen_option("dataset"),
        "quant": OmegaConf.to_container(cfg.quant, resolve=True),
        "seed": cfg.get("seed"),  # the report groups runs that differ only in it
        "metrics": {},
        "run_dir": str(output_dir),
    }


def set_up(cfg: DictConfig, state: RunState, components: Components | None) -> Components:
    """The checked parts (built here unless the command line's checks hand them over), the
    model quantized by their plan and, when it starts from trained weights, calibrated."""
    if components is None:
        components = check_config(cfg, state.output_dir)
    else:  # built by the command line's checks, which could not know the run's folder
        check_writable(state.output_dir)
    restore_global_state(components.random_state)
    state.space = components.space
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    keep_freed_memory()  # reuse freed CPU buffers instead of re-faulting them each step
    results = state.results
    results["start"] = start_of(cfg)
    if components.init_source is not None:
        results["init"] = components.init_source.record()
    quantize(cfg, components.model, components.datamodule, components.plan)
    results["arithmetic"] = arithmetic_record(components.model)
    allocation = allocation_of(cfg)
    if allocation is not None:  # per-layer weight widths from scripts/allocate.py
        results["allocation"] = allocation.record()
    if components.loaded:  # ranges from the trained model, before any step
        results["calibration"] = calibrate_from_data(cfg, components.model, components.datamodule)
    return components


def training_task(cfg: DictConfig, parts: Components) -> pl.LightningModule:
    """The task's LightningModule around the quantized model, in the layout and compiled form
    the config asks for."""
    task = build_task(cfg, parts.datamodule, parts.model)
    if cfg.get("channels_last"):
        task.train_channels_last()
    if compile_requested(cfg):
        task.compile_training()
    return task


def start_tracking(cfg: DictConfig, state: RunState, init_source: InitSource | None) -> None:
    """The loggers, with the run's config; W&B's best-of summaries and address now."""
    pin_wandb_run_id(cfg, state.output_dir, write=is_global_zero())  # a resumed run keeps its id
    state.loggers = make_loggers(cfg)
    for logger in state.loggers:
        logger.log_hyperparams(loggable_config(cfg, init_source))
    start_dashboard(state.loggers)


@dataclass
class Probes:
    """lowbit's callbacks whose readings the record takes after training."""

    first_step: FirstStepTime
    replica_sync: ReplicaSync = field(default_factory=ReplicaSync)


def make_trainer(cfg: DictConfig, state: RunState, probes: Probes) -> pl.Trainer:
    """Lightning's Trainer from the ``trainer`` node, with the configured callbacks, lowbit's
    own and checkpoints written whole or not at all (``lowbit.storage``)."""
    callbacks = make_callbacks(cfg)
    if not state.loggers:  # LearningRateMonitor refuses a Trainer without loggers (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    callbacks += [RandomState(cfg.get("seed")), probes.replica_sync, probes.first_step]
    # Checkpoints are the callbacks group's business: none configured, none written.
    saves_checkpoints = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
    state.trainer = instantiate(
        cfg.trainer,
        logger=state.loggers or False,
        callbacks=callbacks,
        enable_checkpointing=saves_checkpoints,
        plugins=[AtomicCheckpointIO()],
    )
    return state.trainer


def train(
    cfg: DictConfig,
    task: pl.LightningModule,
    trainer: pl.Trainer,
    datamodule,
    state: RunState,
    probes: Probes,
) -> None:
    """Fit (or, for post-training quantization, validate once), from the checkpoint of
    ``resume``/``ckpt_path`` if any; the metrics it logged go into the results."""
    state.stage = "train"
    results = state.results
    resume_from = checkpoint_to_resume(cfg)
    earlier: dict[str, float] = {}
    if resume_from is not None:
        results["resumed_from"] = str(resume_from)
        # what the run measured before it stopped (a fault after its last epoch): kept where
        # the resumed part does not measure it again, e.g. val/ when no epoch is left
        if (state.output_dir / RESULTS_FILE).is_file():
            earlier = read_results(state.output_dir / RESULTS_FILE).get("metrics") or {}
    if is_post_training(cfg):  # PTQ: the calibrated model as it is, validated once
        trainer.validate(task, datamodule=datamodule, verbose=False)
    else:
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    startup = probes.first_step.record()
    if startup is not None:
        results["startup"] = startup
        log.info("first training step %.1f s after the process started", startup["first_step_s"])
    state.metrics.update(logged_metrics(trainer))
    for key, value in earlier.items():
        if key.startswith(("train/", "val/")):
            state.metrics.setdefault(key, value)


def evaluate_on_test_split(
    cfg: DictConfig, task: pl.LightningModule, trainer: pl.Trainer, datamodule, state: RunState
) -> None:
    """The test split on the best checkpoint by the task's monitor (``test=false``: none)."""
    state.stage = "test"
    if not cfg.get("test", True):
        return
    tested = trainer.test(
        task,
        datamodule=datamodule,
        ckpt_path=best_checkpoint(trainer),
        verbose=False,
        weights_only=True,
    )
    state.metrics.update({k: float(v) for k, v in tested[0].items()})


def record_trained_model(task: pl.LightningModule, state: RunState, probes: Probes) -> None:
    """What the trained model learned (PACT's alphas, LSQ's steps, LSQ+'s offsets by layer),
    the task's kind and the replicas' agreement; the model back in NCHW for the stages after."""
    results = state.results
    if probes.replica_sync.report is not None:
        results["distributed"] = probes.replica_sync.report
    results["task"] = kind_of(task)
    results.update({"alpha": {}, **learned_values(task.model)})
    if task.channels_last:  # trained NHWC: the measuring stages and the export see NCHW
        task.model.to(memory_format=torch.contiguous_format)


def measure(
    cfg: DictConfig, task: pl.LightningModule, trainer: pl.Trainer, datamodule, state: RunState
) -> None:
    """The stages after testing (``measuring_stages``, then W&B's per-layer table and
    artifacts), each on its own, on global rank 0; the run's status from what they found."""
    failure = None
    if is_global_zero():  # other DDP processes leave measuring and recording to rank 0
        model, output_dir = task.model, state.output_dir
        stages = measuring_stages(model, datamodule, trainer.strategy.root_device, cfg, output_dir)
        stages.append(
            dashboard_stage(state.loggers, model, datamodule.image_shape, output_dir, state.results)
        )
        failure = run_stages(stages, state.metrics)
    # every number finite; a few metrics are words (``latency/best_float_path``)
    finite = all(
        math.isfinite(value) for value in state.metrics.values() if isinstance(value, (int, float))
    )
    state.results["status"] = STATUS_OK if finite else STATUS_DIVERGED
    if failure is not None:
        state.results.update(status=STATUS_FAILED, failed_stage=failure.stage, error=failure.error)
        if failure.fault is not None:
            state.results["error"] = fault_advice(failure.fault, state.output_dir, state.space)
            state.results.setdefault("faults", []).append(failure.fault.record())


def record_fault(
    fault: StorageFault | DataFault, error: BaseException, state: RunState
) -> StorageFault | DataFault:
    """A fault of the storage or the data: its one line (``advice``) and its record, with every
    metric the trainer holds kept."""
    for key, value in logged_metrics(state.trainer).items():
        state.metrics.setdefault(key, value)
    if isinstance(fault, StorageFault):
        fault.advice = fault_advice(fault, state.output_dir, state.space)
    else:
        fault.advice = f"{fault.line()}; restore the file, {how_to_continue(state.output_dir)}"
    state.results.update(failed_stage=state.stage, error=fault.advice)
    state.results.setdefault("faults", []).append(fault.record())
    return fault


def run(
    cfg: DictConfig, output_dir: str | Path | None = None, components: Components | None = None
) -> dict[str, Any]:
    """Train, test and measure one configuration; returns the results written to results.json.

    ``components``: what ``check_config`` built for this ``cfg`` (the command line's checks hand
    them over); without them the run checks and builds them itself.

    Raises ConfigError for bad input (before any work), Diverged for a NaN loss, Interrupted
    when SIGTERM or Ctrl-C stopped training (after saving last.ckpt), StorageFault or
    DataFault for a fault of the output folder or the data (``lowbit.storage``,
    ``lowbit.data.faults``), StageFailed when a stage after testing failed
    (``measuring_stages``; every stage still ran). results.json records every outcome with its
    ``status``, and keeps the metrics measured, with ``failed_stage`` and ``error`` naming the
    first failure. With ``resume``/``ckpt_path`` training continues from that checkpoint
    (``lowbit.resume``). Under DDP only global rank 0 measures and records.
    """
    output_dir = Path(output_dir or cfg.paths.output_dir)
    state = RunState(output_dir, new_results(cfg, output_dir))
    started = time.time()
    results_fault: StorageFault | None = None
    warnings.filterwarnings("ignore", message=LIGHTNING_LEAFSPEC_NOTICE, category=FutureWarning)
    try:
        parts = set_up(cfg, state, components)
        task = training_task(cfg, parts)
        start_tracking(cfg, state, parts.init_source)
        # a job of a multirun shares the process with the jobs before it: timed from its start
        probes = Probes(FirstStepTime(started if in_multirun() else None))
        trainer = make_trainer(cfg, state, probes)
        train(cfg, task, trainer, parts.datamodule, state, probes)
        evaluate_on_test_split(cfg, task, trainer, parts.datamodule, state)
        record_trained_model(task, state, probes)
        measure(cfg, task, trainer, parts.datamodule, state)
    except Diverged as error:
        state.results.update(status=STATUS_DIVERGED, error=str(error))
        raise
    except (KeyboardInterrupt, SystemExit) as error:  # how Lightning ends fit on SIGTERM/Ctrl-C
        stopped = Interrupted.from_exception(error, output_dir)
        state.results.update(status=STATUS_INTERRUPTED, error=str(stopped))
        raise stopped from None
    except BaseException as error:  # bad input, a fault of the storage or the data, or a bug
        # a data file's fault first: its OSError (EIO, EACCES) is the data's, not the output's
        fault = data_fault_of(error) or storage_fault_of(error)
        if fault is not None:  # one line for the user, every metric measured so far kept
            raise record_fault(fault, error, state) from error
        state.results["error"] = (
            str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
        )
        raise
    finally:
        results = state.results
        results["duration_s"] = round(time.time() - started, 2)
        if is_global_zero():  # one record and one W&B run per run, however many processes
            results["wandb"] = finish_wandb(state.loggers, results["metrics"], results["status"])
            # a W&B service that died mid-run: the run went on without it (lowbit.tracker_guard)
            results.setdefault("faults", []).extend(tracker_faults(state.loggers))
            if output_dir.is_dir():
                results_fault = write_results(output_dir, results, state.space)
            elif state.stage != "setup":  # the folder went away mid-run: nothing is lost
                print_results_line(results)
                print(
                    f"lowbit: error: the run folder {output_dir} is gone, so {RESULTS_FILE} "
                    f"could not be written: the results are on stdout as one JSON line",
                    file=sys.stderr,
                )
    if results_fault is not None:
        raise results_fault
    if "failed_stage" in state.results:
        raise StageFailed(state.results)
    return state.results
