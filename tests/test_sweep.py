"""Multiruns: the presets' studies, a job's share of the machine, the Slurm launcher configs,
and failure isolation with the sweep's verdict, end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, run_env
from hydra.core.override_parser.overrides_parser import OverridesParser
from sweep_results import write_job
from wandb_offline import read_offline_run

from lowbit.cli import compose, job_variants, main_job, preflight, preset_sweeps
from lowbit.hydra_compat import basic_sweeper, hydra_context
from lowbit.report import load_runs
from lowbit.sweep import job
from lowbit.sweep.outcome import failure_line, job_outcomes

FAST_ARGS = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "dataset.batch_size=16",
    "latency.warmup=1",
    "latency.repeats=2",
    "trainer.enable_progress_bar=false",
    "callbacks=none",
]


def as_settings(job_overrides: list[str]) -> dict[str, str]:
    return dict(override.split("=", 1) for override in job_overrides)


def basic_sweeper_jobs(preset: str) -> list[dict[str, str]]:
    """The jobs Hydra's basic sweeper makes of a preset's ``hydra.sweeper.params``."""
    (params,) = preset_sweeps("train", [f"sweep={preset}"])
    parsed = OverridesParser.create().parse_overrides(params)
    (jobs,) = basic_sweeper().split_arguments(parsed, None)
    return [as_settings(j) for j in jobs]


def test_bits_grid_is_dorefa_at_every_w_and_a():
    jobs = basic_sweeper_jobs("bits_grid")
    assert sorted((int(j["quant.wbits"]), int(j["quant.abits"])) for j in jobs) == [
        (w, a) for w in (2, 4, 8) for a in (2, 4, 8)
    ]
    assert compose("train", ["sweep=bits_grid"]).quant.quantizer == "dorefa"


def test_gradient_bits_sweeps_dorefa_g():
    assert [j["quant.gbits"] for j in basic_sweeper_jobs("gradient_bits")] == ["32", "8", "6", "4"]
    assert compose("train", ["sweep=gradient_bits"]).quant.quantizer == "dorefa"


def test_quantizers_is_fp32_once_then_every_quantizer_at_w_equal_a():
    from hydra.utils import instantiate

    sweeper_cfg = compose("train", ["sweep=quantizers"], return_hydra_config=True).hydra.sweeper
    assert sweeper_cfg._target_ == "hydra_plugins.lowbit_sweepers.grids_sweeper.GridsSweeper"
    sweeper = instantiate(sweeper_cfg)  # as Hydra does (after its plugin scan)
    sweeper.hydra_context = SimpleNamespace(config_loader=None)
    jobs = [as_settings(j) for j in sweeper.job_overrides(["seed=3"])]
    assert len(jobs) == 10 and jobs[0] == {"quantizer": "fp32", "seed": "3"}
    quantized = {(j["quantizer"], j["quant.wbits"], j["quant.abits"]) for j in jobs[1:]}
    assert quantized == {
        (q, b, b) for q in ("dorefa", "pact", "pact_symmetric") for b in ("2", "4", "8")
    }
    assert all(j["seed"] == "3" for j in jobs)  # the command line reaches every grid


def sweeper_jobs(preset: str, overrides: list[str], arguments: list[str]) -> list[dict]:
    """The jobs Hydra's sweeper of a preset makes, instantiated as Hydra does (the preset's
    ``${seeds}`` resolved against the composed config), with ``arguments`` on the command line."""
    from hydra.core.plugins import Plugins

    cfg = compose("train", [f"sweep={preset}", *overrides], return_hydra_config=True)
    sweeper = Plugins.instance().instantiate_sweeper(
        hydra_context=hydra_context(),
        task_function=lambda cfg: None,
        config=cfg,
    )
    if hasattr(sweeper, "job_overrides"):  # lowbit's grids sweeper
        return [as_settings(j) for j in sweeper.job_overrides(arguments)]
    parsed = OverridesParser.create().parse_overrides([*sweeper._parse_config(), *arguments])
    (jobs,) = basic_sweeper().split_arguments(parsed, None)
    return [as_settings(j) for j in jobs]


@pytest.mark.parametrize(
    "preset, configurations", [("bits_grid", 9), ("gradient_bits", 4), ("quantizers", 10)]
)
def test_every_grid_preset_runs_each_configuration_at_each_seed(preset, configurations):
    def per_configuration(jobs):
        seeds: dict[tuple, list[str]] = {}
        for j in jobs:
            seeds.setdefault(tuple(sorted((k, v) for k, v in j.items() if k != "seed")), []).append(
                j["seed"]
            )
        return seeds

    default = sweeper_jobs(preset, [], [])
    assert len(default) == configurations and {j["seed"] for j in default} == {"0"}
    for overrides, arguments in [(["seeds=3"], []), ([], ["seed=0,1,2"])]:
        jobs = per_configuration(sweeper_jobs(preset, overrides, arguments))
        assert len(jobs) == configurations
        assert all(sorted(seeds) == ["0", "1", "2"] for seeds in jobs.values())
    assert {j["seed"] for j in sweeper_jobs(preset, [], ["seed=5"])} == {"5"}


def test_a_single_run_has_no_seeds_setting_and_its_seed_is_unchanged():
    cfg = compose("train", [])
    assert "seeds" not in cfg and cfg.seed == 0


def test_acc_vs_size_is_a_two_objective_optuna_search():
    from hydra.utils import instantiate

    cfg = compose("train", ["sweep=acc_vs_size"], return_hydra_config=True)
    assert list(cfg.objectives) == ["val/acc_best", "model/size_bytes"]
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert list(sweeper.direction) == ["maximize", "minimize"]
    assert sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"
    instantiate(sweeper)  # the plugin imports and takes these settings with our Hydra and Optuna


def test_a_preset_needs_a_multirun_and_its_jobs_are_checked_first(capsys):
    for argv, message in [
        (
            ["sweep=bits_grid"],
            "sweep=bits_grid is a sweep preset and needs "
            "a multirun: python train.py -m sweep=bits_grid",
        ),
        (
            ["-m", "sweep=quantizers", "quant.wbits=4"],
            "quantizer=fp32 cannot quantize to quant.wbits=4",
        ),
    ]:
        with pytest.raises(SystemExit) as stopped:
            preflight(argv)
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err


def test_optuna_style_sweeps_are_checked_at_every_choice_and_an_intervals_ends():
    from lowbit.errors import ConfigError

    variants, _ = job_variants(["quant.wbits=choice(2,4)", "optimizer.lr=interval(0.01,0.1)"])
    checked = {override for variant in variants for override in variant}
    assert checked == {"quant.wbits=2", "quant.wbits=4", "optimizer.lr=0.01", "optimizer.lr=0.1"}
    with pytest.raises(ConfigError, match="not glob"):
        job_variants(["quantizer=glob(*)"])


@pytest.mark.parametrize(
    "n_jobs, cores, at_once, threads",
    [
        (-1, 2, 2, 1),  # the default: one job per core, one thread each (not 2 x 2)
        (1, 2, 1, 2),
        (2, 16, 2, 8),
        (-2, 16, 15, 1),  # joblib's negative counts: all cores but one
        (4, 2, 4, 1),  # more jobs than cores: still one thread each
    ],
)
def test_parallel_jobs_share_the_cores(n_jobs, cores, at_once, threads):
    assert job.parallel_jobs(n_jobs, cores) == at_once
    assert job.threads_per_job(cores, at_once) == threads


def test_jobs_hold_different_gpus_and_free_them(tmp_path):
    with job.hold_free_device(tmp_path, 2) as first:
        with job.hold_free_device(tmp_path, 2) as second:
            assert {first, second} == {0, 1}
    with job.hold_free_device(tmp_path, 2) as again:
        assert again == 0


def test_outcome_counts_this_sweeps_jobs_and_names_the_failed(tmp_path):
    old = write_job(tmp_path, 0, "dorefa", 2, 2, status="diverged")  # an earlier sweep's job
    for path in [old / "results.json", old / ".hydra" / "overrides.yaml"]:
        os.utime(path, (1_000_000, 1_000_000))
    write_job(tmp_path, 1, "dorefa", 4, 4, acc=0.9, size=5e5, latency=5.0)
    write_job(tmp_path, 2, "dorefa", 8, 8, status="failed")
    unrecorded = tmp_path / "3_nin-dorefa-w2a8g32-digits" / ".hydra"  # died before results.json
    unrecorded.mkdir(parents=True)
    (unrecorded / "overrides.yaml").write_text("[]\n")
    outcomes = job_outcomes(tmp_path, since=2_000_000)
    assert [o.name.split("_")[0] for o in outcomes] == ["1", "2", "3"]
    assert failure_line(outcomes) == (
        "lowbit: 2 of 3 jobs failed: 2_nin-dorefa-w8a8g32-digits (failed), "
        "3_nin-dorefa-w2a8g32-digits (no results.json)"
    )
    assert failure_line(outcomes[:1]) is None


def test_a_job_of_a_multirun_survives_a_crash_but_not_ctrl_c(monkeypatch, make_cfg, capsys):
    import lowbit.train

    cfg = make_cfg("logger=none", "objectives=[val/acc_best,model/size_bytes]")
    monkeypatch.setattr(job, "in_multirun", lambda: True)
    monkeypatch.setattr(job, "settle_job_settings", lambda cfg: None)

    def crash(cfg):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(lowbit.train, "run", crash)
    values = main_job(cfg)
    assert len(values) == 2 and all(math.isnan(v) for v in values)  # a failed Optuna trial
    err = capsys.readouterr().err
    assert "RuntimeError: CUDA error" in err and "crashed; the sweep goes on" in err

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(lowbit.train, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C stops the whole sweep
        main_job(cfg)


@pytest.mark.parametrize("launcher", ["slurm", "submitit_slurm"])
def test_slurm_launcher_configs_compose_into_an_sbatch_script(launcher, tmp_path, monkeypatch):
    """Up to the submission: the composed settings become the sbatch script's parameters."""
    import submitit
    from hydra.core.plugins import Plugins

    fake_bin = tmp_path / "bin"  # submitit looks for srun before it submits anything
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    cfg = compose(
        "train",
        [
            f"hydra/launcher={launcher}",
            f"hydra.sweep.dir={tmp_path}/sweep",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
        ],
        return_hydra_config=True,
    )
    scripts = []

    class Submitted(Exception):
        pass

    def submit(executor, function, *arguments):
        scripts.append(executor._executor._make_submission_file_text("python train.py", "0"))
        raise Submitted

    monkeypatch.setattr(submitit.AutoExecutor, "map_array", submit)
    slurm = Plugins.instance().instantiate_launcher(
        hydra_context=hydra_context(),
        task_function=lambda cfg: None,
        config=cfg,
    )
    with pytest.raises(Submitted):
        slurm.launch([["quant.wbits=2"], ["quant.wbits=4"]], initial_job_idx=0)
    (script,) = scripts
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=90" in script
    if launcher == "slurm":  # lowbit's preset: one GPU and 8 cores per job
        assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --cpus-per-task=8" in script


