"""Optuna studies that last: the search space in Hydra's sweep grammar, the file a study is kept
in, and opening a study to continue it. The Optuna sweeper (``hydra/sweeper=optuna``,
``hydra_plugins.lowbit_sweepers.optuna_sweeper``) runs the trials as Hydra jobs; what it decides
about the study is here.

- **Search space**: ``hydra.sweeper.params`` and the command line's sweeps, as Hydra writes them:
  ``choice(2,4,8)`` or ``2,4,8``, ``range(2,9,2)`` (2 to 8: the stop is left out, as in Hydra),
  ``interval(0.01,0.1)``, ``tag(log,interval(1e-4,1e-1))``, ``int(interval(1,10))``. Everything
  else on the command line is a fixed override of every trial.
- **Storage**: by default Optuna's journal file ``<paths.log_dir>/studies/<study_name>.log``
  (``JournalStorage`` with ``JournalFileBackend``: no database server, and processes may share
  it); a path names another journal file, a URL (``sqlite:///studies.db``,
  ``postgresql://...``) Optuna's RDB storage.
- **Continuing**: a study that exists in the storage is continued, its trial numbers go on and
  its sampler sees the earlier trials; its search space, objectives and directions (kept in the
  study) must be this command's, or the command is refused: a new space is a new study.
  Trials left running by a sweep process that died (SIGKILL, a lost node) are marked FAIL.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import socket
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from lowbit.errors import ConfigError
from lowbit.overrides import hydra_error_line

DIRECTIONS = ("minimize", "maximize")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # also the journal file's name
# The study's user attributes: {name: "choice(2, 4, 8)", ...} and the metrics it optimises.
SPACE_ATTR, OBJECTIVES_ATTR = "search_space", "objectives"
# Each trial records the sweep process that runs it, so that a later start can tell a trial
# whose process died from one that another live sweep is running.
HOST_ATTR, PID_ATTR = "sweeper_host", "sweeper_pid"
FAILURE_ATTR = "failure"  # why a trial failed, shown in optuna-dashboard's trial table


@dataclass(frozen=True)
class SearchSpace:
    distributions: dict[str, BaseDistribution]  # keyed by the override's key (quant.wbits)
    fixed: list[str]  # the other overrides, as written

    def signature(self) -> dict[str, str]:
        """The space as the study records it, each sweep in Hydra's grammar (readable in
        optuna-dashboard): written from the distribution, so the same space reads the same."""
        return {name: written(d) for name, d in sorted(self.distributions.items())}


def search_space(overrides: Sequence[str]) -> SearchSpace:
    """The sweeps among ``overrides`` (the preset's params, then the command line: a later
    override of the same key replaces an earlier one) as distributions; the rest fixed."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as error:  # Hydra's grammar errors
        raise ConfigError(hydra_error_line(error)) from None
    latest: dict[str, Override] = {}
    for override in parsed:
        latest.pop(override.get_key_element(), None)
        latest[override.get_key_element()] = override
    distributions = {
        key: distribution(override)
        for key, override in latest.items()
        if override.is_sweep_override()
    }
    fixed = [o.input_line for o in latest.values() if not o.is_sweep_override()]
    if not distributions:
        raise ConfigError(
            "the Optuna search has nothing to search: give hydra.sweeper.params or sweeps such "
            "as quant.wbits=choice(2,4,8) or optimizer.lr=tag(log,interval(1e-4,1e-1))"
        )
    return SearchSpace(distributions, fixed)


def distribution(override: Override) -> BaseDistribution:
    """One sweep as an Optuna distribution; ConfigError naming it when it has no such form."""
    value, sweep = override.value(), override.input_line
    try:
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            choices = list(override.sweep_iterator())
            if not all(isinstance(c, (str, int, float, bool, type(None))) for c in choices):
                raise ValueError("a choice's values must be numbers, strings, booleans or null")
            return CategoricalDistribution(choices)
        if isinstance(value, RangeSweep):
            return range_distribution(value, len(list(override.sweep_iterator())))
        if isinstance(value, IntervalSweep):
            if value.start >= value.end:
                raise ValueError("its low end must be below its high end")
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                return IntDistribution(value.start, value.end, log=log)
            return FloatDistribution(float(value.start), float(value.end), log=log)
    except ValueError as error:
        raise ConfigError(f"search space {sweep}: {error}") from None
    raise ConfigError(
        f"search space {sweep}: an Optuna search takes choice(), range() and interval() "
        f"(with tag(log, ...) for a log scale)"
    )


def range_distribution(value: RangeSweep, count: int) -> BaseDistribution:
    """range(start, stop, step): the values Hydra's basic sweeper would run, start to the last
    one before stop, on Optuna's stepped scale."""
    if count == 0:
        raise ValueError("the range is empty")
    start, step = Decimal(str(value.start)), Decimal(str(value.step))
    ends = sorted([start, start + (count - 1) * step])
    if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
        return IntDistribution(int(ends[0]), int(ends[1]), step=abs(int(step)))
    return FloatDistribution(float(ends[0]), float(ends[1]), step=float(abs(step)))


