"""One training run from a composed config: check, build, fit, test, measure, record.

``run(cfg)`` is the one function the root ``train.py`` calls; tests and notebooks call it too
with configs from Hydra's compose API. Every check of the user's input happens in
``check_config`` before any data is loaded or any step is taken.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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
    quantize,
)
from lowbit.checkpoints import Interrupted, check_checkpoint
from lowbit.compiled import compile_requested
from lowbit.config import chosen_option, start_kind
from lowbit.data.base import ClassificationData
from lowbit.distributed import ReplicaSync, is_global_zero
from lowbit.errors import ConfigError, one_line
from lowbit.export import save_packed
from lowbit.measure import count_bops, count_macs, measure_latency, model_size
from lowbit.mixed.allocation import allocation_of, check_fits_model
from lowbit.pretrained import InitSource, describe_source, is_set, load_initial_weights
from lowbit.quant.calibrate import calibrate, input_quantizers, reestimate_batchnorm
from lowbit.quant.convert import TARGET_KEY, plan_quantization, scheme_class
from lowbit.quant.integer import ARITHMETIC_VERSION, integer_layers
from lowbit.quant.optim import learned_values
from lowbit.randomness import RandomState
from lowbit.results import (  # noqa: F401  (RESULTS_FILE: tests import it from here)
    PACKED_FILE,
    RESULTS_FILE,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_OK,
    check_writable,
    write_json_atomically,
)
from lowbit.resume import INIT_KEY, checkpoint_to_resume, pin_wandb_run_id
from lowbit.tasks.base import Diverged
from lowbit.tracking import check_logger_config
from lowbit.validation import check_values, validate
from lowbit.wandb_log import dashboard_stage, finish_run, start_dashboard, wandb_logger_of

log = logging.getLogger(__name__)


@dataclass
class Components:
    """Everything ``check_config`` built: reused by the run, so nothing is built twice."""

    datamodule: ClassificationData
    model: nn.Module
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


def check_config(cfg: DictConfig, output_dir: Path | None = None) -> Components:
    """Every check of the user's input, cheapest first; ConfigError with one line on failure."""
    check_values(cfg)  # types and ranges, compile, a quantizer named: no torch needed
    check_logger_config(cfg)  # logger.wandb: only what WandbLogger and wandb.init take
    quant = quant_settings(cfg)
    # an unknown name or _target_ fails before anything is built
    scheme_class(quant["quantizer"], quant.get(TARGET_KEY))
    check_start(cfg)
    if output_dir is not None:
        check_writable(output_dir)
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
    plan_quantization(model, input_shape=datamodule.image_shape, **quant)
    if checkpoint is not None:  # names and shapes against the quantized model, before any data
        check_checkpoint(checkpoint, quantize(cfg, copy.deepcopy(model), datamodule))
    datamodule.check()
    return Components(datamodule, model, init_source=init_source, loaded=loaded)


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


def export_costs(
    model: nn.Module, datamodule, cfg: DictConfig, output_dir: Path
) -> dict[str, float]:
    """The integer ONNX export and what it measures (``lowbit.export.onnx_run.export_model``):
    ``latency/int8_ms`` (ONNX Runtime), ``latency/fp32_ms`` (PyTorch eager, float model),
    ``export/top1_agreement`` (a detector: ``export/map50_int8``) on the val batches the
    trainer validates on (``validation_batches``), timed with the ``latency`` settings. A
    model with an op that has no integer form (a user's own layer) is one warning line: the
    run itself succeeded."""
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
            first_failure = first_failure or StageFailure(name, describe(error))
    return first_failure


def finish_wandb(loggers: list, summary: dict[str, Any], status: str) -> dict[str, Any] | None:
    """Write the summary into the W&B run and finish it (a sweep runs many jobs in one process)."""
    logger = wandb_logger_of(loggers)
    return None if logger is None else finish_run(logger.experiment, summary, status)


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


