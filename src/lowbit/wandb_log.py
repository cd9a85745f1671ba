"""What a run puts on its W&B page besides Lightning's metric curves.

- When the run starts: its address (the URL, or the offline folder that ``wandb sync`` takes) is
  printed, and the best of each validation score is kept in the summary through
  ``define_metric`` (``val/acc`` -> ``{"max": ..., "last": ...}``; ``val/loss`` keeps its min).
- After the stages: the per-layer table ``model/layers`` (kind, W/A/G bits, signedness,
  parameters, MACs, the bytes each layer takes in the packed file, the learned alpha or step)
  and the model files as artifacts of type ``model``: ``packed-<run id>``
  (model_packed.safetensors), ``onnx-int8-<run id>`` (model_int8.onnx) and, where OpenVINO
  ran, ``onnx-int8-openvino-<run id>`` (model_int8_openvino.onnx, the same integers in
  OpenVINO's form), each with the quantization settings and the metrics as metadata; where
  the export measured latencies, the table ``latency/runtimes`` (runtime, precision, ms: ONNX
  Runtime, PyTorch and OpenVINO, int8 and float, ``lowbit.export.onnx_run.runtime_latencies``).
- At the end: the final metrics and the status in the summary; ``scripts/export.py`` later
  reopens the same run (``update_run_summary``) to add what it measured, with its
  ``latency/runtimes`` table.
- Each of these goes through the logger's guard (``lowbit.tracker_guard``): once W&B's service
  is gone, they are skipped and the run goes on without W&B.
- Detection runs log their first validation images with W&B's native boxes
  (``lowbit.detection.wandb_boxes``) instead of drawn ones, so that the viewer hides classes and
  filters by score.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.distributed import is_global_zero
from lowbit.export.onnx_run import INT8_FILE, OPENVINO_INT8_FILE, runtime_latencies
from lowbit.measure.summary import describe_layer
from lowbit.quant.convert import quantizable_layers
from lowbit.quant.functional import FULL_PRECISION
from lowbit.quant.modules import QuantizedLayer
from lowbit.quant.optim import learned_values
from lowbit.results import PACKED_FILE, RESULTS_FILE, STATUS_OK
from lowbit.tracker_guard import guarded, tracked_run

# Higher is better for scores, lower for losses; the summary keeps the best and the last value.
BEST_OF = {
    "val/acc": "max",
    "val/acc_top5": "max",
    "val/map50": "max",
    "val/map": "max",
    "val/loss": "min",
}
STEP_METRIC = "trainer/global_step"  # the x axis Lightning's WandbLogger gives every metric
LAYER_TABLE_KEY = "model/layers"
ALLOCATION_TABLE_KEY = "model/allocation"  # quant.allocation's weight widths (lowbit.mixed)
RUNTIMES_TABLE_KEY = "latency/runtimes"  # runtime x precision latencies (onnx_run, #31)
RUNTIMES_COLUMNS = ["runtime", "precision", "ms"]
# The files a finished run holds (lowbit.train writes them) and their artifacts' name stems.
ARTIFACT_FILES = {
    "packed": PACKED_FILE,
    "onnx-int8": INT8_FILE,
    "onnx-int8-openvino": OPENVINO_INT8_FILE,  # written where OpenVINO ran (openvino_form)
}
ARTIFACT_TYPE = "model"
SAFETENSORS_LENGTH_BYTES = 8  # a safetensors file opens with its JSON header's length


def wandb_logger_of(loggers: list):
    """The run's W&B logger among its loggers, or None (its ``experiment`` is the W&B run)."""
    from pytorch_lightning.loggers import WandbLogger

    return next((logger for logger in loggers if isinstance(logger, WandbLogger)), None)


def run_mode(run) -> str:
    """``online``, ``offline`` or ``disabled`` (logger.wandb.mode=disabled: nothing recorded)."""
    return "disabled" if run.disabled else "offline" if run.offline else "online"