def override_value(value: Any) -> str:
    """A sampled value as Hydra reads it back: null, true/false, numbers bare, strings bare when
    Hydra reads them back as that string, else quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        try:
            if OverridesParser.create().parse_override(f"k={value}").value() == value:
                return value
        except Exception:
            pass
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def trial_overrides(space: SearchSpace, trial: FrozenTrial | optuna.trial.Trial) -> list[str]:
    return [*space.fixed, *(f"{k}={override_value(v)}" for k, v in trial.params.items())]


def directions(direction: Any) -> list[str]:
    names = [direction] if isinstance(direction, str) else list(direction or [])
    if not names or any(str(name) not in DIRECTIONS for name in names):
        raise ConfigError(
            f"hydra.sweeper.direction={direction}: give minimize or maximize, or a list of "
            f"them, one per metric in objectives"
        )
    return [str(name) for name in names]


def check_study_name(name: str) -> str:
    if not STUDY_NAME.fullmatch(name):
        raise ConfigError(
            f"hydra.sweeper.study_name={name!r}: use letters, digits, _, . and - (it names the "
            f"study's file)"
        )
    return name


class JournalFlock:
    """The journal file's lock for Optuna's ``JournalFileBackend``, as ``flock(2)`` on the file:
    the kernel frees it with its process, so a sweep killed while writing leaves no stale lock
    (Optuna's own symlink lock makes the next start wait out a 30 s grace period). lowbit's
    sweeps lock the journal alike; a writer with Optuna's lock (optuna-dashboard's notes) does
    not wait for them, and its appends are single writes."""

    def __init__(self, path: Path) -> None:
        self.path, self.handle = path, None

    def acquire(self) -> bool:
        self.handle = open(self.path, "ab")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()
        self.handle = None


def open_storage(storage: str | None, study_name: str, studies_dir: Path) -> tuple[Any, str]:
    """(the Optuna storage, where it is) for ``hydra.sweeper.storage``: null, the journal file
    ``studies_dir/<study_name>.log``; a path, a journal file there; a URL, Optuna's RDB storage.
    ConfigError, one line, when it cannot be opened or written."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is not None and "://" in str(storage):
        try:
            return RDBStorage(str(storage)), str(storage)
        except Exception as error:  # SQLAlchemy's errors: no such driver, no such file, ...
            raise ConfigError(f"hydra.sweeper.storage={storage}: {first_line(error)}") from None
    path = Path(storage) if storage is not None else studies_dir / f"{study_name}.log"
    if path.is_dir():
        raise ConfigError(
            f"hydra.sweeper.storage={path} is a folder: name the study's file, e.g. "
            f"{path / study_name}.log"
        )

    def cannot(reason: str) -> ConfigError:
        return ConfigError(
            f"cannot write the study file {path}: {reason}; name another with "
            f"hydra.sweeper.storage=PATH, or a database URL"
        )

    existing = next(folder for folder in path.parents if folder.exists())
    if not existing.is_dir():
        raise cannot(f"{existing} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
        journal = JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFlock(path)))
    except OSError as error:
        raise cannot(error.strerror) from None
    except Exception as error:  # the journal's replay: not an Optuna journal
        raise ConfigError(f"{path} is not an Optuna journal file: {first_line(error)}") from None
    return journal, str(path)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def existing_study(storage: Any, name: str) -> optuna.study.StudySummary | None:
    summaries = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    return next((s for s in summaries if s.study_name == name), None)


def check_continues(
    summary: optuna.study.StudySummary,
    space: SearchSpace,
    metrics: list[str],
    directions: list[str],
    where: str,
) -> None:
    """ConfigError unless the study ``summary`` searched ``space`` for the same ``metrics`` in
    the same ``directions`` (what a study started elsewhere did not record is not checked)."""
    recorded = summary.user_attrs
    had_directions = [d.name.lower() for d in summary.directions]
    had_metrics = recorded.get(OBJECTIVES_ATTR, metrics)
    if had_directions != directions:
        what = "another direction"
        changes = f"{', '.join(had_directions)}, now {', '.join(directions)}"
    elif had_metrics != metrics:
        what, changes = "other objectives", f"{', '.join(had_metrics)}, now {', '.join(metrics)}"
    else:
        what = "another search space"
        changes = space_changes(recorded.get(SPACE_ATTR, space.signature()), space.signature())
    if changes:
        raise ConfigError(
            f"study {summary.study_name} ({where}) was started with {what} ({changes}); to "
            f"search this one, name a new study: hydra.sweeper.study_name=NAME"
        )


def space_changes(before: Mapping[str, str], now: Mapping[str, str]) -> str:
    """The first differences of two signatures, as ``key: old -> new`` in Hydra's grammar."""
    keys = sorted(key for key in {*before, *now} if before.get(key) != now.get(key))
    return "; ".join(
        f"{key}: {before.get(key, 'fixed')} -> {now.get(key, 'fixed')}" for key in keys[:2]
    )


