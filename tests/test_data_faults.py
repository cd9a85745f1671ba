"""Faults of the data during a run (issue 32): an image file damaged after the run started, and
NaN or inf values in a training batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data import write_image_folder

from lowbit.cli import EXIT_DATA_FAULT, EXIT_DIVERGED, main_job
from lowbit.data.faults import DataFault, load_image
from lowbit.train import RESULTS_FILE

IMAGE_FOLDER_RUN = [
    "dataset=imagefolder",
    "dataset.num_classes=3",
    "dataset.image_size=32",
    "dataset.batch_size=3",
    "dataset.num_workers=0",
    "trainer.max_epochs=3",
    "logger=none",
]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_file_damaged_mid_run_is_named_and_the_run_keeps_its_metrics(
    make_cfg, tmp_path, capsys, workers
):
    data_dir = tmp_path / "images"
    write_image_folder(data_dir)
    cfg = make_cfg(
        *IMAGE_FOLDER_RUN,
        f"dataset.data_dir={data_dir}",
        f"dataset.num_workers={workers}",
        "+callbacks.damage._target_=faulty_parts.TruncateAfterFirstEpoch",
        f"+callbacks.damage.folder={data_dir / 'train'}",
    )
    run_dir = Path(cfg.paths.output_dir)
    with pytest.raises(SystemExit) as stopped:
        main_job(cfg)
    assert stopped.value.code == EXIT_DATA_FAULT
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("lowbit:")]
    assert line.startswith(f"lowbit: error: the data file {data_dir / 'train'}/")
    assert "cannot be read (" in line and "restore the file" in line
    assert line.endswith(f"then continue with: python train.py resume={run_dir}")
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    assert results["status"] == "failed" and results["failed_stage"] == "train"
    assert [fault["kind"] for fault in results["faults"]] == ["data"]
    assert {"val/acc", "train/loss"} <= set(results["metrics"])  # the first epoch's


def test_load_image_names_a_truncated_file(tmp_path):
    write_image_folder(tmp_path)
    image = next((tmp_path / "train").rglob("*.png"))
    assert load_image(str(image)).size == (48, 40)
    image.write_bytes(image.read_bytes()[:60])
    with pytest.raises(DataFault) as error:
        load_image(str(image))
    assert error.value.line().startswith(f"the data file {image} cannot be read (")


def test_nan_in_a_training_batch_is_blamed_on_the_data(make_cfg, monkeypatch, capsys):
    from lowbit.data.digits import DigitsData

    setup = DigitsData.setup

    def setup_with_a_nan(self, stage=None):
        setup(self, stage)
        images, labels = self.train_set.tensors
        images[:] = images.clone().fill_(float("nan"))  # every training image: the first batch

    monkeypatch.setattr(DigitsData, "setup", setup_with_a_nan)
    cfg = make_cfg("logger=none", "callbacks=none")
    with pytest.raises(SystemExit) as stopped:
        main_job(cfg)
    assert stopped.value.code == EXIT_DIVERGED
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("lowbit:")]
    assert "a training batch holds NaN or inf pixel values at epoch 0, step 0" in line
    results = json.loads((Path(cfg.paths.output_dir) / RESULTS_FILE).read_text())
    assert results["status"] == "diverged" and "pixel values" in results["error"]
