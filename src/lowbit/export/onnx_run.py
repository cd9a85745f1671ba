"""Export a finished run to ONNX and measure it: ``export_run(RUN_DIR)`` (scripts/export.py).

Rebuilds the run's model from ``.hydra/config.yaml`` (data set, model, ``quant``), loads its
weights (``model_packed.safetensors``, the weights the run measured; else its best checkpoint,
else ``last.ckpt``), writes ``model_int8.onnx`` and ``model_fp32.onnx`` into the run dir,
measures them and merges the metrics into ``results.json``:

- ``latency/fp32_ms``: PyTorch eager, the float model (quantizers removed, BN folded), batch 1;
- ``latency/int8_ms``: ONNX Runtime, the integer export, batch 1;
- ``latency/fp32_onnx_ms``: ONNX Runtime, the float export, measured interleaved with int8;
- ``latency/openvino_int8_ms``, ``latency/openvino_fp32_ms``, ``latency/openvino_default_ms``
  (with ``latency/openvino_default_precision``, bf16 where the CPU has it): in OpenVINO,
  interleaved with ORT's runs, where OpenVINO is installed (``openvino_run``; without it one
  log line says these are skipped and why), the float file and ``model_int8_openvino.onnx``,
  the same integer codes in the form OpenVINO fuses best (``openvino_form``);
- ``latency/best_float_ms`` / ``latency/best_float_path`` and ``latency/best_int8_ms`` /
  ``latency/best_int8_path``: the fastest float and int8 of those, with runtime and precision
  ("openvino bf16"); ``latency/int8_speedup``: best float over best int8 (``best_paths``);
  the runtime x precision table of them all is ``runtime_latencies``;
- ``latency/export_threads``: the thread count of them all (torch, ORT and OpenVINO);
- classification: ``export/top1_agreement`` (``export/openvino_top1_agreement``), argmax of
  the integer export in ORT (OpenVINO) vs the fake-quant model on the val set, and from the
  same pass ``export/top1_acc_int8`` (``export/top1_acc_openvino_int8``) and
  ``export/top1_acc_fake_quant``, each one's top-1 accuracy: what deployment does to the
  accuracy, where the agreement says how many answers changed;
- detection: ``export/map50_int8`` (``export/map50_openvino_int8``) and
  ``export/map50_fake_quant``, mAP@0.5 on the val set of the integer export's heads in ORT
  (OpenVINO) and of the fake-quant model's, decoded by the same ``lowbit.detection``
  functions as the training task's (``detection_agreement``);
- ``export/agreement_images``: how many val images the agreement (or the two mAPs) stand on:
  the whole val set, or the batches a run validates on when its trainer limits them
  (``trainer.limit_val_batches``, ``fast_dev_run``; ``validation_batches``);
- ``export/int8_onnx_bytes``: the integer model's file size; ``export/requantized_layers``: how
  many layer outputs the export quantizes where training does not (``onnx_graph``).

The integer export quantizes the image input with the min/max of the first calibration images
of the train split (``CALIBRATION_IMAGES``): it puts the first conv on integers too, which ORT's
own static quantization also does (see ``lowbit.export.onnx``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf
from torch import nn

from lowbit.errors import ConfigError
from lowbit.results import PACKED_FILE, RESULTS_FILE, STATUS_OK, write_json_atomically

if TYPE_CHECKING:  # onnxruntime loads on first use only
    from lowbit.export.onnx import Runner

log = logging.getLogger(__name__)

CONFIG_FILE = Path(".hydra") / "config.yaml"
INT8_FILE, FP32_FILE = "model_int8.onnx", "model_fp32.onnx"
OPENVINO_INT8_FILE = "model_int8_openvino.onnx"  # the same integers in OpenVINO's form
CALIBRATION_IMAGES = 64
THREADS = 2


def finished_run_dir(run_dir: str | Path) -> Path:
    """The run dir, resolved, if it holds a finished run (status ok) with weights; else a
    ConfigError. What export and parity start from."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(
            f"no such run dir {run_dir}: give a run's folder (outputs/runs/<date>_<time>_<name>)"
        )
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{run_dir} is not a lowbit run dir: it has no {CONFIG_FILE}")
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise ConfigError(f"{run_dir} has no {RESULTS_FILE}: the run has not finished")
    try:
        status = json.loads(results.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"{results} cannot be read as JSON") from None
    if status != STATUS_OK:
        raise ConfigError(
            f"{run_dir} ended with status {status!r}: export needs a run that "
            f"finished with status {STATUS_OK!r}"
        )
    if weights_file(run_dir) is None:
        raise ConfigError(f"{run_dir} has neither {PACKED_FILE} nor a checkpoints/*.ckpt")
    return run_dir


