"""The command line around Hydra: check every job's config before any job starts.

Hydra reports a bad override with a multi-line message and a hint about stack traces, and a
multirun would find a bad value only when its job comes up. ``preflight`` composes the config
of every value that a (multi)run names, runs ``check_config`` on each, and answers the first
problem with one line on stderr and exit status 2, before any data is loaded.
"""

from __future__ import annotations

import sys
from typing import Any

from lowbit.config import CONFIG_DIR
from lowbit.errors import ConfigError

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
# Hydra flags that take a value, and flags that ask Hydra for information instead of a run.
FLAGS_WITH_VALUE = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd",
                    "--package", "-p", "--experimental-rerun"}
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i",
              "--shell-completion", "-sc", "--version", "--experimental-rerun"}


def fail(message: str, status: int = EXIT_BAD_INPUT) -> None:
    print(f"lowbit: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def split_argv(argv: list[str]) -> tuple[list[str], str, bool] | None:
    """(overrides, config name, multirun), or None when Hydra is asked for information only."""
    overrides: list[str] = []
    config_name = "train"
    multirun = False
    args = iter(argv)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in INFO_FLAGS:
            return None
        if flag in ("-m", "--multirun"):
            if overrides:  # Hydra's argument parser would answer with its usage text
                raise ConfigError(f"{arg} must come before the overrides: "
                                  f"python train.py {arg} {' '.join(overrides)} ...")
            multirun = True
        elif flag in FLAGS_WITH_VALUE:
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
            if flag in ("--config-name", "-cn"):
                config_name = value
        elif arg.startswith("-"):
            continue
        else:
            overrides.append(arg)
    return overrides, config_name, multirun


def config_groups() -> dict[str, list[str]]:
    """Option names of every config group folder under conf/ (``hydra`` groups excluded)."""
    groups = {}
    for folder in sorted(p for p in CONFIG_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONFIG_DIR).as_posix()
        groups[group] = sorted(f.stem for f in folder.glob("*.yaml"))
    return groups


def job_variants(overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """Override lists that together cover every value of every sweep, without the full product
    (each sweep's values are checked once, the other sweeps held at their first value), and the
    overrides that are not sweeps.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:
        raise ConfigError(one_line(error)) from None
    choices: list[list[str]] = []
    fixed: list[str] = []
    for override in parsed:
        if override.get_key_element().lstrip("+~").startswith("hydra"):
            continue  # launcher and sweeper settings: Hydra's own business
        key = override.get_key_element()
        if override.is_sweep_override():
            if override.is_hydra_override() or not override.is_discrete_sweep():
                raise ConfigError(f"{key}: only comma-separated sweeps are checked here; "
                                  f"use explicit values like {key}=2,4,8")
            values = list(override.sweep_string_iterator())
            choices.append([f"{key}={v}" for v in values])
        else:
            choices.append([override.input_line])
            fixed.append(override.input_line)
    base = [options[0] for options in choices]
    variants = [base]
    for index, options in enumerate(choices):
        for option in options[1:]:
            variants.append(base[:index] + [option] + base[index + 1:])
    return variants, fixed


def check_group_choices(overrides: list[str], groups: dict[str, list[str]]) -> None:
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in groups and value not in ("null", ""):
            if value not in groups[key]:
                raise ConfigError(
                    f"unknown {key} {value!r}: available are {', '.join(groups[key])}"
                )


def one_line(error: BaseException) -> str:
    text = str(error)
    if text.startswith("Could not override '"):  # Hydra's hint to use + is rarely what is meant
        key = text.split("'")[1]
        return (f"unknown setting {key!r}: it is not in the composed config; check the spelling "
                f"and the chosen groups (e.g. quant.alpha_init needs quantizer=pact), or "
                f"prefix + to add a new key")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "HYDRA_FULL_ERROR" not in line]
    return " ".join(lines[:2]) or type(error).__name__


def compose(config_name: str, overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def preflight(argv: list[str]) -> None:
    """Check every job the command line describes; one line and exit 2 on the first problem."""
    from lowbit.train import check_config

    try:
        split = split_argv(argv)
        if split is None:
            return
        overrides, config_name, multirun = split
        groups = config_groups()
        variants, fixed = job_variants(overrides)
        if multirun and len(variants) > 1:
            # Hydra composes the non-sweep overrides on the default groups before sweeping.
            try:
                compose(config_name, fixed)
            except Exception as error:
                raise ConfigError(
                    f"{one_line(error)} (in a multirun Hydra first applies the non-sweep "
                    f"overrides to the default groups: write ++key=value for a key that only "
                    f"some of the swept options have)"
                ) from None
        for variant in variants:
            check_group_choices(variant, groups)
            try:
                cfg = compose(config_name, variant)
            except ConfigError:
                raise
            except Exception as error:
                raise ConfigError(one_line(error)) from None
            check_config(cfg)
    except ConfigError as error:
        fail(str(error))


def main_job(cfg) -> float | None:
    """The body of ``@hydra.main``: one run, bad input answered with one line."""
    from lowbit.tasks.classification import Diverged
    from lowbit.train import run
    from lowbit.console import print_summary

    try:
        results = run(cfg)
    except ConfigError as error:
        fail(str(error))
    except Diverged as error:
        fail(f"run diverged: {error}", EXIT_DIVERGED)
    print_summary(results)
    return results["metrics"].get("val/acc_best")