def run(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train, test and measure one configuration; returns the results written to results.json.

    Raises ConfigError for bad input (before any work), Diverged for a NaN loss, Interrupted
    when SIGTERM or Ctrl-C stopped training (after saving last.ckpt), StageFailed when a stage
    after testing failed (``measuring_stages``; every stage still ran, and results.json keeps
    the metrics measured, with ``failed_stage`` and ``error`` naming the first failure).
    results.json records every outcome with its ``status``. With ``resume``/``ckpt_path``
    training continues from that checkpoint (``lowbit.resume``). Under DDP only global rank 0
    measures and records.
    """
    output_dir = Path(output_dir or cfg.paths.output_dir)
    started = time.time()
    results: dict[str, Any] = {
        "status": STATUS_FAILED,
        "run_name": cfg.get("run_name"),
        "model": chosen_option("model"),
        "dataset": chosen_option("dataset"),
        "quant": OmegaConf.to_container(cfg.quant, resolve=True),
        "seed": cfg.get("seed"),  # the report groups runs that differ only in it
        "metrics": {},
        "run_dir": str(output_dir),
    }
    loggers: list = []
    warnings.filterwarnings("ignore", message=LIGHTNING_LEAFSPEC_NOTICE, category=FutureWarning)
    try:
        validate(cfg)  # the seed among them, before it seeds anything
        compiled = compile_requested(cfg)  # one line on a bad value, before any work
        if cfg.get("seed") is not None:  # before the model is built: it seeds the init
            pl.seed_everything(cfg.seed, workers=True, verbose=False)
        components = check_config(cfg, output_dir)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        keep_freed_memory()  # reuse freed CPU buffers instead of re-faulting them each step
        datamodule, model = components.datamodule, components.model
        init_source = components.init_source
        results["start"] = start_of(cfg)
        if init_source is not None:
            results["init"] = init_source.record()
        quantize(cfg, model, datamodule)
        results["arithmetic"] = arithmetic_record(model)
        allocation = allocation_of(cfg)
        if allocation is not None:  # per-layer weight widths from scripts/allocate.py
            results["allocation"] = allocation.record()
        if components.loaded:  # ranges from the trained model, before any step
            results["calibration"] = calibrate_from_data(cfg, model, datamodule)

        task = build_task(cfg, datamodule, model)
        if cfg.get("channels_last"):
            task.train_channels_last()
        if compiled:
            task.compile_training()
        pin_wandb_run_id(cfg, output_dir, write=is_global_zero())  # a resumed run keeps its id
        loggers = make_loggers(cfg)
        for logger in loggers:
            logger.log_hyperparams(loggable_config(cfg, init_source))
        start_dashboard(loggers)  # W&B: best-of summaries, the run's address printed now
        callbacks = make_callbacks(cfg)
        if not loggers:  # LearningRateMonitor refuses a Trainer without loggers (logger=none)
            callbacks = [
                c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)
            ]
        replica_sync = ReplicaSync()
        callbacks += [RandomState(cfg.get("seed")), replica_sync]
        # Checkpoints are the callbacks group's business: none configured, none written.
        saves_checkpoints = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            logger=loggers or False,
            callbacks=callbacks,
            enable_checkpointing=saves_checkpoints,
        )
        resume_from = checkpoint_to_resume(cfg)
        if resume_from is not None:
            results["resumed_from"] = str(resume_from)
        if is_post_training(cfg):  # PTQ: the calibrated model as it is, validated once
            trainer.validate(task, datamodule=datamodule, verbose=False)
        else:
            trainer.fit(task, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        metrics = results["metrics"]  # filled in place: whatever fails later, these are kept
        metrics.update(
            {
                k: float(v)
                for k, v in trainer.callback_metrics.items()
                if k.startswith(("val/", "train/"))
            }
        )
        if cfg.get("test", True):
            tested = trainer.test(
                task,
                datamodule=datamodule,
                ckpt_path=best_checkpoint(trainer),
                verbose=False,
                weights_only=True,
            )
            metrics.update({k: float(v) for k, v in tested[0].items()})
        if replica_sync.report is not None:
            results["distributed"] = replica_sync.report
        results["task"] = kind_of(task)
        # PACT's alphas, LSQ's steps, LSQ+'s offsets by layer: {"alpha": {...}, "step": {...}}
        results.update({"alpha": {}, **learned_values(task.model)})
        if task.channels_last:  # trained NHWC: the measuring stages and the export see NCHW
            task.model.to(memory_format=torch.contiguous_format)
        failure = None
        if is_global_zero():  # other DDP processes leave measuring and recording to rank 0
            stages = measuring_stages(
                task.model, datamodule, trainer.strategy.root_device, cfg, output_dir
            )
            # W&B: the per-layer table and the files the stages wrote, as artifacts
            stages.append(
                dashboard_stage(loggers, task.model, datamodule.image_shape, output_dir, results)
            )
            failure = run_stages(stages, metrics)
        results["status"] = (
            STATUS_DIVERGED if not all(map(math.isfinite, metrics.values())) else STATUS_OK
        )
        if failure is not None:
            results.update(status=STATUS_FAILED, failed_stage=failure.stage, error=failure.error)
    except Diverged as error:
        results.update(status=STATUS_DIVERGED, error=str(error))
        raise
    except (KeyboardInterrupt, SystemExit) as error:  # how Lightning ends fit on SIGTERM/Ctrl-C
        stopped = Interrupted.from_exception(error, output_dir)
        results.update(status=STATUS_INTERRUPTED, error=str(stopped))
        raise stopped from None
    except BaseException as error:  # bad input or a bug: recorded, then re-raised
        results["error"] = (
            str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
        )
        raise
    finally:
        results["duration_s"] = round(time.time() - started, 2)
        if is_global_zero():  # one record and one W&B run per run, however many processes
            results["wandb"] = finish_wandb(loggers, results["metrics"], results["status"])
            if output_dir.is_dir():
                write_json_atomically(output_dir / RESULTS_FILE, results)
    if "failed_stage" in results:
        raise StageFailed(results)
    return results