def written(distribution: BaseDistribution) -> str:
    """A distribution as the sweep that makes it: choice(...), range(...), interval(...)."""
    if isinstance(distribution, CategoricalDistribution):
        return f"choice({', '.join(override_value(c) for c in distribution.choices)})"
    low, high, step = distribution.low, distribution.high, distribution.step
    stepped = isinstance(distribution, FloatDistribution) or step != 1  # Int's step is never None
    if step is not None and stepped:
        return f"range({low}, {high + step}, {step})"
    sweep = f"interval({low}, {high})"
    sweep = f"int({sweep})" if isinstance(distribution, IntDistribution) else sweep
    return f"tag(log, {sweep})" if distribution.log else sweep


def open_study(
    storage: Any,
    where: str,
    name: str,
    space: SearchSpace,
    metrics: list[str],
    directions: list[str],
    sampler: Any,
) -> optuna.Study:
    """The study ``name`` in ``storage``, continued or created, optimising ``metrics`` (the
    config's ``objectives``) in ``directions``. ``sampler`` is built here (a
    ``functools.partial`` of the sampler class, or a sampler) so that a continued study's
    sampler is seeded with seed + its number of trials: its draws are not the first run's
    again."""
    summary = existing_study(storage, name)
    if summary is not None:
        check_continues(summary, space, metrics, directions, where)
    earlier = summary.n_trials if summary is not None else 0
    if callable(sampler) and not isinstance(sampler, optuna.samplers.BaseSampler):
        seed = getattr(sampler, "keywords", {}).get("seed")
        try:
            sampler = sampler(seed=seed + earlier) if seed is not None else sampler()
        except Exception as error:  # a setting the sampler does not take
            raise ConfigError(f"hydra.sweeper.sampler: {first_line(error)}") from None
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        study_name=name,
        directions=directions,
        load_if_exists=True,
    )
    if summary is None:
        study.set_user_attr(SPACE_ATTR, space.signature())
        study.set_user_attr(OBJECTIVES_ATTR, metrics)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and still in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metrics)  # optuna-dashboard's axis titles
    return study


def ask(study: optuna.Study, space: SearchSpace) -> optuna.trial.Trial:
    """A new trial, claimed by this process (see ``fail_orphans``). The claim is written with
    the trial (enqueued with it, then asked), so that no kill leaves a running trial without
    one; a trial that another sweep enqueued and this one popped is claimed again."""
    claim = {HOST_ATTR: socket.gethostname(), PID_ATTR: os.getpid()}
    study.enqueue_trial({}, user_attrs=claim)
    trial = study.ask(space.distributions)
    for key, value in claim.items():
        if trial.user_attrs.get(key) != value:
            trial.set_user_attr(key, value)
    return trial


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this sweep is just starting: none of the running trials is its own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def fail_orphans(study: optuna.Study) -> list[int]:
    """Mark FAIL the trials still RUNNING whose sweep process on this machine is gone (killed
    while they ran); trials of other machines' live sweeps are left to them. Their numbers."""
    host, orphans = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get(PID_ATTR)
        if trial.user_attrs.get(HOST_ATTR) == host and isinstance(pid, int):
            if not process_alive(pid):
                study.tell(trial.number, state=TrialState.FAIL)
                orphans.append(trial.number)
    return orphans


def trial_values(returned: Any, count: int) -> list[float] | None:
    """A job's return value as the trial's ``count`` objective values; None for a failed
    trial (lowbit's jobs return NaN for a metric they did not get, ``lowbit.cli.main_job``)."""
    values = list(returned) if isinstance(returned, (list, tuple)) else [returned]
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if len(floats) != count or any(math.isnan(v) for v in floats):
        return None
    return floats


def record(study: optuna.Study, trial: optuna.trial.Trial, returned: Any, failure: str) -> None:
    """Tell the study what the trial's job returned; ``failure`` says why it has no values when
    it has none (the job's exception, a stopped sweep)."""
    values = trial_values(returned, len(study.directions)) if not failure else None
    if values is None:
        trial.set_user_attr(FAILURE_ATTR, failure or f"the job returned {returned!r}")
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, values)


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, lower-case: {"complete": 2, "fail": 1, "running": 0, ...}."""
    found = {state.name.lower(): 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        found[trial.state.name.lower()] += 1
    return found


def results(study: optuna.Study, where: str) -> dict[str, Any]:
    """What the sweep folder's optimization_results.yaml says: the study, and its best trial
    (one objective) or its Pareto front (several), over all of the study's trials."""
    summary: dict[str, Any] = {
        "name": "optuna",
        "study_name": study.study_name,
        "storage": where,
        "directions": [d.name.lower() for d in study.directions],
        "trials": {state: n for state, n in counts(study).items() if n},
    }
    described = lambda t: {"trial": t.number, "params": t.params, "values": t.values}  # noqa: E731
    if len(study.directions) > 1:
        summary["solutions"] = [described(t) for t in study.best_trials]
        return summary
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    summary["best_trial"] = best.number if best else None
    summary["best_params"] = best.params if best else None
    summary["best_value"] = best.value if best else None
    return summary
