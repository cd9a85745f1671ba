"""Experiment tracking: a W&B logger that never blocks, and whose loss never ends the run.

W&B mode is decided before ``wandb.init`` so that a run never waits on a login prompt or a
network time-out: WANDB_MODE (or the ``mode`` argument) wins; otherwise online needs both
credentials (WANDB_API_KEY or a netrc entry) and a W&B server that answers within a few
seconds, and anything less runs offline, to be uploaded later with ``wandb sync``.

Every option of Lightning's ``WandbLogger`` and of ``wandb.init`` can be set in
``conf/logger/wandb.yaml`` (or as ``+logger.wandb.KEY=VALUE``) and is passed through; a key that
neither takes is one ConfigError line before any work (``check_wandb_options``).
"""

from __future__ import annotations

import difflib
import inspect
import netrc
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import wandb
from omegaconf import OmegaConf
from pytorch_lightning.loggers import WandbLogger

from lowbit.errors import ConfigError, one_line
from lowbit.tracker_guard import GuardedWandbLogger

DEFAULT_WANDB_HOST = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0


def wandb_host() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(wandb_host()).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    url = urlparse(wandb_host())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_wandb_mode(requested: str | None = None) -> str:
    """``online``, ``offline`` or ``disabled``: the requested one, WANDB_MODE, or what works."""
    mode = requested or os.environ.get("WANDB_MODE")
    if mode:
        return "offline" if mode == "dryrun" else mode
    if has_wandb_credentials() and wandb_reachable():
        return "online"
    return "offline"


# Options lowbit's factory takes itself, besides those it passes on.
OWN_OPTIONS = {"_target_", "extra_tags", "mode"}
# Lightning's arguments that are objects or aliases, not settings a config file can hold.
NOT_SETTABLE = {"self", "kwargs", "experiment"}
# lowbit's defaults for wandb.Settings: W&B's console capture would duplicate what Lightning
# already prints, and its banner lines would interleave with lowbit's own.
DEFAULT_SETTINGS = {"console": "off", "silent": True}


def settable_options() -> set[str]:
    """Every key ``logger.wandb`` may hold: Lightning's WandbLogger's arguments, wandb.init's
    (WandbLogger passes any other keyword to wandb.init) and lowbit's own."""
    lightning = set(inspect.signature(WandbLogger.__init__).parameters)
    init = set(inspect.signature(wandb.init).parameters)
    return (lightning | init | OWN_OPTIONS) - NOT_SETTABLE


def check_wandb_options(options: Mapping[str, Any]) -> None:
    """One ConfigError line for a key that neither WandbLogger nor wandb.init takes, or for
    ``settings`` that ``wandb.Settings`` refuses; called before any work (``check_config``)."""
    known = settable_options()
    unknown = sorted(set(options) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = (
            f"did you mean {close[0]}?"
            if close
            else f"known: {', '.join(sorted(known - {'_target_'}))}"
        )
        raise ConfigError(
            f"logger.wandb.{unknown[0]}: not an option of Lightning's WandbLogger "
            f"or of wandb.init; {hint}"
        )
    settings = options.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise ConfigError(
            f"logger.wandb.settings: must be a mapping of wandb.Settings fields, got {settings!r}"
        )
    try:
        wandb.Settings(**{**DEFAULT_SETTINGS, **settings})
    except Exception as error:  # pydantic's ValidationError, several lines
        raise ConfigError(f"logger.wandb.settings: {one_line(error, max_lines=3)}") from None


def check_logger_config(cfg: Any) -> None:
    """``check_wandb_options`` on the composed config's ``logger.wandb`` node, if it has one."""
    node = (cfg.get("logger") or {}).get("wandb")
    if node is not None:
        check_wandb_options(
            {key: plain(node.get(key)) if key == "settings" else None for key in node.keys()}
        )


def plain(value: Any) -> Any:
    """A config node as plain Python (lists, dicts), as wandb.init expects; others as they are."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def sweep_unique_name(name: str) -> str:
    """``name`` with the job number in a multirun (``nin-dorefa-w4a4g32-digits-job3``), since
    jobs that differ only in a seed, a learning rate or any key outside the name would share
    it; a single run keeps ``name``."""
    from lowbit.sweep.job import hydra_settings, in_multirun

    return f"{name}-job{hydra_settings().job.num}" if in_multirun() else name


class MonitoredCheckpointsWandbLogger(GuardedWandbLogger):
    """Lightning's WandbLogger, guarded against a W&B service that dies mid-run
    (``lowbit.tracker_guard``), whose ``log_model=true`` uploads the checkpoints of the
    ModelCheckpoint that has a ``monitor`` only, the best one aliased "best". Lightning (2.6)
    gives "best" to the ``best_model_path`` of every ModelCheckpoint, and a monitor-less one
    (lowbit's ``last.ckpt`` writer, conf/callbacks/default.yaml) calls its newest file its best,
    so last.ckpt took the alias too. ``log_model=all`` is Lightning's, unchanged."""

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self._log_model is True and checkpoint_callback.monitor is None:
            return
        super().after_save_checkpoint(checkpoint_callback)


def wandb_logger(
    project: str,
    name: str,
    save_dir: str,
    group: str | None = None,
    job_type: str | None = "train",
    tags: Sequence[str] = (),
    extra_tags: Sequence[str] = (),
    entity: str | None = None,
    mode: str | None = None,
    id: str | None = None,
    settings: Mapping[str, Any] | None = None,
    **options: Any,
) -> WandbLogger:
    """A Lightning WandbLogger whose mode is settled up front (see the module docstring).

    ``job_type`` None is a single run's "train" (a sweep's jobs say "sweep": lowbit.sweep.job).
    ``settings`` are ``wandb.Settings`` fields over lowbit's ``DEFAULT_SETTINGS``; ``options``
    (``log_model``, ``notes``, ``prefix``, ``save_code``, ...) go to WandbLogger, which hands
    what it does not take to wandb.init; those left null keep their library defaults.
    """
    settings, options = plain(settings) or {}, {key: plain(value) for key, value in options.items()}
    check_wandb_options({**options, "settings": settings})
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = MonitoredCheckpointsWandbLogger(
        project=project,
        name=sweep_unique_name(name),
        save_dir=save_dir,
        id=id,
        group=group,
        job_type=job_type or "train",
        tags=list(dict.fromkeys([*map(str, tags), *map(str, extra_tags)])),  # in order, once
        entity=entity,
        mode=choose_wandb_mode(mode),
        settings=wandb.Settings(**{**DEFAULT_SETTINGS, **settings}),
        **{key: value for key, value in options.items() if value is not None},
    )
    if logger._wandb_init.get("anonymous") is None:
        # Lightning passes anonymous=None when unset, and wandb >= 0.19 warns on every run that
        # the setting (any value) has no effect: leave it out unless the user asked for it.
        logger._wandb_init.pop("anonymous", None)
    return logger