def weights_file(run_dir: Path) -> Path | None:
    """The packed weights, else the best checkpoint (epochNNN.ckpt), else last.ckpt."""
    if (run_dir / PACKED_FILE).is_file():
        return run_dir / PACKED_FILE
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    best = [path for path in checkpoints if path.name != "last.ckpt"]
    return (best or checkpoints or [None])[-1]


def load_run_model(run_dir: Path):
    """(quantized model with the run's weights, eval mode; datamodule, set up; config)."""
    import lowbit.config  # noqa: F401  (registers the resolvers the saved config uses)
    from lowbit.build import build_datamodule, build_quantized_model
    from lowbit.checkpoints import MODEL_PREFIX, load_checkpoint
    from lowbit.export.packing import load_packed

    cfg = OmegaConf.load(run_dir / CONFIG_FILE)
    datamodule = build_datamodule(cfg)
    model = build_quantized_model(cfg, datamodule)
    source = weights_file(run_dir)
    if source.suffix == ".safetensors":
        load_packed(source, model)
    else:
        state = load_checkpoint(source)["state_dict"]
        model.load_state_dict(
            {
                name[len(MODEL_PREFIX) :]: tensor
                for name, tensor in state.items()
                if name.startswith(MODEL_PREFIX)
            }
        )
    datamodule.setup()
    return model.eval(), datamodule, cfg


def calibration_images(datamodule, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    dataset = datamodule.train_set
    return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])


@torch.no_grad()
def torch_latency_ms(
    model: nn.Module, input_shape, threads: int, warmup: int = 10, repeats: int = 50
) -> float:
    from lowbit.measure import measure_latency

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure_latency(model, input_shape, warmup=warmup, repeats=repeats)["ms"]
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def detection_agreement(
    model: nn.Module,
    runners: Mapping[str, Runner],
    dataloader,
    decoding: dict[str, Any] | None = None,
) -> dict[str, float]:
    """mAP@0.5 on ``dataloader`` of each runner's heads (an integer export in a runtime) and of
    the fake-quant model's (``"fake_quant"``), in one pass, all decoded by ``lowbit.detection``
    (``decode_heads`` and ``postprocess`` with the run's ``detection`` settings), as the
    training task decodes them."""
    from torchmetrics.detection import MeanAveragePrecision

    from lowbit.detection.decode import decode_heads, postprocess

    settings = {
        key: value
        for key, value in (decoding or {}).items()
        if key in ("score_threshold", "iou_threshold", "max_detections")
    }
    metrics = {
        name: MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
        for name in ("fake_quant", *runners)
    }
    anchors, strides = model.head_anchors(), model.strides
    for images, targets in dataloader:
        x = images.float().numpy()
        heads = {"fake_quant": model(images)}
        heads.update(
            {name: [torch.from_numpy(out) for out in run(x)] for name, run in runners.items()}
        )
        for name, outputs in heads.items():
            detections = postprocess(
                decode_heads(outputs, anchors, strides), image_size=images.shape[-1], **settings
            )
            metrics[name].update(detections, targets)
    return {name: max(float(metric.compute()["map_50"]), 0.0) for name, metric in metrics.items()}


def validation_batches(trainer_settings: Any, loader_batches: int) -> int | None:
    """How many val batches a run with these ``trainer`` settings validates on, as Lightning
    reads them: ``fast_dev_run`` (true: 1, n: n), else ``limit_val_batches`` (an int: that
    many; a fraction: that share of the ``loader_batches``, at least 1). None, all of them,
    also where validation is off (a limit of 0): the export is still checked on the val set."""
    settings = trainer_settings or {}
    fast = settings.get("fast_dev_run")
    if fast:
        return 1 if fast is True else int(fast)
    limit = settings.get("limit_val_batches")
    if not limit or isinstance(limit, bool):
        return None
    if isinstance(limit, int):
        return limit
    return None if limit >= 1.0 else max(1, int(loader_batches * limit))


def counted(batches: Iterable, tally: list[int]) -> Iterator:
    """``batches`` as they are, adding each batch's image count to ``tally[0]``."""
    for batch in batches:
        tally[0] += len(batch[0])
        yield batch