def multirun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            *FAST_ARGS,
            *args,
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=600,
        cwd=tmp_path,
    )


# Slow: three jobs in parallel processes (about 27 s); the sequential multirun is in the fast suite.
@pytest.mark.slow
def test_a_joblib_sweep_with_a_diverging_job_finishes_the_others_and_says_so(tmp_path):
    """Three jobs from a union of grids, two at a time with the cores split between them; the
    middle job's learning rate makes its loss NaN. (The basic launcher's path: test_cli.py.)"""
    result = multirun(
        [
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra/sweeper=grids",
            "hydra.sweeper.grids=[{quantizer:fp32,optimizer.lr:0.05},"
            "{quantizer:fp32,optimizer.lr:1e30},{quantizer:dorefa}]",
            "optimizer.nesterov=false",
            "optimizer.momentum=0",
            "trainer.limit_train_batches=4",
            "logger=wandb",
        ],
        tmp_path,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "lowbit: 1 of 3 jobs failed: 1_nin-fp32-w32a32g32-digits (diverged)"
    job_dirs = sorted((tmp_path / "sweep").glob("[0-9]_*"))
    results = [json.loads((d / "results.json").read_text()) for d in job_dirs]
    assert [(r["quant"]["quantizer"], r["status"]) for r in results] == [
        ("fp32", "ok"),
        ("fp32", "diverged"),
        ("dorefa", "ok"),
    ]
    # Two jobs at once: each took its share of the cores (1 thread on 2 cores, not 2).
    expected = job.threads_per_job(job.cpu_cores(), 2)
    assert [results[i]["metrics"]["latency/threads"] for i in (0, 2)] == [expected, expected]
    # One W&B group for the sweep (its folder's name), job type "sweep", the failure tagged.
    for job_dir, outcome in zip(job_dirs, results):
        logged = read_offline_run(next((job_dir / "wandb").glob("offline-run-*")))
        assert (logged.group, logged.job_type) == ("sweep", "sweep")
        assert logged.config["model_name"] == "nin"  # a column next to quant.* in W&B
        assert ("diverged" in logged.tags) == (outcome["status"] == "diverged")
        # Jobs 0 and 1 differ only in the learning rate: the job number tells their runs apart.
        number, run_name = job_dir.name.split("_", 1)
        assert logged.name == f"{run_name}-job{number}"
    # The report shows every job, the failed one included.
    runs = load_runs([tmp_path / "sweep"])
    assert [(r.model, r.dataset, r.status) for r in runs] == [
        ("nin", "digits", r["status"]) for r in results
    ]


@pytest.mark.slow
def test_optuna_search_runs_trials_and_writes_its_pareto_front(tmp_path):
    study = f"hydra.sweeper.storage={tmp_path}/acc_vs_size.log"  # not the repository's study
    result = multirun(
        ["sweep=acc_vs_size", "hydra.sweeper.n_trials=2", "logger=none", study], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lowbit: 2 of 2 jobs ok" in result.stdout
    front = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "solutions:" in front and "quant.wbits" in front