def address(run) -> str:
    """Where the run is seen: its URL online, or ``offline, <folder>`` for ``wandb sync``."""
    mode = run_mode(run)
    if mode == "offline":
        return f"offline, {Path(run.dir).parent}; upload it with: wandb sync {Path(run.dir).parent}"
    return "disabled, nothing is recorded" if mode == "disabled" else str(run.url)


# -- start ------------------------------------------------------------------------------------


def define_best_metrics(run, prefix: str = "") -> None:
    """The summary keeps each score's best and last value, not only the last (``BEST_OF``)."""
    for name, best in BEST_OF.items():
        run.define_metric(
            f"{prefix}-{name}" if prefix else name,
            summary=f"{best},last",
            step_metric=STEP_METRIC,
            step_sync=True,
        )


def start_dashboard(loggers: list) -> None:
    """At the start of a run, before training: best-of summaries and the run's address printed
    (a long run can be watched from its first epoch). Nothing without a W&B logger."""
    logger = wandb_logger_of(loggers)
    if logger is None or not is_global_zero():
        return
    run = tracked_run(logger)
    if run is None:  # W&B failed to start: the run goes on without it (lowbit.tracker_guard)
        return
    # Lightning joins its ``prefix`` option and the key with "-" (WandbLogger.log_metrics).
    guarded(logger, define_best_metrics, run, getattr(logger, "_prefix", ""))
    print(f"lowbit: W&B run {run.name} ({run.id}): {address(run)}", flush=True)


# -- the per-layer table ----------------------------------------------------------------------


def packed_bytes_by_key(path: Path) -> dict[str, int]:
    """Bytes of data each state-dict key takes in a packed file (lowbit.export.packing): its
    codes and per-channel scale (``packed/<key>/...``) or its float tensor (``state/<key>``),
    from the safetensors header's offsets, so they add up to the file's payload exactly."""
    with open(path, "rb") as file:
        length = int.from_bytes(file.read(SAFETENSORS_LENGTH_BYTES), "little")
        header = json.loads(file.read(length))
    sizes: dict[str, int] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start_byte, end_byte = entry["data_offsets"]
        kind, _, rest = name.partition("/")
        key = rest.rpartition("/")[0] if kind == "packed" else rest
        sizes[key] = sizes.get(key, 0) + end_byte - start_byte
    return sizes


def grid_signed(quantizer, tensor: torch.Tensor | None = None) -> bool | None:
    """Whether the quantizer's integer grid holds negative codes; None when it has none (float,
    or a user's quantizer that states no grid)."""
    try:
        grid = quantizer.grid(tensor)
    except (NotImplementedError, TypeError):  # no grid stated, or one that needs a tensor
        return None
    return None if grid is None else bool(grid.signed)


