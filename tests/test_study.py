"""Optuna studies that last (hydra/sweeper=optuna, lowbit.sweep.study): the search-space grammar,
the study file, continuing a study, refusing a changed one, failed and orphaned trials.

The sweeper runs here in-process with a stand-in launcher that answers each job at once, so
that the study's rules are checked without training; the kill-and-continue test at the end
trains for real, as a user's command does."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, ROOT, run_env, run_train
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from lowbit.cli import compose
from lowbit.errors import ConfigError
from lowbit.sweep import study as studies

FAST_ARGS = [*FAST, "callbacks=none", "logger=none"]  # a few batches, nothing tracked


class Launcher:
    """Hydra's launcher, answering each job with ``answer(its overrides as a dict)``."""

    def __init__(self, answer=lambda job: (0.5, 1000.0 * int(job["quant.wbits"]))):
        self.answer = answer
        self.jobs: list[tuple[int, dict[str, str]]] = []

    def launch(self, batch, initial_job_idx):
        jobs = [dict(o.split("=", 1) for o in overrides) for overrides in batch]
        self.jobs += [(initial_job_idx + i, job) for i, job in enumerate(jobs)]
        return [
            JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=self.answer(j))
            for o, j in zip(batch, jobs)
        ]


def search(tmp_path, *settings, arguments=(), launcher=None, sweep="sweep"):
    """``python train.py -m sweep=acc_vs_size ARGUMENTS SETTINGS``: the sweeper's run with its
    study in tmp_path/studies/ (``settings`` are hydra.* overrides, ``arguments`` the job's)."""
    cfg = compose(
        "train",
        [
            "sweep=acc_vs_size",
            f"hydra.sweep.dir={tmp_path}/{sweep}",
            f"paths.log_dir={tmp_path}",
            *settings,
        ],
        return_hydra_config=True,
    )
    sweeper = instantiate(cfg.hydra.sweeper)
    sweeper.config, sweeper.launcher = cfg, launcher or Launcher()
    sweeper.sweep(list(arguments))
    return sweeper.launcher


def journal(path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def load(tmp_path, name="acc_vs_size") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=journal(tmp_path / "studies" / f"{name}.log"))


def refusal(capsys, tmp_path, *settings, arguments=()) -> str:
    """The one line and exit status 2 that a refused search gives, before any job runs."""
    launcher = Launcher()
    with pytest.raises(SystemExit) as stopped:
        search(tmp_path, *settings, arguments=arguments, launcher=launcher)
    assert stopped.value.code == 2 and launcher.jobs == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error: "), err
    return err[0]


def test_the_search_space_is_hydras_sweep_grammar():
    space = studies.search_space(
        [
            "quant.wbits=choice(2,4,8)",
            "quant.abits=2,4",
            "quant.gbits=range(4,9,2)",  # 4, 6, 8: range leaves its stop out, as in Hydra
            "optimizer.lr=tag(log,interval(1e-4,1e-1))",
            "trainer.max_epochs=int(interval(1,10))",
            "optimizer.momentum=0.9",
            "quant.abits=8",  # the command line after the preset: fixed now
        ]
    )
    assert space.distributions == {
        "quant.wbits": CategoricalDistribution([2, 4, 8]),
        "quant.gbits": IntDistribution(4, 8, step=2),
        "optimizer.lr": FloatDistribution(1e-4, 1e-1, log=True),
        "trainer.max_epochs": IntDistribution(1, 10),
    }
    assert space.fixed == ["optimizer.momentum=0.9", "quant.abits=8"]
    assert studies.written(space.distributions["quant.gbits"]) == "range(4, 10, 2)"
    assert studies.written(space.distributions["optimizer.lr"]) == (
        "tag(log, interval(0.0001, 0.1))"
    )


def test_sampled_values_are_written_as_hydra_reads_them():
    assert [studies.override_value(v) for v in (None, True, 4, 0.5, "pact")] == [
        "null",
        "true",
        "4",
        "0.5",
        "pact",
    ]
    assert studies.override_value("8") == "'8'"  # a string, not the number
    assert studies.override_value("a,b") == "'a,b'"  # one value, not a sweep


@pytest.mark.parametrize(
    "sweep, says",
    [
        ("optimizer.lr=interval(0.1,0.01)", "low end must be below its high end"),
        ("optimizer.lr=tag(log,interval(0,0.1))", "optimizer.lr=tag(log,interval(0,0.1))"),
        ("quant.wbits=range(8,2)", "the range is empty"),
        ("quant.wbits=choice([2,4],[8])", "numbers, strings, booleans or null"),
        ("quantizer=glob(*)", "takes choice(), range() and interval()"),
        ("quant.wbits=choice(2,", "no viable alternative at input 'choice(2,'"),
    ],
)
def test_a_bad_search_space_is_one_line_and_exit_2(capsys, tmp_path, sweep, says):
    assert says in refusal(capsys, tmp_path, arguments=[sweep])
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "storage, says",
    [
        ("{tmp}", "is a folder: name the study's file"),
        ("{tmp}/a_file/study.log", "cannot write the study file"),
        ("sqlite:///{tmp}/no/such/folder/studies.db", "unable to open database file"),
        ("nosuch://host/db", "hydra.sweeper.storage=nosuch://host/db"),
    ],
)
def test_a_bad_storage_is_one_line_and_exit_2(capsys, tmp_path, storage, says):
    (tmp_path / "a_file").write_text("not a folder")
    storage = storage.format(tmp=tmp_path)
    assert says in refusal(capsys, tmp_path, f"hydra.sweeper.storage={storage}")


