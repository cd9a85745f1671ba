"""Starting from trained weights (init=) and post-training quantization (trainer.max_epochs=0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, compose_config
from safetensors.torch import save_file
from wandb_offline import read_offline_run

from lowbit.errors import ConfigError
from lowbit.models.nin import NIN
from lowbit.pretrained import load_initial_weights
from lowbit.results import PACKED_FILE, RESULTS_FILE, STATUS_OK
from lowbit.train import run


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory) -> Path:
    """A finished FP32 NIN run on digits, every stage on, as a user's first run leaves it."""
    output_dir = tmp_path_factory.mktemp("source") / "fp32"
    run(compose_config([*FAST, "logger=none"], output_dir))
    return output_dir


def best_ckpt(run_dir: Path) -> Path:
    (best,) = [p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    return best


def saved_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def results_of(run_dir: Path) -> dict:
    return json.loads((run_dir / RESULTS_FILE).read_text())


def test_ptq_from_a_run_dir_ends_ok_with_an_export_and_records_its_source(fp32_run, tmp_path):
    out = tmp_path / "ptq"
    cfg = compose_config(
        [*FAST, "logger=none", "quantizer=lsq", "trainer.max_epochs=0", f"init={fp32_run}"], out
    )
    results = run(cfg, out)
    assert results["status"] == STATUS_OK and results["start"] == "ptq"
    assert (out / "model_int8.onnx").is_file() and (out / PACKED_FILE).is_file()
    # evaluation computes what the integer graph computes (issue #27): every prediction agrees
    assert results["metrics"]["export/top1_agreement"] == 1.0
    assert results["arithmetic"]["version"] == 2
    assert len(results["arithmetic"]["integer_layers"]) == 8  # every conv but NIN's last
    assert {"val/acc", "test/acc", "model/size_bytes"} <= set(results["metrics"])
    source = results["init"]
    assert source["weights_file"] == str(best_ckpt(fp32_run))
    assert source["run_name"] == results_of(fp32_run)["run_name"]
    assert source["metric"] == "val/acc_best"
    assert source["metric_value"] == results_of(fp32_run)["metrics"]["val/acc_best"]
    assert results["calibration"]["quantizers"] == 9  # NIN's nine convs
    assert not (out / "checkpoints").exists()  # PTQ trains nothing, so saves no checkpoint
    # LSQ's activation steps came from the calibration, not the class default of 1.0
    assert all(v != 1.0 for k, v in results["step"].items() if not k.endswith(".weight"))


def nin_from(init: str | Path, num_classes: int = 10) -> NIN:
    model = NIN(num_classes=num_classes)
    load_initial_weights(model, str(init))
    return model


def test_init_from_a_run_dir_a_ckpt_and_safetensors_loads_the_run_s_weights(fp32_run, tmp_path):
    expected = saved_weights(best_ckpt(fp32_run))
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in expected.items()}, str(plain))
    for source in (fp32_run, best_ckpt(fp32_run), plain):
        state = nin_from(source).state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected), source
    # the packed file stores BatchNorm as its eval affine map: every conv weight is the run's,
    # and the model computes what the run's model computes
    packed = nin_from(fp32_run / PACKED_FILE)
    assert torch.equal(packed.state_dict()["features.4.0.weight"], expected["features.4.0.weight"])
    reference = nin_from(fp32_run).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(packed.eval()(images), reference(images), rtol=1e-5, atol=1e-5)


def test_qat_from_fp32_trains_from_the_weights_with_fresh_state_and_logs_the_source(
    fp32_run, tmp_path
):
    """W&B stays on (the default): the run's config names where its weights came from."""
    out = tmp_path / "qat"
    cfg = compose_config([*FAST, "quantizer=pact", f"init={fp32_run}"], out)
    results = run(cfg, out)
    assert results["status"] == STATUS_OK and results["start"] == "init"
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # one epoch of this run, not the source's count going on
    # PACT's alpha came from the calibration: far below the paper's init of 10
    assert all(0 < alpha < 10 for alpha in results["alpha"].values())
    (offline,) = (out / "wandb").glob("offline-run-*")
    logged = read_offline_run(offline)
    assert logged.config["start"] == "init" and "init" in logged.tags
    # Resumed, it continues from its own checkpoint: nothing loaded or calibrated again, and
    # the source is still recorded, so the report keeps it with its siblings.
    more = [*FAST[1:], "trainer.max_epochs=2", "logger=none", "quantizer=pact"]
    resumed = run(compose_config([*more, f"init={fp32_run}", f"resume={out}"], out), out)
    assert resumed["status"] == STATUS_OK and "calibration" not in resumed
    assert resumed["init"]["run_name"] == results["init"]["run_name"]
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert logged.config["init_source"]["run_name"] == results_of(fp32_run)["run_name"]