# Where each latency was measured, as ``latency/best_*_path`` names it: runtime and precision.
FLOAT_PATHS = {
    "latency/fp32_ms": "pytorch fp32",
    "latency/fp32_onnx_ms": "onnxruntime fp32",
    "latency/openvino_fp32_ms": "openvino fp32",
    "latency/openvino_default_ms": "openvino {precision}",
}
INT8_PATHS = {"latency/int8_ms": "onnxruntime int8", "latency/openvino_int8_ms": "openvino int8"}


def best_paths(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The fastest float path and the fastest int8 path among the latencies in ``metrics``
    (``FLOAT_PATHS``, ``INT8_PATHS``), and ``latency/int8_speedup``: best float ms over best
    int8 ms (above 1: int8 is worth deploying). Empty when either kind was not measured."""
    precision = metrics.get("latency/openvino_default_precision", "default")
    best = {}
    for kind, paths in (("float", FLOAT_PATHS), ("int8", INT8_PATHS)):
        measured = [
            (metrics[key], label.format(precision=precision))
            for key, label in paths.items()
            if key in metrics
        ]
        if not measured:
            return {}
        best[f"latency/best_{kind}_ms"], best[f"latency/best_{kind}_path"] = min(measured)
    best["latency/int8_speedup"] = best["latency/best_float_ms"] / best["latency/best_int8_ms"]
    return best


def runtime_latencies(metrics: Mapping[str, Any]) -> list[list[Any]]:
    """The runtime x precision table of the latencies in ``metrics``: one row [runtime,
    precision, ms] per path measured (``INT8_PATHS``, ``FLOAT_PATHS``; OpenVINO's default
    precision by name, "bf16"), int8 first; W&B's ``latency/runtimes`` (lowbit.wandb_log)."""
    precision = metrics.get("latency/openvino_default_precision", "default")
    rows = []
    for key, label in {**INT8_PATHS, **FLOAT_PATHS}.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            runtime, kind = label.format(precision=precision).split(" ", 1)
            rows.append([runtime, kind, float(value)])
    return rows


def export_model(
    model: nn.Module,
    datamodule,
    out_dir: str | Path,
    threads: int = THREADS,
    warmup: int = 10,
    repeats: int = 50,
    decoding: dict[str, Any] | None = None,
    max_batches: int | None = None,
    openvino: bool | str = "auto",
    form: str | None = None,
) -> dict[str, Any]:
    """Write model_int8.onnx and model_fp32.onnx of a trained (quantized) model into ``out_dir``
    and measure them in ONNX Runtime and, where it is installed, OpenVINO (module docstring);
    returns the metrics. ``datamodule`` must be set up. ``warmup``/``repeats``: the batch-1
    latency runs; ``decoding``: a detector's ``detection`` settings; ``max_batches``: the val
    batches the agreement runs on (None: all); ``openvino``: ``export.openvino`` ("auto",
    true, false; ``openvino_runners``); ``form``: ``export.format`` of model_int8.onnx ("qdq",
    "qop"; None: ``onnx_graph.DEFAULT_FORMAT``). What train.py calls after training
    (``task.model``, its datamodule, the run dir).
    """
    from lowbit.export.onnx import (
        export_fp32_onnx,
        export_int8_onnx,
        float_model,
        interleaved_latency,
        ort_runner,
        top1_agreements_and_accuracies,
    )
    from lowbit.export.onnx_graph import DEFAULT_FORMAT
    from lowbit.export.openvino_form import NotExact, write_openvino_form
    from lowbit.export.openvino_run import openvino_runners, openvino_wanted
    from lowbit.export.parity import requantized_layers

    out_dir = Path(out_dir)
    model = model.eval()
    shape = tuple(datamodule.image_shape)
    int8 = export_int8_onnx(
        model,
        shape,
        out_dir / INT8_FILE,
        calibration=calibration_images(datamodule),
        form=form or DEFAULT_FORMAT,
    )
    fp32 = export_fp32_onnx(model, shape, out_dir / FP32_FILE)
    runners = {"int8": ort_runner(int8, threads), "fp32_onnx": ort_runner(fp32, threads)}
    if openvino_wanted(openvino):  # the same integers in OpenVINO's form (openvino_form)
        qdq = int8 if (form or DEFAULT_FORMAT) == "qdq" else None
        if qdq is None:
            qdq = export_int8_onnx(
                model, shape, out_dir / OPENVINO_INT8_FILE, calibration_images(datamodule)
            )
        try:
            int8_for_openvino = write_openvino_form(qdq, out_dir / OPENVINO_INT8_FILE)
        except NotExact as error:  # OpenVINO still reads the qdq graph, only slower
            log.info("OpenVINO runs %s as written: %s", qdq.name, error)
            int8_for_openvino = qdq
    else:
        int8_for_openvino = int8
    openvino = openvino_runners(int8_for_openvino, fp32, threads, setting=openvino)
    if openvino is not None:
        runners.update(openvino.runners)
    latency = interleaved_latency(
        runners, shape, threads, warmup=warmup, repeats=repeats, block=max(1, min(25, repeats))
    )
    metrics = {
        "latency/fp32_ms": torch_latency_ms(float_model(model), shape, threads, warmup, repeats),
        **{f"latency/{name}_ms": timing["ms"] for name, timing in latency.items()},
        "latency/export_threads": threads,
        "export/int8_onnx_bytes": int8.stat().st_size,
        "export/requantized_layers": len(requantized_layers(int8)),
    }
    integer = {"int8": runners["int8"]}  # the integer graph in each runtime: its agreement
    if openvino is not None:
        metrics["latency/openvino_default_precision"] = openvino.default_precision
        if "openvino_int8" in runners:
            integer["openvino_int8"] = runners["openvino_int8"]
    metrics.update(best_paths(metrics))
    images = [0]
    batches = counted(itertools.islice(datamodule.val_dataloader(), max_batches), images)
    if getattr(datamodule, "task", "classification") == "detection":
        found = detection_agreement(model, integer, batches, decoding)
        metrics.update({f"export/map50_{name}": value for name, value in found.items()})
    else:
        agreement, accuracy = top1_agreements_and_accuracies(model, integer, batches)
        metrics["export/top1_agreement"] = agreement["int8"]
        if "openvino_int8" in agreement:
            metrics["export/openvino_top1_agreement"] = agreement["openvino_int8"]
        metrics.update({f"export/top1_acc_{name}": value for name, value in accuracy.items()})
    metrics["export/agreement_images"] = images[0]
    return metrics


def export_run(run_dir: str | Path, threads: int = THREADS, write: bool = True) -> dict[str, Any]:
    """Export and measure a finished run (module docstring); returns the metrics it merged.

    ConfigError before any work when the run dir is not a finished run with weights;
    ``UnsupportedModel`` when the model has a layer without an integer form.
    """
    run_dir = finished_run_dir(run_dir)
    model, datamodule, cfg = load_run_model(run_dir)
    detection = cfg.get("detection")
    decoding = OmegaConf.to_container(detection, resolve=True) if detection else None
    metrics = export_model(
        model, datamodule, run_dir, threads, decoding=decoding, form=format_of(cfg)
    )
    if write:
        path = run_dir / RESULTS_FILE
        results = json.loads(path.read_text())
        results.setdefault("metrics", {}).update(metrics)
        results["exported_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomically(path, results)
    return metrics


def format_of(cfg) -> str:
    """The run's ``export.format``; for a run that recorded none, ``qdq``: the only form lowbit
    wrote before the key existed."""
    from lowbit.export.onnx_graph import DEFAULT_FORMAT

    return (cfg.get("export") or {}).get("format") or DEFAULT_FORMAT


PARITY_IMAGES = 256


def validation_images(datamodule, count: int = PARITY_IMAGES) -> torch.Tensor:
    dataset = datamodule.val_set
    return torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))])


def parity_run(
    run_dir: str | Path, threads: int = THREADS, images: int = PARITY_IMAGES
) -> list[dict[str, Any]]:
    """Layer-by-layer parity (``lowbit.export.parity``) of a finished run's integer export
    (written anew into the run dir) against its fake-quant model, on its first val images."""
    from lowbit.export.onnx import export_int8_onnx
    from lowbit.export.parity import layer_parity

    run_dir = finished_run_dir(run_dir)
    model, datamodule, cfg = load_run_model(run_dir)
    shape = tuple(datamodule.image_shape)
    path = export_int8_onnx(
        model,
        shape,
        run_dir / INT8_FILE,
        calibration=calibration_images(datamodule),
        form=format_of(cfg),
    )
    return layer_parity(model, path, validation_images(datamodule, images), threads)


__all__ = [
    "best_paths",
    "export_model",
    "export_run",
    "finished_run_dir",
    "load_run_model",
    "parity_run",
]
