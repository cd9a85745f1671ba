"""``compile=true``: the training step's forward (and so its backward) through torch.compile.

Opt-in; eager is the default. Only the training forward is compiled: validation, test, the
measuring stages and the export run the same module eagerly, and the state dict keeps its keys
(the compiled callable is not a submodule), so checkpoints, resume and packing are unchanged.

Refused, with one line before any work: a value that is not true/false; and multi-process
training (DDP): its gradient hooks and torch.compile's graph capture are not combined here.
Gradient quantization (gbits < 32) compiles too: DoReFa's noise hash has a compiled form that
gives eager's bits (``lowbit.quant.functional``), so a compiled step equals an eager one.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from lowbit.errors import ConfigError

# Inductor's options for every compile lowbit makes (training, the step bench, the kernel
# profile), so that a compiled FP32 twin is compiled as its quantized model is.
# realize_reads_threshold: an element-wise result read by several kernels is stored once it
# reads more than this many buffers (default 4), else recomputed where it is read. The
# backward recomputes each BatchNorm's output from the saved convolution output (mean, invstd,
# weight, bias: 5 reads) for the ReLU's and the activation quantizer's masks; at 4 inductor
# stored it, one extra write and read of a whole activation per layer in the backward kernel.
# At 8 the kernel recomputes it where it reads it (the generated code, checked), and the
# compiled step is faster (docs/performance.md, "Measurements behind code choices").
INDUCTOR_OPTIONS = {"realize_reads_threshold": 8}


def compile_model(model: Any) -> Any:
    """torch.compile(model) with lowbit's inductor options (``INDUCTOR_OPTIONS``)."""
    import torch

    return torch.compile(model, options=dict(INDUCTOR_OPTIONS))


def compile_requested(cfg: DictConfig) -> bool:
    """The ``compile`` key, checked: a bool, and not with more than one training process."""
    value: Any = cfg.get("compile", False)
    if not isinstance(value, bool):
        raise ConfigError(f"compile must be true or false, got {value!r}")
    if value and is_multi_process(cfg):
        raise ConfigError(
            "compile=true is not supported with multi-process training (DDP): "
            "use compile=false, or one device (trainer=default)"
        )
    return value


def is_multi_process(cfg: DictConfig) -> bool:
    trainer = cfg.get("trainer") or {}
    strategy = str(trainer.get("strategy", "") or "")
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1) or 1
    many_devices = (
        devices in (-1, "auto", "-1")
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, (list, tuple)) and len(devices) > 1)
        or (isinstance(devices, str) and devices.isdigit() and int(devices) > 1)
    )
    return "ddp" in strategy or many_devices or int(nodes) > 1