BAD_STARTS = [
    (["init=/nonexistent/run"], "init=/nonexistent/run: no such file or folder"),
    (["init={empty_dir}"], "holds no weights"),
    (["init={notes}"], "must be a .ckpt or a .safetensors"),
    (["model=mobilenetv3_small", "init={fp32_run}"], "the first layer that differs is stem.conv"),
    (["init={five_classes}"], "the first layer that differs is features.10.0"),
    (["trainer.max_epochs=0", "quantizer=lsq"], "trainer.max_epochs=0 is post-training"),
    (["init={fp32_run}", "ckpt_path={ckpt}"], "init= and ckpt_path= both given"),
    (["resume={fp32_run}", "init={fp32_run}"], "resume= and init= both given"),
    (["init=torchvision:resnet50"], "init=torchvision:resnet50: unknown model"),
]


@pytest.fixture
def bad_sources(fp32_run, tmp_path) -> dict[str, Path]:
    (tmp_path / "empty").mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    five = tmp_path / "five.safetensors"
    save_file(NIN(num_classes=5).state_dict(), str(five))
    return {
        "empty_dir": tmp_path / "empty",
        "notes": notes,
        "five_classes": five,
        "fp32_run": fp32_run,
        "ckpt": best_ckpt(fp32_run),
    }


@pytest.mark.parametrize("args, message", BAD_STARTS, ids=[" ".join(a) for a, _ in BAD_STARTS])
def test_a_bad_start_gets_one_line_and_exit_2_before_anything_runs(
    tmp_path, capsys, bad_sources, args, message
):
    from lowbit.cli import expand_resume, preflight

    argv = [arg.format(**bad_sources) for arg in args] + [f"hydra.run.dir={tmp_path}/run"]
    with pytest.raises(SystemExit) as stopped:
        preflight(expand_resume([*argv, "logger=none"]))
    assert stopped.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), lines
    assert message.format(**bad_sources) in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_a_quantized_source_loads_its_weights_and_leaves_its_quantizer_state(tmp_path):
    from lowbit.quant import quantize_model

    source = quantize_model(NIN(num_classes=10), quantizer="lsq", wbits=4, abits=4, gbits=32)
    path = tmp_path / "lsq.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = nin_from(path)
    assert torch.equal(loaded.state_dict()["features.1.0.weight"], source.features[1][0].weight)
    with pytest.raises(ConfigError, match="first layer that differs is features.10.0"):
        nin_from(path, num_classes=7)


def test_the_ptq_vs_qat_preset_checks_every_job_and_needs_its_fp32_run(fp32_run, tmp_path, capsys):
    from lowbit.cli import preflight

    sweep = f"hydra.sweep.dir={tmp_path}/sweep"
    preflight(["-m", "sweep=ptq_vs_qat", f"fp32_run={fp32_run}", "logger=none", sweep])
    with pytest.raises(SystemExit) as stopped:
        preflight(["-m", "sweep=ptq_vs_qat", "logger=none", sweep])
    assert stopped.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("lowbit: error: fp32_run must be given"), line


@pytest.mark.slow
def test_the_ptq_vs_qat_preset_runs_its_three_starts_from_one_fp32_run(fp32_run, tmp_path):
    """The preset as the docs run it (one seed, a few batches per job): 13 jobs, all ok, and
    the report draws the starts' verdicts."""
    import subprocess
    import sys

    from conftest import ROOT, run_env

    args = ["-m", "sweep=ptq_vs_qat", f"fp32_run={fp32_run}", "seeds=1", *FAST[1:]]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.sweep.dir={tmp_path}/sweep"],
        capture_output=True,
        text=True,
        env=run_env(),
        timeout=1800,  # 13 jobs, each measured and exported
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "sweep").rglob(RESULTS_FILE)]
    assert len(records) == 13 and all(r["status"] == STATUS_OK for r in records)
    starts = [r["start"] for r in records]
    assert (starts.count("ptq"), starts.count("init"), starts.count("scratch")) == (5, 4, 4)
    assert all("init" not in r for r in records if r["start"] == "scratch")


def test_the_fp32_model_evaluated_as_ptq_is_the_source_unchanged(fp32_run, tmp_path):
    """The ptq_vs_qat sweep's reference row: nothing to calibrate, so BatchNorm is left as
    trained and the source's best validation accuracy comes back exactly."""
    out = tmp_path / "fp32"
    cfg = compose_config([*FAST, "logger=none", "trainer.max_epochs=0", f"init={fp32_run}"], out)
    results = run(cfg, out)
    assert results["calibration"]["quantizers"] == 0
    assert results["metrics"]["val/acc"] == results_of(fp32_run)["metrics"]["val/acc_best"]