def layer_rows(
    model: nn.Module, input_shape: tuple[int, ...], packed_path: Path | None
) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of the per-layer table, one row per Conv2d/Linear.

    ``params`` and ``packed_bytes`` count the layer's tensors (weight, bias, its quantizers'
    learned parameters): ``packed_bytes`` is what they take in ``packed_path`` (codes and
    scales for the weight), None without a packed file. The learned
    values come as one column per kind and role: ``alpha`` / ``step`` / ``offset`` for the
    layer's input quantizer, ``weight_step`` / ... for its weight's (lowbit.quant.optim).
    """
    from lowbit.measure.complexity import count_macs

    macs = count_macs(model, input_shape)
    packed = packed_bytes_by_key(packed_path) if packed_path is not None else None
    learned = learned_values(model)
    learned_columns = [
        column
        for kind in sorted(learned)
        for column in (kind, f"weight_{kind}")
        if any(where.endswith(".weight") == column.startswith("weight_") for where in learned[kind])
    ]
    columns = [
        "layer",
        "kind",
        "wbits",
        "abits",
        "gbits",
        "weight_signed",
        "input_signed",
        "params",
        "macs",
        "packed_bytes",
        *learned_columns,
    ]
    rows = []
    for name, layer in quantizable_layers(model):
        quantized = isinstance(layer, QuantizedLayer)
        bits = (layer.wbits, layer.abits, layer.gbits) if quantized else (FULL_PRECISION,) * 3
        own_bytes = (
            None
            if packed is None
            else sum(size for key, size in packed.items() if key.startswith(f"{name}."))
        )
        values = []
        for column in learned_columns:
            kind = column.removeprefix("weight_")
            where = f"{name}.weight" if column.startswith("weight_") else name
            values.append(learned[kind].get(where))
        rows.append(
            [
                name,
                describe_layer(layer),
                *bits,
                grid_signed(layer.weight_quantizer, layer.weight.detach()) if quantized else None,
                grid_signed(layer.input_quantizer) if quantized else None,
                sum(p.numel() for p in layer.parameters()),
                macs.get(name, 0),
                own_bytes,
                *values,
            ]
        )
    return columns, rows


# -- after the stages -------------------------------------------------------------------------


def artifact_metadata(results: dict[str, Any]) -> dict[str, Any]:
    """What an artifact carries from results.json: the quantization settings and the metrics."""
    return {
        "quant": results.get("quant"),
        "run_name": results.get("run_name"),
        "metrics": dict(results.get("metrics") or {}),
    }


def log_artifacts(run, output_dir: Path, metadata: dict[str, Any]) -> list[str]:
    """The run's model files as artifacts of type ``model``; returns the names logged (a file
    a stage did not write, such as the packed file of 1-bit DoReFa, is left out)."""
    import wandb

    logged = []
    for stem, file_name in ARTIFACT_FILES.items():
        path = output_dir / file_name
        if not path.is_file():
            continue
        artifact = wandb.Artifact(
            f"{stem}-{run.id}",
            type=ARTIFACT_TYPE,
            metadata=metadata,
            description=f"{file_name} of run {run.name}",
        )
        artifact.add_file(str(path), name=file_name)
        run.log_artifact(artifact)
        logged.append(artifact.name)
    return logged


def log_run_outputs(
    loggers: list,
    model: nn.Module,
    input_shape: tuple[int, ...],
    output_dir: Path,
    results: dict[str, Any],
) -> dict[str, float]:
    """The per-layer table and the artifacts (module docstring); a stage of ``lowbit.train``,
    so it measures nothing and returns no metrics. Skipped once W&B is lost; a failure of
    W&B itself loses it (``lowbit.tracker_guard``) rather than failing the stage."""
    import wandb

    logger = wandb_logger_of(loggers)
    if logger is None or getattr(logger, "lost", False):
        return {}
    run = logger.experiment
    packed = output_dir / ARTIFACT_FILES["packed"]
    columns, rows = layer_rows(model, input_shape, packed if packed.is_file() else None)
    table = wandb.Table(columns=columns, data=rows)
    guarded(logger, run.log, {LAYER_TABLE_KEY: table})
    allocation = results.get("allocation")
    if allocation:
        widths = [[name, bits] for name, bits in allocation["wbits"].items()]
        allocation_table = wandb.Table(columns=["layer", "wbits"], data=widths)
        guarded(logger, run.log, {ALLOCATION_TABLE_KEY: allocation_table})
    guarded(logger, log_runtime_table, run, results.get("metrics") or {})
    guarded(logger, log_artifacts, run, output_dir, artifact_metadata(results))
    return {}


def log_runtime_table(run, metrics: dict[str, Any]) -> bool:
    """The runtime x precision latencies as the table ``latency/runtimes``; False (nothing
    logged) for a run whose export measured none."""
    import wandb

    rows = runtime_latencies(metrics)
    if rows:
        run.log({RUNTIMES_TABLE_KEY: wandb.Table(columns=RUNTIMES_COLUMNS, data=rows)})
    return bool(rows)


def dashboard_stage(
    loggers: list,
    model: nn.Module,
    input_shape: tuple[int, ...],
    output_dir: Path,
    results: dict[str, Any],
) -> tuple[str, Callable[[], dict[str, float]]]:
    """``log_run_outputs`` as a named stage for ``lowbit.train.run_stages``: it runs after the
    pack and export stages that write the files it logs, and a failure is recorded like theirs."""
    return ("wandb", lambda: log_run_outputs(loggers, model, input_shape, output_dir, results))


# -- end --------------------------------------------------------------------------------------


def final_summary(metrics: dict[str, Any], status: str) -> dict[str, Any]:
    """What the run's summary gets at the end: every metric and the status, except the scores
    whose best and last value ``define_best_metrics`` already keeps (writing the last value
    over them would drop the best)."""
    return {**{k: v for k, v in metrics.items() if k not in BEST_OF}, "status": status}


def run_record(run) -> dict[str, Any]:
    """What results.json records of the W&B run (``scripts/export.py`` reopens the run from
    that); read from the run's settings, so a lost service still leaves it."""
    return {
        "id": run.id,
        "name": run.name,
        "project": run.project,
        "entity": run.entity or None,
        "mode": run_mode(run),
        "dir": str(Path(run.dir).parent),  # the offline-run-* folder that `wandb sync` takes
        "url": run.url if run_mode(run) == "online" else None,
    }


