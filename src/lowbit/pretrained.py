"""Starting a run from trained weights: ``init=RUN_DIR``, ``init=FILE``, ``init=torchvision:NAME``.

``init=`` loads model weights only, into the float model before it is quantized, so that every
quantizer starts from them (LSQ's weight steps are set from the loaded weights when the layers
are swapped; activation ranges are calibrated on training batches, ``lowbit.quant.calibrate``).
The optimizer, scheduler, epoch count and best-metric tracking start fresh. That is what
separates it from ``ckpt_path=`` (a whole training state of the same configuration, new run)
and ``resume=`` (the same run, continued).

What ``init=`` takes:
- a run folder: its best checkpoint (``checkpoints/epochNNN.ckpt``, what the run tested), else
  ``checkpoints/last.ckpt``, else its packed file (``model_packed.safetensors``, where
  BatchNorm is stored as its eval affine map: exact for PTQ, a different start for QAT, which
  re-estimates the statistics from its batches);
- a ``.ckpt`` (a Lightning checkpoint of a lowbit run) or a ``.safetensors`` file (lowbit's
  packed format, whose quantized weights load as the values they quantize to, or a plain state
  dict with this model's names);
- ``torchvision:mobilenet_v3_small`` / ``_large``: torchvision's ImageNet weights, mapped onto
  lowbit's MobileNetV3 (``lowbit.models.torchvision_weights``).

A source that was itself quantized loads its weights; its quantizers' state (steps, alphas) is
left out and calibrated again. Every architecture or class-count mismatch is a ConfigError
naming the first layer that differs, except torchvision's 1000-class head, which a data set
with other classes keeps at its own init (said in one line).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.checkpoints import MODEL_PREFIX, load_checkpoint
from lowbit.errors import ConfigError
from lowbit.results import PACKED_FILE, RESULTS_FILE
from lowbit.resume import LAST_CHECKPOINT, WANDB_ID_FILE

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision:"
QUANTIZER_SUFFIX = "_quantizer"  # weight_quantizer, input_quantizer, gradient_quantizer


@dataclass
class InitSource:
    """Where a run's initial weights come from, as results.json and W&B record it."""

    spec: str  # what the user wrote after init=
    kind: str  # "run", "checkpoint", "safetensors", "packed", "torchvision"
    weights_file: str | None = None
    run_dir: str | None = None
    run_name: str | None = None
    run_id: str | None = None  # the source run's W&B id
    quantizer: str | None = None
    bits: str | None = None  # W/A/G of the source run
    metric: str | None = None  # the source run's best val metric, by name
    metric_value: float | None = None
    skipped: list[str] = field(default_factory=list)  # entries kept at their own init

    def record(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value not in (None, [])}


def is_set(value: Any) -> bool:
    return value is not None and str(value) not in ("", "null", "None")


def best_checkpoint_in(run_dir: Path) -> Path | None:
    """The run's best checkpoint (the monitored ModelCheckpoint's ``epochNNN.ckpt``, the one
    with the highest epoch if several), else ``last.ckpt``, else None."""
    last = run_dir / LAST_CHECKPOINT
    best = sorted(p for p in last.parent.glob("*.ckpt") if p.name != last.name)
    if best:
        return best[-1]
    return last if last.is_file() else None


def describe_run(source: InitSource, run_dir: Path) -> None:
    """Fill in the source run's name, W&B id, bits and best val metric from its results.json."""
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        return
    try:
        payload = json.loads(results.read_text())
    except (OSError, ValueError):
        return
    source.run_dir = str(run_dir)
    source.run_name = payload.get("run_name")
    quant = payload.get("quant") or {}
    source.quantizer = quant.get("quantizer")
    if all(k in quant for k in ("wbits", "abits", "gbits")):
        source.bits = f"{quant['wbits']}/{quant['abits']}/{quant['gbits']}"
    wandb = payload.get("wandb")
    if isinstance(wandb, dict) and wandb.get("id"):
        source.run_id = str(wandb["id"])
    elif (run_dir / WANDB_ID_FILE).is_file():
        source.run_id = (run_dir / WANDB_ID_FILE).read_text().strip() or None
    metrics = payload.get("metrics") or {}
    for name in ("val/acc_best", "val/map50_best", "val/acc", "val/map50"):
        if isinstance(metrics.get(name), (int, float)):
            source.metric, source.metric_value = name, float(metrics[name])
            break