def test_a_refusal_is_one_line_and_exit_2_from_the_command_line(tmp_path):
    """The sweeper's refusal as a user meets it: through train.py and Hydra, before any job."""
    (tmp_path / "a_file").write_text("not a folder")
    storage = f"hydra.sweeper.storage={tmp_path}/a_file/acc_vs_size.log"
    result = run_train(["-m", "sweep=acc_vs_size", storage], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"lowbit: error: cannot write the study file {tmp_path}/a_file/acc_vs_size.log: "
        f"{tmp_path}/a_file is a file; name another with hydra.sweeper.storage=PATH, or a "
        f"database URL"
    ]
    assert not (tmp_path / "sweep").exists()


def test_a_study_is_a_journal_file_that_the_same_command_continues(tmp_path):
    first = search(tmp_path, "hydra.sweeper.n_trials=2")
    study = load(tmp_path)  # outputs/studies/acc_vs_size.log, paths.log_dir here
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert [number for number, _ in first.jobs] == [0, 1]
    # Every job is told its study and trial (its W&B config carries them), numbered as its trial.
    assert [(j["optuna.study"], j["optuna.trial"]) for _, j in first.jobs] == [
        ("acc_vs_size", "0"),
        ("acc_vs_size", "1"),
    ]
    again = search(tmp_path, "hydra.sweeper.n_trials=4", sweep="sweep2")
    assert [number for number, _ in again.jobs] == [2, 3]  # the trial count goes on
    assert len(load(tmp_path).trials) == 4
    front = OmegaConf.load(tmp_path / "sweep2" / "optimization_results.yaml")
    assert front.study_name == "acc_vs_size" and front.trials == {"complete": 4}
    assert all(len(s["values"]) == 2 and "quant.wbits" in s["params"] for s in front.solutions)
    assert {s["trial"] for s in front.solutions} <= {0, 1, 2, 3}
    done = search(tmp_path, "hydra.sweeper.n_trials=4", sweep="sweep3")
    assert done.jobs == []  # n_trials is the study's size: nothing is missing


def test_a_continued_study_draws_new_values(tmp_path):
    """The sampler's seed moves on with the study: with seed 0 again, a continued random search
    (and NSGA-II's first generation) would repeat the first command's trials."""
    settings = ["hydra/sweeper/sampler=random", "~hydra.sweeper.sampler.population_size"]
    search(tmp_path, *settings, "hydra.sweeper.n_trials=3")
    search(tmp_path, *settings, "hydra.sweeper.n_trials=6", sweep="sweep2")
    params = [t.params for t in load(tmp_path).trials]
    assert len(params) == 6 and params[3:] != params[:3]


def test_a_changed_space_or_direction_is_refused_unless_the_study_is_new(capsys, tmp_path):
    search(tmp_path, "hydra.sweeper.n_trials=1")
    line = refusal(capsys, tmp_path, arguments=["quant.wbits=choice(2,4)"])
    assert line == (
        f"lowbit: error: study acc_vs_size ({tmp_path}/studies/acc_vs_size.log) was started "
        f"with another search space (quant.wbits: choice(2, 3, 4, 6, 8) -> choice(2, 4)); to "
        f"search this one, name a new study: hydra.sweeper.study_name=NAME"
    )
    line = refusal(capsys, tmp_path, "hydra.sweeper.direction=[maximize,maximize]")
    assert "another direction (maximize, minimize, now maximize, maximize)" in line
    line = refusal(capsys, tmp_path, "objectives=[test/acc,model/size_bytes]")
    assert "with other objectives (val/acc_best, model/size_bytes, now test/acc, model/" in line
    assert "quant.abits: choice(2, 3, 4, 6, 8) -> fixed" in refusal(
        capsys, tmp_path, arguments=["quant.abits=4"]
    )
    new = search(
        tmp_path,
        "hydra.sweeper.study_name=w24",
        "hydra.sweeper.n_trials=1",
        arguments=["quant.wbits=choice(2,4)"],
    )
    assert {job["quant.wbits"] for _, job in new.jobs} <= {"2", "4"}
    assert len(load(tmp_path, "w24").trials) == 1 and len(load(tmp_path).trials) == 1


