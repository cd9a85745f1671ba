"""lowbit's Optuna sweeper (hydra/sweeper=optuna): each trial of a study that lasts is a job.

It lives in the ``hydra_plugins`` namespace package because Hydra instantiates sweepers only from
there. What it decides about the study (search space, storage, continuing, failed trials, the
Pareto front) is ``lowbit.sweep.study``; here are Hydra's parts: ask a batch of ``n_jobs``
trials, launch them as jobs with the configured launcher (joblib runs them side by side), tell
the study what they returned, until the study has ``n_trials`` complete trials or this command
has run ``n_trials``. Each job gets ``optuna.study`` and ``optuna.trial`` in its config (its W&B
run's config too), and its job number is its trial's number.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from lowbit.cli import fail
from lowbit.errors import ConfigError
from lowbit.sweep import study as studies

log = logging.getLogger(__name__)
RESULTS_FILE = "optimization_results.yaml"


class OptunaSweeper(Sweeper):
    """hydra/sweeper=optuna (conf/hydra/sweeper/optuna.yaml says what each setting does)."""

    def __init__(
        self,
        sampler: Any = None,
        direction: Any = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = dict(params or {})

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def open(self, arguments: Sequence[str]) -> tuple[Any, studies.SearchSpace, str]:
        """The study this command continues or starts, after every check (ConfigError)."""
        for name, value in (("n_trials", self.n_trials), ("n_jobs", self.n_jobs)):
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"hydra.sweeper.{name}={value}: give a positive count")
        space = studies.search_space(
            [*(f"{key}={value}" for key, value in self.params.items()), *arguments]
        )
        directions = studies.directions(self.direction)
        objectives = [str(metric) for metric in self.config.get("objectives") or []]
        if len(objectives) != len(directions):
            raise ConfigError(
                f"hydra.sweeper.direction has {len(directions)} direction(s) and objectives "
                f"{len(objectives)} metric(s) ({', '.join(objectives) or 'none'}): one each"
            )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        name = studies.check_study_name(self.study_name or sweep_dir.name)
        studies_dir = Path(str(self.config.paths.log_dir)) / "studies"
        storage, where = studies.open_storage(self.storage, name, studies_dir)
        study = studies.open_study(
            storage, where, name, space, objectives, directions, self.sampler
        )
        return study, space, where

    def sweep(self, arguments: list[str]) -> list[Sequence[Any]]:
        try:
            study, space, where = self.open(arguments)
        except ConfigError as error:
            fail(str(error))
        for number in studies.fail_orphans(study):
            log.warning(f"Trial {number} was running when its sweep process died: marked FAIL")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        log.info(
            f"Study {study.study_name} ({where}): {self.describe(study)}; watch it with "
            f"optuna-dashboard {where}"
        )
        returns, asked = [], 0
        while asked < self.n_trials:
            tally = studies.counts(study)
            wanted = self.n_trials - tally["complete"] - tally["running"]
            batch = min(self.n_jobs, wanted, self.n_trials - asked)
            if batch <= 0:
                break
            returns.append(self.run_batch(study, space, batch))
            asked += batch
        if not asked:
            log.info(f"Nothing to run: hydra.sweeper.n_trials={self.n_trials + 8} adds 8 trials")
        results = studies.results(study, where)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        log.info(f"Study {study.study_name}: {self.describe(study)}; {sweep_dir / RESULTS_FILE}")
        return returns

    def describe(self, study: Any) -> str:
        tally = studies.counts(study)
        return f"{tally['complete']} of {self.n_trials} trials complete, {tally['fail']} failed"

    def run_batch(self, study: Any, space: studies.SearchSpace, size: int) -> Sequence[Any]:
        trials = [studies.ask(study, space) for _ in range(size)]
        batch = [
            [
                *studies.trial_overrides(space, trial),
                f"optuna.study={study.study_name}",
                f"optuna.trial={trial.number}",
            ]
            for trial in trials
        ]
        try:
            returned = self.launcher.launch(batch, initial_job_idx=trials[0].number)
        except BaseException:  # Ctrl-C, SIGTERM, a launcher error: these trials did not finish
            for trial in trials:
                studies.record(study, trial, None, "the sweep stopped while it ran")
            raise
        for trial, job in zip(trials, returned):
            try:
                value, failure = job.return_value, ""
            except Exception as error:  # the job raised: Hydra keeps its exception
                value, failure = None, f"{type(error).__name__}: {studies.first_line(error)}"
            studies.record(study, trial, value, failure)
        return returned