def close_run(run, metrics: dict[str, Any], status: str) -> None:
    """Write the final summary, tag a failed run with its status, finish it."""
    run.summary.update(final_summary(metrics, status))
    if status != STATUS_OK:
        run.tags = tuple(run.tags or ()) + (status,)
    run.finish(exit_code=0 if status == STATUS_OK else 1)


def finish_run(logger, metrics: dict[str, Any], status: str) -> dict[str, Any] | None:
    """``close_run`` on the logger's W&B run, through its guard (a lost W&B run is left as
    it is); returns ``run_record``."""
    run = tracked_run(logger)
    if run is None:  # W&B failed to start: nothing to finish, nothing to record
        return None
    info = run_record(run)
    guarded(logger, close_run, run, metrics, status)
    return info


# -- after the run: scripts/export.py ---------------------------------------------------------


def recorded_run(run_dir: Path) -> dict[str, Any] | None:
    """The W&B run of a finished run folder: results.json's ``wandb`` record, with the id from
    ``wandb_id.txt`` (kept from the run's start, lowbit.resume); None for a run without W&B."""
    from lowbit.resume import WANDB_ID_FILE

    recorded = json.loads((run_dir / RESULTS_FILE).read_text()).get("wandb")
    if not recorded:
        return None
    id_file = run_dir / WANDB_ID_FILE
    if id_file.is_file() and id_file.read_text().strip():
        recorded = {**recorded, "id": id_file.read_text().strip()}
    return recorded


def update_run_summary(run_dir: Path, recorded: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Reopen the W&B run that ``recorded`` (``recorded_run``) describes, in the mode it ran
    in, add ``metrics`` to its summary and finish it; returns its address.

    An offline run is continued offline (resume="allow": a new offline-run-* folder with the
    same id, which ``wandb sync`` merges into the run); an online one must exist (resume=
    "must"), and goes offline like a new run would when W&B cannot be reached. WANDB_MODE wins.
    """
    import wandb

    from lowbit.tracking import DEFAULT_SETTINGS, choose_wandb_mode

    mode = os.environ.get("WANDB_MODE") or recorded.get("mode") or None
    mode = choose_wandb_mode(None if mode == "online" else mode)
    run = wandb.init(
        id=recorded["id"],
        project=recorded.get("project"),
        entity=recorded.get("entity"),
        name=recorded.get("name"),
        dir=str(run_dir),
        mode=mode,
        resume="must" if mode == "online" else "allow",
        settings=wandb.Settings(**DEFAULT_SETTINGS),
    )
    try:
        run.summary.update(metrics)
        log_runtime_table(run, metrics)
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        # the re-exported ONNX as the next version of its artifact (an unchanged file is not)
        log_artifacts(run, run_dir, artifact_metadata(results))
        where = address(run)
    finally:
        run.finish()
    return where
