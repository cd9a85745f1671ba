"""The command line around Hydra: check every job's config before any job starts.

Hydra reports a bad override with a multi-line message and a hint about stack traces, and a
multirun would find a bad value only when its job comes up. ``preflight`` composes the config
of every value that a (multi)run names, on the command line or in a sweep preset's
``hydra.sweeper.params``/``grids``, runs ``check_config`` on each, and answers the first problem
with one line on stderr and exit status 2, before any data is loaded.

Exit statuses: 2 bad input (nothing ran), 3 a single run diverged, 1 a single run trained and
tested but a stage after that failed (``lowbit.train.StageFailed``; its metrics are kept), or a
multirun in which some jobs failed (``lowbit.sweep.outcome``; the other jobs ran to the end),
4 a fault of the output folder's storage (``lowbit.storage``: a full disk or quota, a folder
turned read-only, an I/O error; before the run when its filesystem has less free space than
the run needs, or during it, with every metric measured so far kept), 5 a data file damaged
while the run read it (``lowbit.data.faults``; metrics kept likewise), 6 a single run that ran
to its end without W&B, whose service died mid-run (results.json keeps every metric and the
fault, ``lowbit.tracker_guard``), 143 / 130 a run stopped by SIGTERM / Ctrl-C (last.ckpt saved;
``resume=RUN_DIR`` continues it).
"""

from __future__ import annotations

import copy
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.config import CONFIG_DIR
from lowbit.errors import ConfigError
from lowbit.overrides import hydra_error_line, override_key
from lowbit.results import RESULTS_FILE, check_writable
from lowbit.validation import check_values

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_STAGE_FAILED = 1
EXIT_STORAGE_FAULT = 4
EXIT_DATA_FAULT = 5
EXIT_TRACKER_LOST = 6  # the run went on to its end without W&B (lowbit.tracker_guard)
# Hydra's answers that are not a run (help, the config, information, shell completion) or
# replay a saved one: the names of its argument parser's options, which the checks leave alone.
NOT_A_RUN = ("help", "hydra_help", "cfg", "info", "shell_completion", "experimental_rerun")


def fail(message: str, status: int = EXIT_BAD_INPUT) -> None:
    print(f"lowbit: error: {message}", file=sys.stderr)
    raise SystemExit(status)


def split_argv(argv: list[str]) -> tuple[list[str], str, bool] | None:
    """(overrides, config name, multirun) as Hydra's own argument parser reads ``argv``, or
    None when Hydra is asked for something other than a run (``NOT_A_RUN``)."""
    from lowbit.hydra_compat import get_args_parser  # the parser @hydra.main uses

    args, unparsed = get_args_parser().parse_known_args(argv)
    if any(getattr(args, name) for name in NOT_A_RUN):
        return None
    if unparsed:  # Hydra would answer with its usage text: overrides after a flag
        flag = (
            next(
                (arg for arg in argv[argv.index(args.overrides[0]) :] if arg.startswith("-")),
                unparsed[0],
            )
            if args.overrides
            else unparsed[0]
        )
        raise ConfigError(
            f"{flag} must come before the overrides: "
            f"python train.py {flag} {' '.join(args.overrides + unparsed)} ..."
        )
    return args.overrides, args.config_name or "train", args.multirun


def config_groups(extra_dirs: tuple[Path, ...] = ()) -> dict[str, list[str]]:
    """Option names of every config group folder under conf/ and under the user's config
    folders on Hydra's search path (``hydra`` groups excluded: they add to Hydra's own options,
    such as the launchers that plugins register)."""
    groups: dict[str, set[str]] = {}
    for root in (CONFIG_DIR, *extra_dirs):
        for folder in sorted(p for p in Path(root).rglob("*") if p.is_dir()):
            group = folder.relative_to(root).as_posix()
            if group.split("/")[0] == "hydra":
                continue
            groups.setdefault(group, set()).update(f.stem for f in folder.glob("*.yaml"))
    return {group: sorted(names) for group, names in groups.items()}


SEARCHPATH_KEY = "hydra.searchpath"


def searchpath_overrides(overrides: list[str]) -> list[str]:
    """The ``hydra.searchpath=[file://DIR,...]`` override, if any: a user's config folders
    (their own quantizer, model or data set options), which every compose here must see too."""
    return [o for o in overrides if override_key(o) == SEARCHPATH_KEY]