def test_failed_jobs_are_failed_trials_and_the_search_goes_on(tmp_path):
    """A job that diverged returns NaN (lowbit.cli.main_job); one that raised is FAILED to Hydra.
    Each is a failed trial; a command runs at most n_trials, complete or not."""

    class Crashing(Launcher):
        def launch(self, batch, initial_job_idx):
            returns = super().launch(batch, initial_job_idx)
            returns[0].status, returns[0].return_value = JobStatus.FAILED, RuntimeError("boom")
            return returns

    search(
        tmp_path,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=3",
        launcher=Crashing(lambda job: (math.nan, math.nan)),
    )
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert trials[0].user_attrs["failure"] == "RuntimeError: boom"
    assert trials[1].user_attrs["failure"] == "the job returned (nan, nan)"
    front = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert front.solutions == [] and front.trials == {"fail": 3}


def test_ctrl_c_stops_the_search_and_fails_its_running_trials(tmp_path):
    class Interrupted(Launcher):
        def launch(self, batch, initial_job_idx):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(tmp_path, "hydra.sweeper.n_jobs=2", launcher=Interrupted())
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert trials[0].user_attrs["failure"] == "the sweep stopped while it ran"


def test_trials_of_a_killed_sweep_are_marked_failed_and_live_ones_are_left(tmp_path):
    search(tmp_path, "hydra.sweeper.n_trials=1")
    study = load(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid in (dead.pid, os.getppid()):  # a sweep killed while it ran; one still running
        trial = study.ask()
        trial.set_user_attr(studies.HOST_ATTR, socket.gethostname())
        trial.set_user_attr(studies.PID_ATTR, pid)
    launcher = search(tmp_path, "hydra.sweeper.n_trials=3", sweep="sweep2")
    states = [t.state for t in load(tmp_path).trials]
    assert states[:3] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    # The live sweep's trial counts towards the study's 3: one more is enough.
    assert [number for number, _ in launcher.jobs] == [3]


def test_a_trials_wandb_config_names_its_study_and_trial(make_cfg):
    """What the sweeper gives each job (optuna.study, optuna.trial) is in the config that the
    W&B run logs, as columns to filter and group a study's runs by."""
    from lowbit.train import loggable_config

    logged = loggable_config(make_cfg("optuna.study=acc_vs_size", "optuna.trial=3"))
    assert logged["optuna"] == {"study": "acc_vs_size", "trial": 3}
    assert loggable_config(make_cfg())["optuna"] == {"study": None, "trial": None}


def test_objectives_and_directions_must_pair_up(capsys, tmp_path):
    assert "1 direction(s) and objectives 2 metric(s)" in refusal(
        capsys, tmp_path, "hydra.sweeper.direction=maximize"
    )
    with pytest.raises(ConfigError, match="give minimize or maximize"):
        studies.directions(["maximise"])


def trial_states(path: Path) -> list[TrialState]:
    """The study's trials as the journal has them now ([] before the study is written)."""
    if not path.exists():
        return []
    try:
        study = optuna.load_study(study_name="acc_vs_size", storage=journal(path))
    except KeyError:
        return []
    return [trial.state for trial in study.get_trials(deepcopy=False)]


def test_a_killed_search_continues_to_its_trials(tmp_path):
    """The issue's test: python train.py -m sweep=acc_vs_size hydra.sweeper.n_trials=4, killed
    (SIGKILL) once two trials are complete and the third runs, then the same command again: 4
    complete trials in the study file, and the one that was running is FAIL, not lost
    (about 40 s)."""
    path = tmp_path / "studies" / "acc_vs_size.log"

    def command(sweep: str) -> list[str]:
        return [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "sweep=acc_vs_size",
            "hydra.sweeper.n_trials=4",
            *FAST_ARGS,
            f"hydra.sweeper.storage={path}",
            f"hydra.sweep.dir={tmp_path}/{sweep}",
        ]

    running = [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(
            command("sweep1"), stdout=log, stderr=subprocess.STDOUT, env=run_env(), cwd=tmp_path
        )
        deadline = time.monotonic() + 240
        while trial_states(path) != running and first.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    second = subprocess.run(
        command("sweep2"), capture_output=True, text=True, env=run_env(), cwd=tmp_path, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Trial 2 was running when its sweep process died: marked FAIL" in second.stdout
    assert trial_states(path) == [*running[:2], TrialState.FAIL, *running[:2]]
    assert "lowbit: 2 of 2 jobs ok" in second.stdout
    # The second command's jobs carry on the trial numbers, and are told them (W&B config).
    for number, job_dir in zip((3, 4), sorted((tmp_path / "sweep2").glob("*_nin-*"))):
        config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert (config.optuna.study, config.optuna.trial) == ("acc_vs_size", number)
        assert job_dir.name.startswith(f"{number}_")


# Slow: two trials in joblib's worker processes (35 to 60 s on 2 busy cores).
@pytest.mark.slow
def test_an_optuna_search_runs_its_trials_side_by_side(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "sweep=acc_vs_size",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *FAST_ARGS,
            f"paths.log_dir={tmp_path}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert trial_states(tmp_path / "studies" / "acc_vs_size.log") == [TrialState.COMPLETE] * 2
    assert "lowbit: 2 of 2 jobs ok" in result.stdout