def resolve(value: Any) -> InitSource:
    """The source ``init=value`` names, checked without loading it: it exists and holds
    weights. ConfigError with one line otherwise."""
    spec = str(value)
    if spec.startswith(TORCHVISION_PREFIX):
        from lowbit.models.torchvision_weights import check_cached, check_name

        name = spec.removeprefix(TORCHVISION_PREFIX)
        check_name(name)
        return InitSource(spec, "torchvision", weights_file=str(check_cached(name)))
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(
            f"init={spec}: no such file or folder; give a run folder (outputs/runs/<run>), "
            f"a .ckpt, a .safetensors or torchvision:mobilenet_v3_small"
        )
    path = path.resolve()
    if path.is_dir():
        weights = best_checkpoint_in(path)
        kind = "run"
        if weights is None and (path / PACKED_FILE).is_file():
            weights = path / PACKED_FILE
        if weights is None:
            raise ConfigError(
                f"init={spec}: the folder holds no weights ({LAST_CHECKPOINT.parent}/*.ckpt or "
                f"{PACKED_FILE}); give a finished run's folder or a weights file"
            )
        source = InitSource(spec, kind, weights_file=str(weights))
        describe_run(source, path)
        return source
    if path.suffix not in (".ckpt", ".safetensors"):
        raise ConfigError(
            f"init={spec}: a weights file must be a .ckpt or a .safetensors, not {path.suffix!r}"
        )
    source = InitSource(
        spec, "checkpoint" if path.suffix == ".ckpt" else "safetensors", weights_file=str(path)
    )
    # a file inside a run folder (RUN/checkpoints/x.ckpt, RUN/model_packed.safetensors)
    for folder in (path.parent, path.parent.parent):
        if (folder / RESULTS_FILE).is_file():
            describe_run(source, folder)
            break
    return source


def describe_source(value: Any) -> InitSource:
    """The source ``init=value`` names, for the record only (a resumed run, whose weights come
    from its own checkpoint): a source deleted since is recorded as given, never an error."""
    try:
        return resolve(value)
    except ConfigError:
        return InitSource(str(value), "missing")


def safetensors_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict, whether it is lowbit's packed format) of a .safetensors file: a packed
    file's quantized weights as the values they quantize to."""
    from safetensors import safe_open

    from lowbit.export.packing import FORMAT, read_packed

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if FORMAT not in metadata.get("lowbit", ""):
                return {name: file.get_tensor(name) for name in file.keys()}, False
        weights, state = read_packed(path)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(
            f"init={path}: not a readable safetensors file ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:120]})"
        ) from None
    for key, packed in weights.items():
        state[key] = packed.grid.dequantize(packed.codes).reshape(packed.shape).float()
    return state, True


def read_state(source: InitSource, model: nn.Module) -> dict[str, torch.Tensor]:
    """The source's tensors under this model's names (a torchvision model's mapped)."""
    if source.kind == "torchvision":
        from lowbit.models.torchvision_weights import map_state, torchvision_state

        name = source.spec.removeprefix(TORCHVISION_PREFIX)
        return map_state(torchvision_state(name), model.state_dict(), name)
    path = Path(str(source.weights_file))
    if path.suffix == ".ckpt":
        checkpoint = load_checkpoint(path)
        return {
            key.removeprefix(MODEL_PREFIX): tensor
            for key, tensor in checkpoint["state_dict"].items()
            if key.startswith(MODEL_PREFIX)
        }
    state, packed = safetensors_state(path)
    if packed:
        source.kind = "packed" if source.kind != "run" else source.kind
    return state


def is_quantizer_state(key: str) -> bool:
    """A quantizer's own entry (LSQ's step, PACT's alpha): calibrated again, not loaded."""
    return any(part.endswith(QUANTIZER_SUFFIX) for part in key.split(".")[:-1])


def layer_of(key: str) -> str:
    return key.rpartition(".")[0] or key


def check_fits(
    state: dict[str, torch.Tensor], model: nn.Module, source: InitSource
) -> dict[str, torch.Tensor]:
    """The entries of ``state`` that ``model`` (the float model) takes; ConfigError naming the
    first layer that differs. torchvision's head, left out by the mapping, is the one
    exception: it keeps the model's own init."""
    expected = model.state_dict()
    for key, tensor in expected.items():  # the model's order: the first difference is named
        if key not in state:
            if source.kind == "torchvision":
                source.skipped.append(key)
                continue
            raise ConfigError(
                f"init={source.spec} does not fit this model: the first layer that differs is "
                f"{layer_of(key)} ({key} is not in {source.weights_file}); start from a run of "
                f"the same model and data set"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"init={source.spec} does not fit this model: the first layer that differs is "
                f"{layer_of(key)} ({key} has shape {list(state[key].shape)} there and "
                f"{list(tensor.shape)} here: another architecture or number of classes)"
            )
    extra = [k for k in state if k not in expected and not is_quantizer_state(k)]
    if extra:
        raise ConfigError(
            f"init={source.spec} does not fit this model: the first layer that differs is "
            f"{layer_of(extra[0])} (in {source.weights_file}, not in this model); start from a "
            f"run of the same model"
        )
    return {key: state[key] for key in expected if key in state}


def load_initial_weights(model: nn.Module, value: Any) -> InitSource:
    """Load ``init=value`` into the float ``model`` (before ``quantize``); returns its source.
    Every problem is a ConfigError with one line, and the model is left untouched then."""
    source = resolve(value)
    state = check_fits(read_state(source, model), model, source)
    with torch.no_grad():
        model.load_state_dict(state, strict=False)
    if source.skipped:
        log.warning(
            "init=%s: %s kept at this model's own init (%d classes here; the source has other "
            "classes); every other layer is loaded",
            source.spec,
            ", ".join(sorted({layer_of(k) for k in source.skipped})),
            getattr(model, "num_classes", -1),
        )
    return source