def searchpath_dirs(overrides: list[str]) -> tuple[Path, ...]:
    """The folders a ``hydra.searchpath`` override names with ``file://`` (relative ones from
    the working directory, as Hydra reads them); ConfigError for one that is not a folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirs = []
    for override in OverridesParser.create().parse_overrides(searchpath_overrides(overrides)):
        entries = override.value() if isinstance(override.value(), list) else [override.value()]
        for entry in map(str, entries):
            if not entry.startswith("file://"):
                continue  # pkg:// entries: Hydra resolves them; their groups are not listed here
            folder = Path(entry.removeprefix("file://"))
            if not folder.is_dir():
                raise ConfigError(f"{SEARCHPATH_KEY}: {entry} is not a folder")
            dirs.append(folder)
    return tuple(dirs)


def job_variants(overrides: list[str]) -> tuple[list[list[str]], list[str]]:
    """Override lists that together cover every value of every sweep, without the full product
    (each sweep's values are checked once, the other sweeps held at their first value), and the
    overrides that are not sweeps.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:
        raise ConfigError(hydra_error_line(error)) from None
    choices: list[list[str]] = []
    fixed: list[str] = []
    for override in parsed:
        if override.get_key_element().lstrip("+~").startswith("hydra"):
            continue  # launcher and sweeper settings: Hydra's own business
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={v}" for v in sweep_values(override)])
        else:
            choices.append([override.input_line])
            fixed.append(override.input_line)
    base = [options[0] for options in choices]
    variants = [base]
    for index, options in enumerate(choices):
        for option in options[1:]:
            variants.append(base[:index] + [option] + base[index + 1 :])
    return variants, fixed


def sweep_values(override) -> list[str]:
    """The values of a sweep to check: all of a list, choice() or range(); the two ends of an
    interval() (an Optuna search draws from between them)."""
    from hydra.core.override_parser.types import Glob

    if override.is_discrete_sweep() and not isinstance(override.value(), Glob):
        return [str(v) for v in override.sweep_string_iterator()]
    if override.is_interval_sweep():
        interval = override.value()
        return [str(interval.start), str(interval.end)]
    key = override.get_key_element()
    raise ConfigError(
        f"{key}: only lists, choice(), range() and interval() sweeps are checked "
        f"here (not glob()); use explicit values like {key}=2,4,8"
    )


def merge_overrides(*lists: list[str]) -> list[str]:
    """Overrides in order, a later one replacing an earlier one of the same key element (key,
    ``+``/``~`` prefix and package, ``Override.get_key_element``), as Hydra's basic sweeper
    merges ``hydra.sweeper.params`` with the command line: ``+trainer.x=1 trainer.x=2`` stays
    two overrides, adding then changing."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    merged: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides([o for lst in lists for o in lst]):
        merged.pop(override.get_key_element(), None)
        merged[override.get_key_element()] = override.input_line
    return list(merged.values())


def preset_sweeps(config_name: str, overrides: list[str]) -> list[list[str]]:
    """The sweeps a sweep preset adds, one override list per grid (``hydra.sweeper.params``,
    and ``hydra.sweeper.grids`` for lowbit's grids sweeper); [[]] when there is no preset."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from lowbit.sweep.grids import grid_override_lists

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeper = compose(config_name, fixed, return_hydra_config=True).hydra.sweeper
    settings = OmegaConf.to_container(sweeper, resolve=True)
    return grid_override_lists(settings.get("params"), settings.get("grids"), [])


def check_group_choices(overrides: list[str], groups: dict[str, list[str]]) -> None:
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in groups and value not in ("null", ""):
            if value not in groups[key]:
                raise ConfigError(
                    f"unknown {key} {value!r}: available are {', '.join(groups[key])}"
                )


MISSING_VALUE = "Missing mandatory value: "


def mandatory_key(error: BaseException) -> str | None:
    """The key of a ``???`` value that was left unset, from OmegaConf's error, or None."""
    text = str(error)
    return text.split(MISSING_VALUE, 1)[1].split()[0] if MISSING_VALUE in text else None


def compose(config_name: str, overrides: list[str], return_hydra_config: bool = False) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(
            config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config
        )


def check_new_run_dir_writable(cfg: Any, multirun: bool) -> Path:
    """The folder Hydra creates for the run (the sweep's, in a multirun) must be writable:
    checked here, since Hydra would fail with a traceback before any job starts. ``cfg`` is
    composed with Hydra's own node (``return_hydra_config``)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(cfg)  # ${hydra:...} in the folder name resolves as in the job
    try:
        folder = Path(str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
    finally:
        hydra_config.cfg = previous
    check_writable(folder, keep=False)  # Hydra creates it; nothing left behind
    return folder


def check_free_space(folder: Path, needed: int, space=None) -> None:
    """Refuse a run whose output filesystem has less free space than it will write (one line,
    exit ``EXIT_STORAGE_FAULT``): found now, not at the first checkpoint that does not fit.
    ``space`` (a ``lowbit.storage.SpaceNeeded``) itemises a single run's need."""
    from lowbit.storage import MB, free_bytes

    free = free_bytes(folder)
    if free < needed:
        detail = space.describe() if space is not None else f"about {needed / MB:.1f} MB"
        fail(
            f"not enough space: {folder} has {free / MB:.1f} MB free and this run needs {detail}; "
            f"free some space or choose another folder with hydra.run.dir=PATH "
            f"(hydra.sweep.dir=PATH for a multirun)",
            EXIT_STORAGE_FAULT,
        )


def job_config(config_name: str, overrides: list[str], with_hydra: bool = False) -> Any:
    """One job's composed config, Hydra's own node included when asked; ConfigError with
    Hydra's message on one line."""
    try:
        return compose(config_name, overrides, return_hydra_config=with_hydra)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(hydra_error_line(error)) from None


def without_hydra_node(cfg: Any) -> Any:
    """The job's config as ``@hydra.main`` hands it over: the composition without ``hydra``."""
    from omegaconf import OmegaConf, open_dict

    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra")
    OmegaConf.set_readonly(job, None)
    return job


@dataclass
class PreparedRun:
    """What the command line's checks built for a single run, handed to it (``main_job``):
    the config they checked, as data, and ``check_config``'s parts."""

    config: dict
    components: Any  # lowbit.train.Components


PREPARED: list[PreparedRun] = []  # at most one: the single run this process was started for


def hand_over(cfg: Any) -> Any:
    """The parts the checks built, if they were built for exactly this config (else None,
    and the run builds its own: a notebook or a test calls ``main_job`` without ``preflight``)."""
    from omegaconf import OmegaConf

    if not PREPARED:
        return None
    prepared = PREPARED.pop()
    same = prepared.config == OmegaConf.to_container(cfg, resolve=False)
    return prepared.components if same else None


def preflight(argv: list[str]) -> None:
    """Check every job the command line describes; one line and exit 2 on the first problem.

    The checks that need no torch (groups, Hydra's composition, ``check_values``) run on every
    job first, so that such bad input is answered before the training code is imported (torch,
    torchvision and Lightning take seconds); then ``check_config`` on every job. The parts
    ``check_config`` builds for a single run (data, model, plan) are handed to it (``hand_over``),
    so that the run builds each of them once."""
    try:
        split = split_argv(argv)
        if split is None:
            return
        overrides, config_name, multirun = split
        searchpath = searchpath_overrides(overrides)
        groups = config_groups(searchpath_dirs(overrides))
        variants, fixed = job_variants(overrides)
        check_group_choices(fixed, groups)
        preset = [o for o in fixed if override_key(o) == "sweep" and not o.endswith("=null")]
        if preset and not multirun:
            raise ConfigError(
                f"{preset[0]} is a sweep preset and needs a multirun: "
                f"python train.py -m {' '.join(overrides)}"
            )
        if multirun:
            try:  # Hydra composes the non-sweep overrides on the default groups before sweeping
                sweeps = preset_sweeps(config_name, overrides)
            except Exception as error:
                missing = mandatory_key(error)  # a preset's ??? key, e.g. fp32_run
                if missing:
                    raise ConfigError(
                        f"{missing} must be given: the chosen preset needs it (see its file in "
                        f"conf/sweep/): python train.py -m {' '.join(overrides)} {missing}=..."
                    ) from None
                raise ConfigError(
                    f"{hydra_error_line(error)} (in a multirun Hydra first applies the non-sweep "
                    f"overrides to the default groups: write ++key=value for a key that only "
                    f"some of the swept options have)"
                ) from None
            if sweeps != [[]]:  # a preset's grids: each checked with the command line on top
                variants = [
                    variant
                    for preset_overrides in sweeps
                    for variant in job_variants(merge_overrides(preset_overrides, overrides))[0]
                ]
        # hydra.* settings and hydra/* groups (hydra/launcher=joblib hydra.launcher.n_jobs=2),
        # the search path among them: the first job is composed with them and Hydra's node, which
        # names the run's folder
        hydra_settings = [o for o in overrides if override_key(o).startswith("hydra")]
        jobs = []
        for index, variant in enumerate(variants):
            check_group_choices(variant, groups)
            if index == 0:
                first = job_config(config_name, [*variant, *hydra_settings], with_hydra=True)
                cfg = without_hydra_node(first)
            else:
                cfg = job_config(config_name, [*searchpath, *variant])
            check_values(cfg, imports=False)
            jobs.append(cfg)
        from lowbit.train import check_config

        needed = 0
        for cfg in jobs:
            components = check_config(cfg, values_checked=True)
            needed += components.space.total
        folder = check_new_run_dir_writable(first, multirun)
        # a sweep's jobs all keep their files: the checked variants stand for the whole sweep
        check_free_space(folder, needed, components.space if len(jobs) == 1 else None)
        if not multirun and len(jobs) == 1:
            from omegaconf import OmegaConf

            PREPARED[:] = [PreparedRun(OmegaConf.to_container(jobs[0], resolve=False), components)]
    except ConfigError as error:
        fail(str(error))


def objective_values(cfg, metrics: dict[str, float]) -> float | tuple[float, ...] | None:
    """What a sweeper optimises: the ``objectives`` metrics, one float or a tuple of them (for a
    multi-objective Optuna search); NaN for a metric the run has not got (a failed job). The
    names are the config's own (the task's, conf/task/, or a preset's), never translated."""
    names = list(cfg.get("objectives") or [])
    if not names:
        return None
    values = tuple(float(metrics.get(name, math.nan)) for name in names)
    return values[0] if len(values) == 1 else values


def expand_resume(argv: list[str]) -> list[str]:
    """``resume=RUN_DIR`` written out as that run's overrides and folder (``lowbit.resume``);
    the flags first, then the overrides."""
    from lowbit.resume import resume_overrides

    try:
        split = split_argv(argv)
        expanded = None if split is None else resume_overrides(split[0], multirun=split[2])
    except ConfigError as error:
        fail(str(error))
    if expanded is None:
        return argv
    flags = list(argv)
    for override in split[0]:
        flags.remove(override)
    return [*flags, *expanded]


def main_job(cfg) -> float | tuple[float, ...] | None:
    """The body of ``@hydra.main``: one run. A single run answers bad input with one line and
    exit status 2, a NaN loss with exit status 3, a failed stage after testing with its metrics
    table, one line and exit status 1; a run whose W&B service died goes on to its end without
    it, then exits with status 6. A job of a multirun never stops its sweep: its failure is
    recorded (results.json, W&B tag), told on stderr, and the sweep goes on; a job whose stage
    after testing failed still gives the sweeper the objectives it measured."""
    from lowbit.checkpoints import Interrupted
    from lowbit.console import print_summary
    from lowbit.data.faults import DataFault
    from lowbit.storage import StorageFault, has_storage_fault
    from lowbit.sweep import job
    from lowbit.tasks.base import Diverged
    from lowbit.tracker_guard import lost_tracker
    from lowbit.train import StageFailed, run

    if not job.in_multirun():
        try:
            results = run(cfg, components=hand_over(cfg))
        except ConfigError as error:
            fail(str(error))
        except StorageFault as fault:  # what was measured is in results.json, or on stdout
            fail(fault.advice or str(fault), EXIT_STORAGE_FAULT)
        except DataFault as fault:  # a data file damaged mid-run; kept as for a storage fault
            fail(fault.advice, EXIT_DATA_FAULT)
        except Diverged as error:
            fail(f"run diverged: {error}", EXIT_DIVERGED)
        except Interrupted as error:
            fail(str(error), error.code)
        except StageFailed as error:  # the traceback is in the log
            print_summary(error.results)
            if has_storage_fault(error.results):
                fail(error.results["error"], EXIT_STORAGE_FAULT)
            fail(
                f"{error}; the metrics measured are kept in "
                f"{Path(error.results['run_dir']) / RESULTS_FILE}",
                EXIT_STAGE_FAILED,
            )
        print_summary(results)
        if lost_tracker(results):  # its one line was printed when W&B was lost
            raise SystemExit(EXIT_TRACKER_LOST)
        return objective_values(cfg, results["metrics"])

    job.settle_job_settings(cfg)
    name = cfg.get("run_name") or "job"
    try:
        with job.job_device(cfg):
            results = run(cfg)
    except (ConfigError, Diverged) as error:
        kind = "diverged" if isinstance(error, Diverged) else "failed"
        print(f"lowbit: job {name} {kind}: {error}; the sweep goes on", file=sys.stderr)
        return objective_values(cfg, {})
    except StageFailed as error:
        print(f"lowbit: job {name} failed: {error}; the sweep goes on", file=sys.stderr)
        return objective_values(cfg, error.results["metrics"])
    except (StorageFault, DataFault) as fault:  # recorded in results.json; the next job
        print(f"lowbit: job {name} failed: {fault.advice}; the sweep goes on", file=sys.stderr)
        return objective_values(cfg, {})
    except Exception:  # a bug or a crash: its traceback, then the next job
        traceback.print_exc()
        print(f"lowbit: job {name} crashed; the sweep goes on", file=sys.stderr)
        return objective_values(cfg, {})
    print_summary(results)
    return objective_values(cfg, results["metrics"])
