"""End to end: real configs through lowbit.train.run, results.json and W&B's offline files."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import MODEL_DATA, nin_macs, nin_params
from wandb_offline import read_offline_run

from lowbit.cli import config_groups
from lowbit.train import RESULTS_FILE, run

DEPLOYED_KEYS = {
    "latency/int8_ms",
    "latency/fp32_onnx_ms",
    "latency/fp32_ms",
    "export/int8_onnx_bytes",
}
SUMMARY_KEYS = {
    "val/acc_best",
    "test/acc",
    "model/params",
    "model/size_bytes",
    "model/size_limit_bytes",
    "model/size_fp32_bytes",
    "model/compression",
    "model/macs",
    "model/bops",
    "latency/ms",
    "export/top1_agreement",
    *DEPLOYED_KEYS,
}
DETECTION_SUMMARY_KEYS = {
    "val/map50_best",
    "val/map50",
    "val/map",
    "test/map50",
    "test/map",
    "export/map50_int8",
    "export/map50_fake_quant",
    *(SUMMARY_KEYS - {"val/acc_best", "test/acc", "export/top1_agreement"}),
}
QUANTIZERS = config_groups()["quantizer"]
MODELS = config_groups()["model"]


def every_model_and_quantizer() -> list:
    """Every model x quantizer; MobileNetV3-Large with its preset quantizer only by default and
    with the others in ``make test-slow``: its blocks are MobileNetV3-Small's, which runs every
    quantizer here, at about twice the time (every stage, export included, still runs for
    every model and every quantizer in the default suite)."""
    return [
        pytest.param(
            model,
            quantizer,
            marks=(pytest.mark.slow,)
            if model == "mobilenetv3_large" and quantizer != "pact_symmetric"
            else (),
            id=f"{quantizer}-{model}",
        )
        for quantizer in QUANTIZERS
        for model in MODELS
    ]


@pytest.mark.parametrize("model, quantizer", every_model_and_quantizer())
def test_fast_dev_run_every_model_and_quantizer(make_cfg, model, quantizer):
    """The user's default pipeline, every stage on (measure, pack, integer export), for every
    model and quantizer: each run ends ok with an integer ONNX model and its deployed costs."""
    cfg = make_cfg(
        f"model={model}",
        f"quantizer={quantizer}",
        "logger=none",
        "callbacks=none",
        "+trainer.fast_dev_run=true",
        "dataset.batch_size=8",
        *MODEL_DATA.get(model, []),
    )
    results = run(cfg)
    assert results["status"] == "ok", results.get("error")
    expected = DETECTION_SUMMARY_KEYS if model in MODEL_DATA else SUMMARY_KEYS
    assert expected <= set(results["metrics"])
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "model_int8.onnx").stat().st_size == results["metrics"][
        "export/int8_onnx_bytes"
    ]
    written = json.loads((run_dir / RESULTS_FILE).read_text())
    assert written["status"] == "ok" and written["quant"]["quantizer"] == quantizer
    # the export is checked on the one val batch a fast_dev_run validates on, and says so
    assert results["metrics"]["export/agreement_images"] == 8


@pytest.mark.parametrize(
    "quantizer, layout, nhwc",
    [("dorefa", None, True), ("pact", None, True), ("lsq", None, True)]
    + [("dorefa", "channels_last=false", False)],
)
def test_training_runs_nhwc_by_default_and_measures_the_model_in_nchw(
    make_cfg, quantizer, layout, nhwc
):
    """channels_last (true by default): the training forward sees NHWC weights and batches,
    and every stage after it (measure, pack, integer export) runs as in an NCHW run;
    channels_last=false trains NCHW."""
    import lowbit.tasks.base

    seen = []
    original = lowbit.tasks.base.QuantTrainingTask.forward

    def spy(self, x):
        if self.training:
            weight = next(p for p in self.model.parameters() if p.dim() == 4)
            seen.append(weight.is_contiguous(memory_format=torch.channels_last))
        return original(self, x)

    cfg = make_cfg(
        f"quantizer={quantizer}",
        "quant.gbits=8" if quantizer == "dorefa" else "quant.wbits=4",
        *([layout] if layout else []),
        "logger=none",
        "callbacks=none",
        "+trainer.fast_dev_run=true",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lowbit.tasks.base.QuantTrainingTask, "forward", spy)
        results = run(cfg)
    assert results["status"] == "ok", results.get("error")
    # the first conv's weight was NHWC (or NCHW) in every training forward
    assert seen and all(layout_nhwc == nhwc for layout_nhwc in seen)
    assert SUMMARY_KEYS <= set(results["metrics"])


def test_quantized_model_is_smaller_and_reported(make_cfg):
    fp32 = run(
        make_cfg("logger=none", "callbacks=none", "+trainer.fast_dev_run=true", name="fp32")
    )["metrics"]
    w4_cfg = make_cfg(
        "quantizer=dorefa",
        "quant.wbits=4",
        "logger=none",
        "callbacks=none",
        "+trainer.fast_dev_run=true",
        name="w4",
    )
    w4 = run(w4_cfg)["metrics"]
    assert fp32["model/params"] == w4["model/params"] == nin_params()
    assert fp32["model/size_limit_bytes"] == fp32["model/size_fp32_bytes"] == nin_params() * 4
    # measured: the packed file, which also holds BatchNorm statistics and a header
    packed = Path(w4_cfg.paths.output_dir) / "model_packed.safetensors"
    assert w4["model/size_bytes"] == packed.stat().st_size
    assert fp32["model/size_bytes"] > fp32["model/size_limit_bytes"]
    assert w4["model/compression"] > 5  # 4-bit inner layers, 8-bit first/last, fp32 rest
    assert w4["model/macs"] == fp32["model/macs"] == nin_macs()
    assert fp32["model/bops"] == nin_macs() * 32 * 32
    assert w4["model/bops"] < fp32["model/bops"] / 30  # the 8-bit stem on the image dominates


def test_a_run_hides_lightnings_leafspec_notice(make_cfg):
    # Lightning warns on every optimizer step about torch's LeafSpec, its own business; a run
    # filters that one message (and only it) so that a user's console stays readable.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(make_cfg("logger=none", "callbacks=none", "+trainer.fast_dev_run=true"))
    assert not [w for w in caught if "LeafSpec" in str(w.message)]


def test_a_run_trains_under_lowbits_allocator_setting(make_cfg, monkeypatch):
    # lowbit.allocator: freed CPU buffers reused, not faulted in again every step (its own tests
    # count the page faults); a run applies it before the model is built
    import lowbit.train

    calls = []
    monkeypatch.setattr(lowbit.train, "keep_freed_memory", lambda: calls.append(True))
    run(make_cfg("logger=none", "callbacks=none", "+trainer.fast_dev_run=true"))
    assert calls == [True]


def test_a_run_exports_integer_onnx_and_records_its_latency_and_agreement(make_cfg):
    cfg = make_cfg(
        "quantizer=dorefa",
        "quant.wbits=4",
        "logger=none",
        "callbacks=none",
        "export.onnx=true",
        "export.threads=1",
    )
    metrics = run(cfg)["metrics"]
    output_dir = Path(cfg.paths.output_dir)
    assert (output_dir / "model_int8.onnx").stat().st_size == metrics["export/int8_onnx_bytes"]
    assert (output_dir / "model_fp32.onnx").is_file()
    assert metrics["latency/int8_ms"] > 0 and metrics["latency/fp32_ms"] > 0
    assert metrics["latency/export_threads"] == 1
    # on the 2 val batches of 16 the trainer validates on (limit_val_batches=2); an untrained
    # (2-batch) model still agrees on most of them
    assert metrics["export/agreement_images"] == 32
    assert 0.9 <= metrics["export/top1_agreement"] <= 1.0


def test_a_model_without_a_packed_form_still_finishes_without_a_measured_size(make_cfg):
    """1-bit DoReFa weights (Eq. 7) have no exact packed form yet: the run is still ok, with
    the computed limit but no measured size rather than a made-up one."""
    cfg = make_cfg(
        "quantizer=dorefa",
        "quant.wbits=1",
        "logger=none",
        "callbacks=none",
        "+trainer.fast_dev_run=true",
    )
    results = run(cfg)
    assert results["status"] == "ok"
    assert "model/size_bytes" not in results["metrics"]
    metrics = results["metrics"]
    assert metrics["model/size_limit_bytes"] < metrics["model/size_fp32_bytes"]
    assert not (Path(cfg.paths.output_dir) / "model_packed.safetensors").exists()


def test_wandb_runs_offline_by_itself_and_logs_summary_and_quant_config(make_cfg):
    cfg = make_cfg(
        "quantizer=dorefa",
        "quant.wbits=4",
        "quant.abits=4",
        "quant.gbits=8",
        "logger=wandb",
        "callbacks=none",
        "group=unit-test",
        "tags=[probe]",
    )
    results = run(cfg)
    assert results["wandb"]["mode"] == "offline"
    (run_dir,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    logged = read_offline_run(run_dir)
    assert logged.run_id == results["wandb"]["id"]
    assert SUMMARY_KEYS <= set(logged.summary), sorted(logged.summary)
    assert logged.summary["model/size_bytes"] == results["metrics"]["model/size_bytes"]
    assert logged.summary["val/acc_best"] == pytest.approx(results["metrics"]["val/acc_best"])
    assert logged.summary["status"] == "ok"
    quant = logged.config["quant"]
    assert quant["quantizer"] == "dorefa" and quant["wbits"] == 4 and quant["gbits"] == 8
    assert logged.config["quantizer"] == "dorefa"
    assert logged.group == "unit-test"
    assert logged.tags == ["dorefa", "w4a4g8", "nin", "digits", "scratch", "probe"]
    assert any("train/loss" in step for step in logged.history)


def test_same_seed_gives_the_same_metrics_and_seed_zero_counts(make_cfg):
    def metrics(seed, name):
        out = run(
            make_cfg(
                f"seed={seed}",
                "quantizer=dorefa",
                "quant.gbits=4",
                "logger=none",
                "callbacks=none",
                name=name,
            )
        )["metrics"]
        return {k: v for k, v in out.items() if not k.startswith("latency/")}

    first, again, other = metrics(0, "a"), metrics(0, "b"), metrics(1, "c")
    assert first == again
    assert first["train/loss"] != other["train/loss"]


def test_nan_loss_stops_the_run_as_diverged(make_cfg):
    from lowbit.tasks.base import Diverged

    cfg = make_cfg(
        "optimizer.lr=1e30",
        "optimizer.nesterov=false",
        "optimizer.momentum=0",
        "logger=none",
        "callbacks=none",
        "trainer.limit_train_batches=4",
    )
    with pytest.raises(Diverged):
        run(cfg)
    written = json.loads((Path(cfg.paths.output_dir) / RESULTS_FILE).read_text())
    assert written["status"] == "diverged" and "loss is nan" in written["error"].lower()


def test_a_config_error_leaves_a_failed_results_json_not_a_success(make_cfg):
    from lowbit.errors import ConfigError

    cfg = make_cfg("quantizer=dorefa", "quant.wbits=99", "logger=none")
    output_dir = Path(cfg.paths.output_dir)
    with pytest.raises(ConfigError):  # checked before anything is made: no folder, no record
        run(cfg)
    assert not output_dir.exists()
    output_dir.mkdir(parents=True)  # a sweep job's folder, which Hydra makes before the job
    with pytest.raises(ConfigError):
        run(cfg)
    written = json.loads((output_dir / RESULTS_FILE).read_text())
    assert written["status"] == "failed" and "quant.wbits=99" in written["error"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["quantizer=pact", "quant.wbits=4", "quant.abits=4"],
        ["model=yolov3_tiny", "quantizer=dorefa", "quant.wbits=4", *MODEL_DATA["yolov3_tiny"]],
    ],
    ids=["classification", "detection"],
)
def test_a_task_rebuilds_from_its_checkpoint_with_identical_outputs(make_cfg, tmp_path, overrides):
    """A task's hyperparameters are in its checkpoint, loaded with weights_only=True: with the
    model rebuilt from the run's config, load_from_checkpoint gives the trained task back."""
    import pytorch_lightning as pl
    import torch

    from lowbit.build import build_datamodule, build_quantized_model, build_task

    cfg = make_cfg(*overrides, "dataset.batch_size=8")
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule, build_quantized_model(cfg, datamodule))
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule)
    checkpoint = tmp_path / "task.ckpt"
    trainer.save_checkpoint(checkpoint)

    loaded = type(task).load_from_checkpoint(
        checkpoint, model=build_quantized_model(cfg, build_datamodule(cfg)), weights_only=True
    )
    assert dict(loaded.hparams) == dict(task.hparams)
    assert loaded.hparams["num_classes"] == datamodule.num_classes
    images = next(iter(datamodule.val_dataloader()))[0]
    task.eval(), loaded.eval()
    with torch.no_grad():
        expected, got = task(images), loaded(images)
    for want, have in zip(*(o if isinstance(o, (list, tuple)) else [o] for o in (expected, got))):
        assert torch.equal(want, have)
