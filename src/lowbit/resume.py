"""Continuing a run that stopped: ``python train.py resume=RUN_DIR`` (or ``ckpt_path=FILE``).

``resume=RUN_DIR`` continues the run in its own folder: the command line is rebuilt from the
run's saved overrides (``RUN_DIR/.hydra/overrides.yaml``; overrides given now win, e.g. a larger
``trainer.max_epochs``), Hydra writes into RUN_DIR again, training restarts from
``RUN_DIR/checkpoints/last.ckpt`` (weights, PACT alphas and their ``calibrated`` flags, epoch,
optimizer, scheduler and random state: see ``lowbit.randomness``) and W&B continues the same run,
whose id was chosen before W&B started and kept in ``RUN_DIR/wandb_id.txt``. The run's
results.json is written when it finishes, as for any run.

``ckpt_path=FILE`` restores the same training state from any lowbit checkpoint but starts a new
run folder and a new W&B run (the config is the one given on the command line).
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from lowbit.errors import ConfigError
from lowbit.overrides import override_key

RESUME_KEY, CKPT_KEY, INIT_KEY = "resume", "ckpt_path", "init"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
SAVED_OVERRIDES = Path(".hydra") / "overrides.yaml"
WANDB_ID_FILE = "wandb_id.txt"
RUN_DIR_KEY = "hydra.run.dir"


def how_to_continue(run_dir: Path) -> str:
    """The end of a fault's line: ``resume=`` where the run wrote a checkpoint, else the same
    command again."""
    if (Path(run_dir) / LAST_CHECKPOINT).is_file():
        return f"then continue with: python train.py resume={run_dir}"
    return "then run the same command again (no checkpoint was written)"


def names_resume(override: str) -> bool:
    """Whether ``override`` is ``resume=...``. Only its key goes to Hydra's parser: the run
    folder is written as the shell gave it (``~``, ``=``, parentheses), which Hydra's grammar
    refuses until ``resume_overrides`` quotes it."""
    key, equals, _ = override.partition("=")
    return override_key(key + equals) == RESUME_KEY


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value (paths may hold characters Hydra parses)."""
    if "'" in value or "\\" in value:
        raise ConfigError(
            f"the path {value!r} contains a quote or a backslash: move the run to "
            f"a folder without them"
        )
    return f"'{value}'"


def unquoted(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def run_dir_to_resume(value: str) -> Path:
    """The run folder that ``resume=value`` names, checked: it exists and has last.ckpt."""
    run_dir = Path(unquoted(value)).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(
            f"resume={value}: no such run dir; give a run's folder "
            f"(outputs/runs/<date>_<time>_<name>) that holds {LAST_CHECKPOINT}"
        )
    if not (run_dir / LAST_CHECKPOINT).is_file():
        raise ConfigError(
            f"resume={run_dir} has no {LAST_CHECKPOINT} to continue from (the run "
            f"stopped before its first epoch ended, or ran with callbacks=none): "
            f"start it again instead"
        )
    return run_dir


def saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / SAVED_OVERRIDES
    if not path.is_file():
        return []
    saved = OmegaConf.to_container(OmegaConf.load(path))  # YAML, safely parsed: a list of str
    if not isinstance(saved, list) or not all(isinstance(item, str) for item in saved):
        raise ConfigError(f"{path} is not a list of overrides: it was not written by Hydra")
    return saved


def resume_overrides(overrides: list[str], multirun: bool = False) -> list[str] | None:
    """The overrides with ``resume=RUN_DIR`` expanded (module docstring); None without it.

    The saved overrides come first, minus those given again; ``hydra.run.dir`` is set to
    RUN_DIR (also in the processes that Lightning's DDP starts, which see the expanded command
    line and expand it again to the same result).
    """
    resumes = [o for o in overrides if names_resume(o) and override_value(o) not in ("", "null")]
    if not resumes:
        return None
    if len(resumes) > 1:
        raise ConfigError("resume= is given more than once: name one run dir")
    if multirun:
        raise ConfigError(
            "resume= continues one run: drop -m/--multirun (resume each job of a "
            "sweep from its own folder)"
        )
    others = [o for o in overrides if not names_resume(o)]
    if any(override_key(o) == INIT_KEY and override_value(o) not in ("", "null") for o in others):
        raise ConfigError(
            "resume= and init= both given: resume=RUN_DIR continues that run with its own "
            "weights; init= starts a new run from trained weights. Choose one"
        )
    run_dir = run_dir_to_resume(override_value(resumes[0]))
    if any(override_key(o) == CKPT_KEY and override_value(o) not in ("", "null") for o in others):
        raise ConfigError(
            "resume= and ckpt_path= both given: resume=RUN_DIR takes that run's "
            "last.ckpt; ckpt_path=FILE starts a new run from FILE"
        )
    given = [
        f"{RESUME_KEY}={quoted(str(run_dir))}" if names_resume(o) else o
        for o in overrides
        if names_resume(o) or override_key(o) != RUN_DIR_KEY
    ]
    given_keys = {override_key(o) for o in others} - {RUN_DIR_KEY} | {RESUME_KEY, CKPT_KEY}
    kept = [o for o in saved_overrides(run_dir) if override_key(o) not in given_keys]
    return [*kept, *given, f"{RUN_DIR_KEY}={quoted(str(run_dir))}"]


def checkpoint_to_resume(cfg: DictConfig) -> Path | None:
    """The checkpoint training restarts from: ``resume``'s last.ckpt, ``ckpt_path``, or None."""
    resume, ckpt_path = cfg.get(RESUME_KEY), cfg.get(CKPT_KEY)
    if resume and ckpt_path:
        raise ConfigError(
            "resume= and ckpt_path= both given: resume=RUN_DIR takes that run's "
            "last.ckpt; ckpt_path=FILE starts a new run from FILE"
        )
    if resume:
        return run_dir_to_resume(str(resume)) / LAST_CHECKPOINT
    if ckpt_path:
        return Path(str(ckpt_path)).expanduser().resolve()
    return None


def new_wandb_run_id(length: int = 8) -> str:
    """A W&B run id (lowercase letters and digits, as W&B makes them) from the OS's entropy:
    drawing it must not move the run's seeded generators."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def pin_wandb_run_id(cfg: DictConfig, output_dir: Path, write: bool = True) -> str | None:
    """Give the W&B logger its run id before W&B starts, and keep it in the run folder.

    The id is the one in ``output_dir/wandb_id.txt`` when a run there started before (a resumed
    run continues its W&B run: Lightning's WandbLogger passes resume="allow"), else a new one;
    an id set in the config (``logger.wandb.id``) wins. None without a W&B logger. ``write``:
    only the process that owns the run's files writes the file.
    """
    node = (cfg.get("logger") or {}).get("wandb")
    if node is None:
        return None
    if node.get("id"):
        return str(node.id)
    path = Path(output_dir) / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        run_id = path.read_text().strip()
    else:
        run_id = new_wandb_run_id()
    if write:
        path.write_text(run_id + "\n")
    with open_dict(node):
        node.id = run_id
    return run_id
