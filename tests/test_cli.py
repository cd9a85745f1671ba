"""The command line: bad input gets one clear line and a non-zero exit before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_env, run_train
from wandb_offline import read_offline_run

# Through the real script (a new interpreter each): one case of each kind of check, from the
# command line's shape to a value's range, so the whole path from argv to exit status 2 is seen.
BAD_INPUTS = [
    (
        ["model=resnet9000"],
        "unknown model 'resnet9000': available are mobilenetv3_large, "
        "mobilenetv3_small, nin, yolov3_tiny",
    ),
    (["-m", "quantizer=dorefa", "quant.wbits=2,4,40"], "quant.wbits=40 is not supported"),
    (["seed=-3"], "seed: must be null or an integer >= 0, got -3"),
    (["quant.wbits=2,4", "-m"], "-m must come before the overrides"),
    (["quant.wbitz=4"], "unknown setting 'quant.wbitz'"),
]

# The same checks in-process (test_bad_file_input_gets_one_line_and_exit_2_before_anything_runs:
# expand_resume and preflight, all that train.py does before Hydra starts), which takes a
# fraction of a second where a new interpreter takes several.
ARGV_INPUTS = [
    (["quantizer=ternary"], "unknown quantizer 'ternary'"),
    (["dataset=imagenet22k"], "unknown dataset 'imagenet22k'"),
    (["quantizer=dorefa", "quant.wbits=0"], "quant.wbits=0 is not supported: use 1-16, or 32"),
    (["quantizer=dorefa", "quant.abits=64"], "quant.abits=64 is not supported"),
    (["quantizer=dorefa", "quant.wbits=four"], "quant.wbits must be an integer bit width"),
    (["quant.wbits=4"], "quantizer=fp32 cannot quantize to quant.wbits=4"),
    # braces doubled: the in-process test fills {file} placeholders with str.format
    (["quantizer=dorefa", "quant.overrides={{nope.*:{{wbits:2}}}}"], "matches no Conv2d/Linear"),
    (
        ["dataset=cifar10", "dataset.download=false", "dataset.data_dir=/nonexistent/cifar"],
        "/nonexistent/cifar",
    ),
    (
        ["-m", "quantizer=pact,pact_symmetric", "quant.alpha_lr_mult=10"],
        "write ++key=value for a key that only some of the swept options have",
    ),
    (["quantizer=dorefa", "quant.alpha_init=3"], "unknown setting 'quant.alpha_init'"),
    (["quantizer=pact_symmetric", "quant.abits=1"], "cannot quantize to quant.abits=1"),
    (
        ["quantizer=pact", "quant.weight_quantizer=lsq"],
        "quant.weight_quantizer: must be one of 'dorefa', 'channel_wise_abs_max', got 'lsq'",
    ),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, message):
    result = run_train(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lowbit: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    # Nothing ran: no run dir, so no results.json could claim anything.
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    "args",
    [["seed=-3"], ["-m", "quantizer=dorefa", "quant.wbits=2,4,40"], ["compile=maybe"]],
    ids=" ".join,
)
def test_a_bad_value_is_answered_before_torch_is_imported(args):
    # lowbit.validation.check_values(imports=False) on every job first: the answer comes in
    # well under a second, where importing torch, torchvision and Lightning takes seconds.
    # A multirun is the case to watch: its valid first job must not run the importing checks
    # before the bad third job is seen.
    probe = (
        "import sys\n"
        "from lowbit.cli import preflight\n"
        "try:\n"
        f"    preflight({args!r})\n"
        "except SystemExit as stop:\n"
        "    print(stop.code, 'torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=run_env(), capture_output=True, text=True
    )
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.startswith("lowbit: error: "), result.stderr


# The rest of the catalogue: inputs that need files (data, checkpoints, run dirs) made in the
# test's folder. These run the entry point's two checks in-process (expand_resume, preflight:
# all that train.py does before Hydra starts), which takes a fraction of a second where a new
# interpreter takes several; the list above shows the same path through the real script.
FILE_INPUTS = ARGV_INPUTS + [
    (["quant.gbits=8"], "quantizer=fp32 cannot quantize to quant.gbits=8"),
    (["quantizer=dorefa", "quant.gbits=17"], "quant.gbits=17 is not supported: use 1-16, or 32"),
    (["quantizer=dorefa", "quant.gbits=2.5"], "quant.gbits must be an integer bit width"),
    (["+model.num_classes=100"], "model.num_classes=100 but the dataset has 10 classes"),
    (["hydra.run.dir={a_file}/run"], "cannot write to the output dir"),
    (
        ["dataset=cifar10", "dataset.download=false", "dataset.data_dir={corrupt_cifar}"],
        "is unreadable or not in the cifar10 format",
    ),
    (["ckpt_path={missing_ckpt}"], "no checkpoint file"),
    (["ckpt_path={truncated_ckpt}"], "is truncated or not a PyTorch checkpoint"),
    (["ckpt_path={plain_tensor_ckpt}"], "is not a Lightning checkpoint"),
    (["ckpt_path={code_ckpt}"], "holds more than tensors and plain containers"),
    (["ckpt_path={other_model_ckpt}"], "is one of another model"),
    (["ckpt_path={five_class_ckpt}"], "has shape [5, 192, 1, 1] there and [10, 192, 1, 1] here"),
    # a float checkpoint has no image range and no alphas (16 alpha and calibration entries)
    (
        ["quantizer=pact", "ckpt_path={nin_ckpt}"],
        "19 of this model's weights are not in it (features.0.0.input_quantizer.low",
    ),
    (["resume={missing_dir}"], "no such run dir"),
    (["resume={run_without_ckpt}"], "has no checkpoints/last.ckpt to continue from"),
    (["-m", "resume={nin_run}"], "resume= continues one run: drop -m"),
    (["resume={nin_run}", "ckpt_path={nin_ckpt}"], "resume= and ckpt_path= both given"),
    (["resume={nin_run}", "model=mobilenetv3_small"], "is one of another model"),
    (
        ["model=yolov3_tiny", "dataset=digits"],
        "is a detection model but dataset=digits is a classification data set",
    ),
    (["model=nin", "dataset=shapes_det"], "use a detection model such as model=yolov3_tiny"),
    (["task=detection"], "DetectionTask is for detection but dataset=digits is a classification"),
    (["model=yolov3_tiny", "dataset=shapes_det", "dataset.image_size=100"], "multiple of 32"),
]


class Evil:
    """Unpickling this would create a file: a checkpoint must never get that far."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def lightning_checkpoint(model, path: Path) -> Path:
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "epoch": 0,
            "global_step": 0,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    from lowbit.models.mobilenetv3 import mobilenetv3_small
    from lowbit.models.nin import NIN

    folder = tmp_path_factory.mktemp("bad_inputs")
    files = {"missing_ckpt": folder / "missing.ckpt", "missing_dir": folder / "no_such_run"}
    (folder / "a_file").write_text("a file, not a folder")
    files["a_file"] = folder / "a_file"
    cifar = folder / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (cifar / name).write_bytes(b"\x00not a pickle" * 10)
    files["corrupt_cifar"] = folder / "cifar"
    nin = lightning_checkpoint(NIN(num_classes=10), folder / "nin.ckpt")
    files["nin_ckpt"] = nin
    files["truncated_ckpt"] = folder / "truncated.ckpt"
    files["truncated_ckpt"].write_bytes(nin.read_bytes()[: nin.stat().st_size // 2])
    files["plain_tensor_ckpt"] = folder / "tensor.ckpt"
    torch.save(torch.zeros(3), files["plain_tensor_ckpt"])
    files["code_ckpt"] = folder / "code.ckpt"
    torch.save({"state_dict": {}, "payload": Evil(folder / "code_ran")}, files["code_ckpt"])
    files["other_model_ckpt"] = lightning_checkpoint(
        mobilenetv3_small(num_classes=10), folder / "mbv3.ckpt"
    )
    files["five_class_ckpt"] = lightning_checkpoint(NIN(num_classes=5), folder / "nin5.ckpt")
    files["run_without_ckpt"] = folder / "run_without_ckpt"
    (files["run_without_ckpt"] / ".hydra").mkdir(parents=True)
    run = folder / "nin_run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- logger=none\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(nin.read_bytes())
    files["nin_run"] = run
    return files


@pytest.mark.parametrize(
    "args, message",
    FILE_INPUTS,
    ids=[" ".join(case.values[0] if hasattr(case, "values") else case[0]) for case in FILE_INPUTS],
)
def test_bad_file_input_gets_one_line_and_exit_2_before_anything_runs(
    tmp_path, capsys, bad_files, args, message
):
    from lowbit.cli import expand_resume, preflight

    argv = [arg.format(**bad_files) for arg in args]
    if not any(arg.startswith("hydra.run.dir=") for arg in argv):
        argv.append(f"hydra.run.dir={tmp_path}/run")
    with pytest.raises(SystemExit) as stopped:
        preflight(expand_resume([*argv, "logger=none"]))
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), lines
    assert message in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
    assert not (bad_files["a_file"].parent / "code_ran").exists()  # the pickle ran nothing


def test_catalogue_has_twenty_distinct_cases():
    runnable = [case for case in FILE_INPUTS if not hasattr(case, "marks")]
    assert len(BAD_INPUTS) + len(runnable) >= 20


def test_a_matching_checkpoint_passes_the_checks(make_cfg, bad_files):
    from lowbit.train import check_config

    check_config(make_cfg(f"ckpt_path={bad_files['nin_ckpt']}", "logger=none"))


def test_nan_loss_stops_the_run_with_exit_3_and_status_diverged(tmp_path):
    result = run_train(
        [
            "optimizer.lr=1e30",
            "optimizer.nesterov=false",
            "optimizer.momentum=0",
            "callbacks=none",
            *FAST_ARGS,
        ],
        tmp_path,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("lowbit:")]
    assert len(lines) == 1 and "run diverged: training loss is nan" in lines[0], result.stderr
    assert "lower optimizer.lr" in lines[0] and "Traceback" not in result.stderr
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["status"] == "diverged"


FAST_ARGS = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "dataset.batch_size=16",
    "latency.repeats=2",
    "trainer.enable_progress_bar=false",
]


