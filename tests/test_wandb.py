"""W&B as the dashboard: what a real run, started as a user starts it (python train.py, every
stage on, W&B offline by itself), leaves in its offline W&B files, read back with
tests/wandb_offline.py: the model files as artifacts, the per-layer table, the best-of summaries,
the run's address printed at the start; then scripts/export.py adds to the same run's summary.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, compose_config, run_env
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict
from wandb_offline import md5_base64, read_offline_run, read_table

from lowbit.cli import preflight
from lowbit.config import CONFIG_DIR
from lowbit.detection.wandb_boxes import detection_boxes
from lowbit.errors import ConfigError
from lowbit.export.packing import payload_bytes
from lowbit.tracking import check_logger_config, sweep_unique_name, wandb_logger
from lowbit.wandb_log import (
    BEST_OF,
    LAYER_TABLE_KEY,
    RUNTIMES_TABLE_KEY,
    final_summary,
    log_run_outputs,
    packed_bytes_by_key,
    update_run_summary,
)

NOTES = "a tiny PACT run for the WandB tests"


def offline_env(home: Path) -> dict[str, str]:
    """A training subprocess's environment: no credentials, W&B's own folders under ``home``
    (artifact staging included), so W&B must choose offline by itself."""
    env = run_env()
    env.pop("WANDB_MODE", None)
    env.update(
        NETRC=str(home / "no-netrc"),
        WANDB_CONFIG_DIR=str(home / "config"),
        WANDB_CACHE_DIR=str(home / "cache"),
        WANDB_DATA_DIR=str(home / "data"),
        WANDB_SILENT="true",
    )
    return env


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


FLOAT_RUNTIMES = ("pytorch", "onnxruntime", "openvino")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run through train.py with the default stages, callbacks and logger: two
    epochs of PACT 4-bit so that the validation scores have a history to take the best of."""
    home = tmp_path_factory.mktemp("wandb-home")
    run_dir = tmp_path_factory.mktemp("wandb-run") / "run"
    env = offline_env(home)
    done = cli(
        [
            str(ROOT / "train.py"),
            *FAST,
            "trainer.max_epochs=2",
            "quantizer=pact",
            "quant.wbits=4",
            "quant.abits=4",
            f"logger.wandb.notes='{NOTES}'",
            f"hydra.run.dir={run_dir}",
        ],
        env,
        run_dir.parent,
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "ok", results.get("error")
    return {
        "run_dir": run_dir,
        "results": results,
        "stdout": done.stdout,
        "env": env,
        "logged": read_offline_run(Path(results["wandb"]["dir"])),
    }


def test_the_run_address_is_printed_when_the_run_starts(trained):
    """Before training, not only in the table printed at the end."""
    lines = trained["stdout"].splitlines()
    wandb = trained["results"]["wandb"]
    started = [
        i
        for i, line in enumerate(lines)
        if line.startswith(
            f"lowbit: W&B run {wandb['name']} ({wandb['id']}): offline, "
            f"{wandb['dir']}; upload it with: wandb sync {wandb['dir']}"
        )
    ]
    finished = [
        i
        for i, line in enumerate(lines)
        if line.startswith("lowbit: ") and line.endswith(" finished")
    ]
    assert started and finished and started[0] < finished[0], trained["stdout"][-2000:]


def test_the_packed_model_and_the_int8_onnx_are_artifacts(trained):
    logged, run_dir, results = trained["logged"], trained["run_dir"], trained["results"]
    openvino = (run_dir / "model_int8_openvino.onnx").is_file()  # where OpenVINO is installed
    files = [("packed", "model_packed.safetensors"), ("onnx-int8", "model_int8.onnx")]
    files += [("onnx-int8-openvino", "model_int8_openvino.onnx")] if openvino else []
    for stem, file_name in files:
        artifact = logged.artifact(f"{stem}-{logged.run_id}")
        assert artifact.type == "model"
        entry = artifact.files[file_name]
        # the file the run wrote, and W&B's staged copy that `wandb sync` uploads
        assert entry["digest"] == md5_base64(run_dir / file_name)
        assert entry["size"] == (run_dir / file_name).stat().st_size
        assert md5_base64(Path(entry["local_path"])) == entry["digest"]
        assert artifact.metadata["quant"] == results["quant"]
        assert (
            artifact.metadata["metrics"]["model/size_bytes"]
            == results["metrics"]["model/size_bytes"]
        )
    # The checkpoints stay local unless logger.wandb.log_model asks for them.
    assert {a.name for a in logged.artifacts if a.type == "model"} == {
        f"{stem}-{logged.run_id}" for stem, _ in files
    }


def test_the_per_layer_table_holds_bits_sizes_and_learned_alphas(trained):
    logged, run_dir, results = trained["logged"], trained["run_dir"], trained["results"]
    rows = read_table(logged, LAYER_TABLE_KEY)
    quant = results["quant"]
    assert len({row["layer"] for row in rows}) == len(rows) > 2
    assert all(row["kind"].startswith(("conv", "linear")) for row in rows)
    # first and last layer at their own bits (conf/quantizer/pact.yaml), the others at 4
    assert (rows[0]["wbits"], rows[-1]["wbits"]) == (
        quant["first_layer_bits"],
        quant["last_layer_bits"],
    )
    assert {(row["wbits"], row["abits"]) for row in rows[1:-1]} == {
        (quant["wbits"], quant["abits"])
    }
    assert all(row["gbits"] == quant["gbits"] for row in rows)
    assert all(row["weight_signed"] is True for row in rows)
    assert all(row["input_signed"] is False for row in rows[1:])  # PACT: clip(x, 0, alpha)
    assert sum(row["macs"] for row in rows) == results["metrics"]["model/macs"]
    # Bytes in the packed file: each 4-bit layer's weight takes about an eighth of float32,
    # and the layers with the rest of the file (BatchNorm) add up to its payload exactly.
    packed = run_dir / "model_packed.safetensors"
    by_key = packed_bytes_by_key(packed)
    assert sum(by_key.values()) == payload_bytes(packed)
    layer_bytes = sum(row["packed_bytes"] for row in rows)
    rest = sum(
        size
        for key, size in by_key.items()
        if not any(key.startswith(f"{row['layer']}.") for row in rows)
    )
    assert layer_bytes + rest == payload_bytes(packed)
    for row in rows[1:-1]:
        assert row["packed_bytes"] < row["params"] * 4 / 6
    # PACT's learned clipping level of each layer's input, as results.json records it
    assert {
        row["layer"]: row["alpha"] for row in rows if row["alpha"] is not None
    } == pytest.approx(results["alpha"])


def test_the_summary_keeps_the_best_validation_score(trained):
    logged, results = trained["logged"], trained["results"]
    assert logged.metrics["val/acc"] == ["max", "last"]
    scores = [step["val/acc"] for step in logged.history if "val/acc" in step]
    assert len(scores) == 2  # two epochs
    assert logged.summary["val/acc"] == {
        "max": pytest.approx(max(scores)),
        "last": pytest.approx(scores[-1]),
    }
    assert logged.summary["val/acc"]["max"] == pytest.approx(results["metrics"]["val/acc_best"])
    losses = [step["val/loss"] for step in logged.history if "val/loss" in step]
    assert logged.summary["val/loss"]["min"] == pytest.approx(min(losses))
    assert logged.summary["status"] == "ok"
    assert logged.summary["model/size_bytes"] == results["metrics"]["model/size_bytes"]
    # the best float path is a word beside its number, in the summary as in results.json (#31)
    for key in ("latency/best_float_path", "latency/best_float_ms", "latency/int8_speedup"):
        assert logged.summary[key] == results["metrics"][key], key
    assert logged.summary["latency/best_float_path"].split()[0] in FLOAT_RUNTIMES
    assert logged.notes == NOTES  # a WandbLogger/wandb.init option passed through


@pytest.mark.slow  # a second process, which exports and measures the model again
def test_export_updates_the_same_runs_summary(trained):
    run_dir = trained["run_dir"]
    done = cli(
        [str(ROOT / "scripts" / "export.py"), "--threads", "1", str(run_dir)],
        trained["env"],
        run_dir,
    )
    assert "wandb summary updated: offline, " in done.stdout
    results = json.loads((run_dir / "results.json").read_text())
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # the run's, and the export's continuation of it
    update = read_offline_run(folders[-1])
    pinned = (run_dir / "wandb_id.txt").read_text().strip()
    assert update.run_id == trained["logged"].run_id == pinned
    for key in ("latency/int8_ms", "latency/fp32_ms", "export/top1_agreement"):
        assert update.summary[key] == pytest.approx(results["metrics"][key])
    # a new export is a new version of the ONNX artifact, under the same name
    assert update.artifact(f"onnx-int8-{update.run_id}").files["model_int8.onnx"][
        "digest"
    ] == md5_base64(run_dir / "model_int8.onnx")


@pytest.mark.slow
def test_log_model_uploads_the_best_checkpoint(tmp_path):
    """logger.wandb.log_model=true: Lightning logs the checkpoints at the end of training,
    the best one with the alias "best"."""
    run_dir = tmp_path / "run"
    cli(
        [
            str(ROOT / "train.py"),
            *FAST,
            "trainer.max_epochs=2",
            "export.onnx=false",
            "logger.wandb.log_model=true",
            f"hydra.run.dir={run_dir}",
        ],
        offline_env(tmp_path / "home"),
        tmp_path,
    )
    results = json.loads((run_dir / "results.json").read_text())
    logged = read_offline_run(Path(results["wandb"]["dir"]))
    checkpoints = [a for a in logged.artifacts if a.name == f"model-{logged.run_id}"]
    best = [a for a in checkpoints if "best" in a.aliases]
    assert len(best) == 1
    # Lightning stores it as model.ckpt, naming the file it copied in the metadata: the best
    # epoch's checkpoint, not last.ckpt.
    (entry,) = best[0].files.values()
    original = run_dir / "checkpoints" / best[0].metadata["original_filename"]
    assert original.name.startswith("epoch") and md5_base64(original) == entry["digest"]


# -- options, names, summaries, boxes: no training ------------------------------------------


def test_an_unknown_logger_key_is_one_line_before_any_work(tmp_path, capsys):
    cfg = compose_config(["+logger.wandb.note=typo"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^logger\.wandb\.note: .* did you mean notes\?$"):
        check_logger_config(cfg)
    with pytest.raises(SystemExit) as stopped:
        preflight(["+logger.wandb.log_models=true", f"hydra.run.dir={tmp_path}/run"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "logger.wandb.log_models: " in error and "did you mean log_model?" in error
    assert len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_settings_are_checked_and_passed_through(tmp_path):
    cfg = compose_config(["+logger.wandb.settings.console=sideways"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^logger\.wandb\.settings: .*console"):
        check_logger_config(cfg)
    logger = wandb_logger(
        project="p",
        name="n",
        save_dir=str(tmp_path),
        mode="disabled",
        settings={"console": "wrap"},
        notes="why",
        save_code=False,
    )
    chosen = logger._wandb_init  # what WandbLogger hands to wandb.init
    assert chosen["settings"].console == "wrap" and chosen["settings"].silent is True
    assert (chosen["notes"], chosen["save_code"]) == ("why", False)


def test_jobs_of_a_multirun_get_the_job_number_in_their_name(tmp_path):
    assert sweep_unique_name("nin-pact-w4a4g32-digits") == "nin-pact-w4a4g32-digits"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 3
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_unique_name("nin-pact-w4a4g32-digits") == "nin-pact-w4a4g32-digits-job3"
    finally:
        compose_config([], tmp_path / "run")  # a single run's Hydra config again


def test_the_final_summary_keeps_the_best_of_metrics():
    metrics = {"val/acc": 0.5, "val/acc_best": 0.7, "test/acc": 0.6, "val/loss": 1.0}
    assert final_summary(metrics, "ok") == {"val/acc_best": 0.7, "test/acc": 0.6, "status": "ok"}
    assert set(BEST_OF) >= {"val/acc", "val/map50"}


def test_detection_boxes_are_wandb_native_boxes():
    found = {
        "boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0], [0.0, 0.0, 5.0, 5.0]]),
        "scores": torch.tensor([0.9, 0.1]),
        "labels": torch.tensor([1, 0]),
    }
    truth = {"boxes": torch.tensor([[1.0, 1.0, 9.0, 11.0]]), "labels": torch.tensor([1])}
    boxes = detection_boxes(found, truth, ["circle", "square"], min_score=0.25)
    (predicted,) = boxes["predictions"]["box_data"]  # the 0.1 box is under the threshold
    assert predicted["position"] == {"minX": 1.0, "minY": 2.0, "maxX": 10.0, "maxY": 12.0}
    assert predicted["domain"] == "pixel" and predicted["class_id"] == 1
    assert predicted["scores"]["score"] == pytest.approx(0.9)
    assert predicted["box_caption"] == "square 0.90"
    assert boxes["predictions"]["class_labels"] == {0: "circle", 1: "square"}
    (true_box,) = boxes["ground_truth"]["box_data"]
    assert true_box["box_caption"] == "square" and "scores" not in true_box
    assert math.isclose(true_box["position"]["maxY"], 11.0)
    import wandb

    wandb.Image(torch.zeros(16, 16, 3, dtype=torch.uint8).numpy(), boxes=boxes)  # W&B accepts it


# What a run's export measured (lowbit.export.onnx_run), in the MobileNetV3-Small row (#31).
RUNTIME_METRICS = {
    "latency/ms": 40.0,  # the fake-quant graph's: no runtime's, not in the table
    "latency/int8_ms": 28.2,
    "latency/openvino_int8_ms": 16.2,
    "latency/fp32_ms": 20.0,
    "latency/fp32_onnx_ms": 16.3,
    "latency/openvino_fp32_ms": 14.0,
    "latency/openvino_default_ms": 11.1,
    "latency/openvino_default_precision": "bf16",
    "latency/best_float_ms": 11.1,
    "latency/best_float_path": "openvino bf16",
}
RUNTIME_ROWS = [
    {"runtime": "onnxruntime", "precision": "int8", "ms": 28.2},
    {"runtime": "openvino", "precision": "int8", "ms": 16.2},
    {"runtime": "pytorch", "precision": "fp32", "ms": 20.0},
    {"runtime": "onnxruntime", "precision": "fp32", "ms": 16.3},
    {"runtime": "openvino", "precision": "fp32", "ms": 14.0},
    {"runtime": "openvino", "precision": "bf16", "ms": 11.1},
]


def test_the_runtime_x_precision_latencies_are_a_table(tmp_path):
    """``latency/runtimes``: a row per runtime and precision the export measured, logged with the
    per-layer table after the stages, and again when scripts/export.py measures anew."""
    from torch import nn

    logger = wandb_logger(
        project="lowbit-tests", name="runtimes", save_dir=str(tmp_path), mode="offline"
    )
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    # Bug: the dashboard shows an int8 latency without the float paths that beat it.
    log_run_outputs([logger], model, (1, 8, 8), tmp_path, {"metrics": RUNTIME_METRICS})
    run = logger.experiment
    folder, run_id = Path(run.dir).parent, run.id
    run.finish()
    assert read_table(read_offline_run(folder), RUNTIMES_TABLE_KEY) == RUNTIME_ROWS

    # scripts/export.py, where OpenVINO is not installed: ONNX Runtime and PyTorch only
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({"metrics": {}}))
    measured = {key: RUNTIME_METRICS[key] for key in ("latency/int8_ms", "latency/fp32_onnx_ms")}
    recorded = {"id": run_id, "project": "lowbit-tests", "mode": "offline"}
    update_run_summary(run_dir, recorded, measured)
    (update,) = (run_dir / "wandb").glob("offline-run-*")
    assert read_table(read_offline_run(update), RUNTIMES_TABLE_KEY) == [
        RUNTIME_ROWS[0],
        RUNTIME_ROWS[3],
    ]
