"""Building a run's parts from a composed config: data, model, quantized model, task.

Each part is one ``_target_`` away from its config node (``dataset``, ``model``, ``quant``,
``task``); what a part takes from another (the classes and image size from the data) is added
here, and a bad argument becomes one ``ConfigError`` line. ``lowbit.train`` (a run), the scripts
and ``lowbit.export.onnx_run`` (a finished run's model) all build through this module, which
imports none of them, so the dependencies run one way: entry points -> build -> parts.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lowbit.config import chosen_option
from lowbit.errors import ConfigError, one_line
from lowbit.mixed.allocation import quant_with_allocation
from lowbit.quant import quantize_model
from lowbit.quant.convert import QuantizationPlan, apply_plan, plan_quantization

TASK_KIND = "task"  # the class attribute models, data sets and tasks declare what they do by
DEFAULT_KIND = "classification"  # a user's class without the attribute
# What a task may take from the data set: passed when its constructor names it.
DATA_ARGUMENTS = ("num_classes", "class_names")


def kind_of(part: Any) -> str:
    """ "classification" or "detection": what a model, data set or task class says it does."""
    return getattr(part, TASK_KIND, DEFAULT_KIND)


def build_datamodule(cfg: DictConfig):
    """The data set the ``dataset`` node names; its own checks' ConfigError comes through."""
    try:
        return instantiate(cfg.dataset)
    except ConfigError:
        raise
    except Exception as error:  # a bad argument in the dataset node
        if isinstance(error.__cause__, ConfigError):  # the data set's own check, Hydra-wrapped
            raise error.__cause__ from None
        raise ConfigError(
            f"dataset: cannot build {cfg.dataset.get('_target_')}: {one_line(error)}"
        ) from None


def import_target(node: DictConfig, group: str) -> type:
    target = node.get("_target_")
    try:
        return get_class(target)
    except Exception as error:
        raise ConfigError(f"{group}: cannot import {target}: {one_line(error)}") from None


def task_class(cfg: DictConfig) -> type[pl.LightningModule]:
    """The LightningModule class of the ``task`` node (conf/task/, chosen by the data set)."""
    return import_target(cfg.task, "task")


def check_model_fits_data(cfg: DictConfig, model_class: type, datamodule) -> None:
    """The model must do what the data set's batches are for (classify, detect)."""
    model_kind, data_kind = kind_of(model_class), kind_of(datamodule)
    if model_kind != data_kind:
        model_name = chosen_option("model") or model_class.__name__  # None outside Hydra's run
        dataset_name = chosen_option("dataset") or datamodule.name
        raise ConfigError(
            f"model={model_name} is a {model_kind} model but "
            f"dataset={dataset_name} is a {data_kind} data set: "
            + (
                "use a detection data set such as dataset=shapes_det"
                if model_kind == "detection"
                else "use a detection model such as model=yolov3_tiny"
            )
        )


def check_task_fits_data(cfg: DictConfig, datamodule) -> None:
    """The ``task`` node's LightningModule must train what the data set holds."""
    task = task_class(cfg)
    if kind_of(task) != kind_of(datamodule):
        dataset_name = chosen_option("dataset") or datamodule.name
        raise ConfigError(
            f"the task {task.__name__} is for {kind_of(task)} but "
            f"dataset={dataset_name} is a {kind_of(datamodule)} data set: drop "
            f"task= (the data set chooses its task, conf/task/)"
        )


def build_model(cfg: DictConfig, datamodule) -> nn.Module:
    """The float model for ``datamodule``, ``num_classes`` (and a detector's ``input_size``)
    taken from the data; a conflicting setting or a model for another task is an error."""
    num_classes = datamodule.num_classes
    configured = cfg.model.get("num_classes")
    if configured is not None and configured != num_classes:
        raise ConfigError(
            f"model.num_classes={configured} but the dataset has {num_classes} classes: "
            f"drop model.num_classes (it follows the data) or pick the matching dataset"
        )
    model_class = import_target(cfg.model, "model")
    check_model_fits_data(cfg, model_class, datamodule)
    from_data: dict[str, Any] = {"num_classes": num_classes}
    if kind_of(model_class) == "detection":
        size = datamodule.image_shape[-1]
        configured = cfg.model.get("input_size")
        if configured is not None and configured != size:
            raise ConfigError(
                f"model.input_size={configured} but the dataset's images are {size} pixels: "
                f"drop model.input_size (it follows dataset.image_size)"
            )
        from_data["input_size"] = size
    try:
        return instantiate(cfg.model, **from_data)
    except Exception as error:
        raise ConfigError(
            f"model: cannot build {cfg.model.get('_target_')}: {one_line(error)}"
        ) from None


def quant_settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``quant`` node as ``quantize_model``'s keyword arguments, ``quant.allocation``'s
    widths applied as overrides (``lowbit.mixed.allocation``)."""
    return quant_with_allocation(OmegaConf.to_container(cfg.quant, resolve=True))


def quantization_plan(cfg: DictConfig, model: nn.Module, datamodule) -> QuantizationPlan:
    """The ``quant`` node's plan for ``model``: every check of it, the model untouched."""
    return plan_quantization(model, input_shape=datamodule.image_shape, **quant_settings(cfg))


def quantize(
    cfg: DictConfig, model: nn.Module, datamodule, planned: QuantizationPlan | None = None
) -> nn.Module:
    """``model`` with its layers swapped for the ``quant`` node's quantized ones, in place;
    ``planned``: the plan ``quantization_plan`` made for this model, applied as it is."""
    settings = quant_settings(cfg)
    if planned is None:
        return quantize_model(model, input_shape=datamodule.image_shape, **settings)
    return apply_plan(model, *planned, requantize_outputs=settings.get("requantize_outputs", True))


def build_quantized_model(cfg: DictConfig, datamodule) -> nn.Module:
    return quantize(cfg, build_model(cfg, datamodule), datamodule)


def build_task(cfg: DictConfig, datamodule, model: nn.Module) -> pl.LightningModule:
    """The ``task`` node's LightningModule around ``model``, with the optimizer and scheduler
    factories and what the task takes from the data (``DATA_ARGUMENTS``)."""
    check_task_fits_data(cfg, datamodule)
    accepted = inspect.signature(task_class(cfg)).parameters
    from_data = {name: getattr(datamodule, name) for name in DATA_ARGUMENTS if name in accepted}
    if "class_names" in from_data:
        from_data["class_names"] = list(from_data["class_names"])
    # Plain containers and paths as strings: the task's saved hyperparameters then load back
    # with weights_only=True (``load_from_checkpoint``).
    return instantiate(
        cfg.task,
        model,
        _convert_="all",
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **from_data,
    )
