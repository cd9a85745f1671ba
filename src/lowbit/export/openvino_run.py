"""OpenVINO, the second runtime: the ONNX exports compiled for its CPU plugin (optional).

OpenVINO reads ONNX directly, lowbit's integer QDQ graphs included. Where it is
installed (the ``deploy`` extra, which ``test`` and so ``make install`` include) and
``export.openvino`` is ``auto`` (the default) or ``true`` (required: refused before training
where it is missing), each run's export also runs in it; ``lowbit.export.onnx_run`` measures
the runners here beside ONNX Runtime's, interleaved in the same blocks:

- ``openvino_int8``: ``model_int8_openvino.onnx``, the integer graph's codes in OpenVINO's form
  (``lowbit.export.openvino_form``; from the ``qdq`` graph whatever ``export.format`` is: its
  QLinearConv reader takes per-tensor weight scales only), at the plugin's default settings,
  as a user deploys it (left out, with one log line, where OpenVINO cannot read it);
- ``openvino_fp32``: ``model_fp32.onnx`` with ``INFERENCE_PRECISION_HINT=f32``;
- ``openvino_default``: ``model_fp32.onnx`` at the plugin's default precision: bf16 on CPUs
  with AMX or AVX-512 BF16, f32 elsewhere (``default_precision`` says which it chose).

Each is compiled for batch-1 latency: ``PERFORMANCE_HINT=LATENCY``, one stream, and
``INFERENCE_NUM_THREADS`` set to the export's threads, as ORT's sessions are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lowbit.errors import ConfigError, one_line

if TYPE_CHECKING:  # onnxruntime loads on first use only
    from lowbit.export.onnx import Runner

log = logging.getLogger(__name__)

PACKAGE = "openvino"
INSTALL_HINT = 'pip install -e ".[deploy]"'
# OpenVINO's element type names, as lowbit's precision labels (ORT and PyTorch say fp32).
PRECISION_LABELS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


@dataclass
class OpenVINORunners:
    """The three compiled models (module docstring) and the precision the default one runs in."""

    runners: dict[str, Runner]
    default_precision: str  # "bf16", "fp32" or "fp16"


SETTINGS = ("auto", True, False)  # export.openvino: where installed, required, never


def openvino_missing() -> str | None:
    """Why OpenVINO cannot be used here (one line), or None when it can."""
    try:
        import openvino  # noqa: F401
    except ImportError as error:
        return f"{PACKAGE} cannot be imported ({error}); {INSTALL_HINT} installs it"
    return None


def check_openvino_setting(key: str, value) -> None:
    """``export.openvino`` (``SETTINGS``); ConfigError with one line for another value, or for
    true where OpenVINO cannot be imported: before any work, not after training."""
    if not any(value == choice and type(value) is type(choice) for choice in SETTINGS):
        raise ConfigError(f"{key}: must be one of 'auto', true, false, got {value!r}")
    missing = openvino_missing() if value is True else None
    if missing is not None:
        raise ConfigError(f"{key}=true but {missing}")


def compiled_model(
    core, path: str | Path, threads: int, precision: str | None = None, perf_count: bool = False
):
    """The ONNX model at ``path`` compiled for batch-1 latency on the CPU plugin (module
    docstring); ``precision``: the ``INFERENCE_PRECISION_HINT`` (None: the plugin's default);
    ``perf_count``: per-node counters on (``get_profiling_info``; scripts/deployed_profile.py)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": threads}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    if perf_count:
        config["PERF_COUNT"] = True
    return core.compile_model(core.read_model(str(path)), "CPU", config)


def chosen_precision(compiled) -> str:
    """The precision a compiled model's float ops run in: "bf16", "fp32" or "fp16"."""
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return PRECISION_LABELS.get(chosen, chosen)


def compiled_runner(core, path: str | Path, threads: int, precision: str | None = None):
    """(Runner, the precision its float ops run in) of the ONNX model at ``path`` on the CPU
    plugin (``compiled_model``)."""
    compiled = compiled_model(core, path, threads, precision)
    request = compiled.create_infer_request()
    outputs = compiled.outputs

    def run(x):
        result = request.infer({0: x})
        return [result[output] for output in outputs]

    return run, chosen_precision(compiled)


def openvino_wanted(setting: bool | str) -> bool:
    """Whether ``export.openvino`` (``SETTINGS``) runs OpenVINO here: true, or "auto" where it
    is installed."""
    return setting is True or (setting == "auto" and openvino_missing() is None)


def openvino_runners(
    int8_path: Path, fp32_path: Path, threads: int, setting: bool | str = "auto"
) -> OpenVINORunners | None:
    """The runners of the module docstring; None where ``setting`` (``export.openvino``) is
    false, or is "auto" and OpenVINO is not installed (one log line says so, and why)."""
    if setting is False:
        return None
    missing = openvino_missing()
    if missing is not None:
        if setting is True:  # the config check said otherwise before training
            raise RuntimeError(f"export.openvino=true but {missing}")
        log.info("OpenVINO columns skipped: %s", missing)
        return None
    import openvino

    core = openvino.Core()
    runners = {}
    try:
        runners["openvino_int8"], _ = compiled_runner(core, int8_path, threads)
    except RuntimeError as error:  # OpenVINO's reader refuses the graph (module docstring)
        log.info(
            "OpenVINO int8 column skipped: OpenVINO cannot read %s: %s",
            Path(int8_path).name,
            one_line(error, max_lines=6),
        )
    runners["openvino_fp32"], _ = compiled_runner(core, fp32_path, threads, precision="f32")
    runners["openvino_default"], precision = compiled_runner(core, fp32_path, threads)
    return OpenVINORunners(runners, precision)


__all__ = [
    "OpenVINORunners",
    "check_openvino_setting",
    "chosen_precision",
    "compiled_model",
    "compiled_runner",
    "openvino_missing",
    "openvino_runners",
    "openvino_wanted",
]
