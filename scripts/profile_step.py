"""Where one training step's time goes, per layer and per quantizer, against the FP32 model.

    python scripts/profile_step.py quantizer=dorefa quant.wbits=4 quant.abits=4 quant.gbits=8
    python scripts/profile_step.py model=mobilenetv3_small dataset=cifar10 quantizer=pact --top 20
    python scripts/profile_step.py --threads 1 --repeats 20 quantizer=lsq
    python scripts/profile_step.py --compiled quantizer=dorefa quant.gbits=8   # kernel by kernel

Takes the same overrides as train.py and builds the model as a run would (for the chosen data
set's classes and image size, without loading any data), and its FP32 twin from the same initial
weights. A step is one SGD step of the run's optimizer on a random batch of
``dataset.batch_size`` images: zero_grad, forward, the task's loss, backward, step. The table
lists each layer's compute and each quantizer (weight, activation, gradient) in ms and as a
share of the step, largest first, with the FP32 twin's ms beside; then the totals per kind and
the step. The last line is one JSON object with every row (``lowbit.measure.profile``).
CPU, eager mode; timings move with the machine's load, shares and ratios much less.

``--compiled`` profiles the step as ``compile=true`` trains it instead: one row per kernel
inductor generated (named after the ops it fuses), per lowbit operator and per torch op the
compiled code calls, with the compiled FP32 twin's ms beside, then the totals per kind
(``lowbit.measure.kernels``). Its first run per model compiles from scratch (minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

import lowbit.config  # noqa: F401  (registers the config resolvers)
from lowbit.allocator import keep_freed_memory
from lowbit.build import build_datamodule, build_model, kind_of, quantize
from lowbit.cli import check_group_choices, compose, config_groups, fail
from lowbit.errors import ConfigError
from lowbit.measure.kernels import (
    compiled_step,
    enable_kernel_events,
    format_kernel_table,
    kernel_table,
    profile_kernels,
)
from lowbit.measure.profile import TrainingStep, format_profile, profile_step
from lowbit.overrides import hydra_error_line
from lowbit.quant.modules import use_noise_stream
from lowbit.quant.optim import apply_lr_mult, param_groups


def synthetic_batch(
    datamodule, batch_size: int, generator: torch.Generator, detection: bool
) -> tuple[torch.Tensor, Any]:
    """Random images of the data set's shape, and labels (one box per image for detection)."""
    images = torch.randn(batch_size, *datamodule.image_shape, generator=generator)
    labels = torch.randint(0, datamodule.num_classes, (batch_size,), generator=generator)
    if not detection:
        return images, labels
    side = datamodule.image_shape[-1]
    box = torch.tensor([[side / 4, side / 4, side * 3 / 4, side * 3 / 4]])
    return images, [{"boxes": box.clone(), "labels": labels[i : i + 1]} for i in range(batch_size)]


def task_loss(cfg: DictConfig, model: torch.nn.Module, datamodule):
    """The loss the run's task trains with: cross-entropy, or YOLO's for a detection model."""
    if kind_of(datamodule) != "detection":
        return torch.nn.functional.cross_entropy
    from lowbit.detection.loss import YOLOLoss

    settings = dict((cfg.get("detection") or {}).get("loss") or {})
    yolo = YOLOLoss(model.head_anchors(), model.strides, datamodule.num_classes, **settings)
    return lambda outputs, targets: yolo(outputs, targets).total


def training_step(cfg: DictConfig, datamodule, quantized: bool) -> TrainingStep:
    """The run's model (quantized, or its FP32 twin), optimizer, loss and one random batch; the
    same seed gives both the same initial weights and batch."""
    seed = cfg.get("seed") or 0
    torch.manual_seed(seed)
    model = build_model(cfg, datamodule)
    if quantized:
        model = quantize(cfg, model, datamodule)
        use_noise_stream(model, seed)  # the counter-based Eq. 12 noise, as in training
    model.train()
    optimizer = instantiate(cfg.optimizer)(param_groups(model))
    apply_lr_mult(optimizer)
    batch_size = int(cfg.dataset.get("batch_size", 128))
    inputs, targets = synthetic_batch(
        datamodule,
        batch_size,
        torch.Generator().manual_seed(seed),
        kind_of(datamodule) == "detection",
    )
    if cfg.get("channels_last"):  # as the run trains (QuantTrainingTask.train_channels_last)
        model.to(memory_format=torch.channels_last)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return TrainingStep(model, optimizer, inputs, targets, task_loss(cfg, model, datamodule))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="timed steps of each model, medians reported (default 10)",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=25,
        help="rows shown in the table, largest first (default 25; 0: all)",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="profile the compiled step kernel by kernel (torch.profiler), not layer by layer",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, as for train.py")
    # intermixed: overrides may sit on both sides of an option, as they may for train.py
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0 or args.top < 0:
        fail("--threads and --repeats must be at least 1, --warmup and --top at least 0")
    if args.compiled and args.warmup < 2:
        fail("--compiled needs --warmup of at least 2: the first steps compile")
    try:
        check_group_choices(args.overrides, config_groups())
        try:
            cfg = compose("train", args.overrides)
        except Exception as error:
            raise ConfigError(hydra_error_line(error)) from None
        datamodule = build_datamodule(cfg)
        quantized = training_step(cfg, datamodule, quantized=True)
        fp32 = training_step(cfg, datamodule, quantized=False)
    except ConfigError as error:
        fail(str(error))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # training's allocator setting (lowbit.allocator)
    try:
        if args.compiled:
            enable_kernel_events()  # before the first compile: it changes the generated code
            profiles = profile_kernels(
                {"quantized": compiled_step(quantized), "fp32": compiled_step(fp32)},
                args.warmup,
                args.repeats,
            )
            result = kernel_table(profiles["quantized"], profiles["fp32"])
        else:
            result = profile_step(quantized, fp32, warmup=args.warmup, repeats=args.repeats)
    finally:
        torch.set_num_threads(previous_threads)
    quant = cfg.quant
    result.update(
        model=cfg.model._target_.rsplit(".", 1)[-1],
        dataset=datamodule.name,
        image_shape=list(datamodule.image_shape),
        batch_size=int(quantized.inputs.shape[0]),
        threads=args.threads,
        quantizer=quant.get("quantizer"),
        wbits=quant.get("wbits"),
        abits=quant.get("abits"),
        gbits=quant.get("gbits"),
        keep_freed_memory=kept,
        compiled=args.compiled,
    )
    print(
        f"{result['model']} on {result['dataset']} "
        f"{'x'.join(map(str, datamodule.image_shape))}, batch {result['batch_size']}, "
        f"{result['quantizer']} W{result['wbits']}A{result['abits']}G{result['gbits']}, "
        f"{args.threads} threads: one training step "
        f"({'compiled' if args.compiled else 'eager'}, "
        f"{'NHWC' if cfg.get('channels_last') else 'NCHW'}, CPU)"
    )
    table = format_kernel_table if args.compiled else format_profile
    print(table(result, top=args.top or None))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