def test_multirun_sweeps_bits_and_finishes_each_wandb_run(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            "quantizer=dorefa",
            "quant.wbits=2,4",
            *FAST_ARGS,
            f"hydra.sweep.dir={tmp_path}/sweep",
            "callbacks=none",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    loaded = [json.loads(path.read_text()) for path in results]
    assert sorted(r["quant"]["wbits"] for r in loaded) == [2, 4]
    assert all(r["status"] == "ok" for r in loaded)
    # the jobs share one process: each one's start-up counts from its own start
    assert [r["startup"]["from"] for r in loaded] == ["job start", "job start"]
    # One W&B run per job, each finished with its own summary.
    ids = {r["wandb"]["id"] for r in loaded}
    assert len(ids) == 2
    for r in loaded:
        logged = read_offline_run(next(Path(r["run_dir"], "wandb").glob("offline-run-*")))
        assert logged.config["quant"]["wbits"] == r["quant"]["wbits"]
        assert logged.summary["model/size_bytes"] == r["metrics"]["model/size_bytes"]
    assert "nin-dorefa-w2a4g32-digits" in result.stdout  # the end-of-run table names the run


@pytest.mark.slow  # the non-default loggers; W&B, the default, is in the fast suite
@pytest.mark.parametrize(
    "logger, produced",
    [("csv", "csv/version_0/metrics.csv"), ("tensorboard", "tensorboard/version_0")],
)
def test_csv_and_tensorboard_loggers_write_their_files(tmp_path, logger, produced):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"logger={logger}",
            *FAST_ARGS,
            f"hydra.run.dir={tmp_path}/run",
            "callbacks=none",
        ],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / produced).exists()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "ok"
