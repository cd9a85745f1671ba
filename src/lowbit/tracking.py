"""Experiment tracking: a W&B logger that never blocks, and the run's results.json.

W&B mode is decided before ``wandb.init`` so that a run never waits on a login prompt or a
network time-out: WANDB_MODE (or the ``mode`` argument) wins; otherwise online needs both
credentials (WANDB_API_KEY or a netrc entry) and a W&B server that answers within a few
seconds, and anything less runs offline, to be uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import json
import netrc
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import wandb
from pytorch_lightning.loggers import WandbLogger

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
) -> WandbLogger:
    """A Lightning WandbLogger whose mode is settled up front (see the module docstring).

    ``job_type`` None is a single run's "train" (a sweep's jobs say "sweep": lowbit.sweep.job).
    """
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        id=id,
        group=group,
        job_type=job_type or "train",
        tags=list(dict.fromkeys([*map(str, tags), *map(str, extra_tags)])),  # in order, once
        entity=entity,
        mode=choose_wandb_mode(mode),
        # wandb's console capture would duplicate what Lightning already prints.
        settings=wandb.Settings(console="off", silent=True),
    )


def write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
