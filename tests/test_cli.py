"""The command line: bad input gets one clear line and a non-zero exit before any work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT, run_env

BAD_INPUTS = [
    (["model=resnet9000"], "unknown model 'resnet9000': available are nin"),
    (["quantizer=ternary"], "unknown quantizer 'ternary'"),
    (["dataset=imagenet22k"], "unknown dataset 'imagenet22k'"),
    (["quantizer=dorefa", "quant.wbits=0"], "quant.wbits=0 is not supported: use 1-16, or 32"),
    (["quantizer=dorefa", "quant.abits=64"], "quant.abits=64 is not supported"),
    (["quantizer=dorefa", "quant.wbits=four"], "quant.wbits must be an integer bit width"),
    (["quant.wbits=4"], "quantizer=fp32 cannot quantize to quant.wbits=4"),
    (["-m", "quantizer=dorefa", "quant.wbits=2,4,40"], "quant.wbits=40 is not supported"),
    (["quantizer=dorefa", "quant.overrides={nope.*:{wbits:2}}"], "matches no Conv2d/Linear"),
    (["dataset=cifar10", "dataset.download=false", "dataset.data_dir=/nonexistent/cifar"],
     "/nonexistent/cifar"),
    (["seed=-3"], "seed must be a non-negative integer"),
    (["quant.wbitz=4"], "Could not override 'quant.wbitz'"),
]


def run_train(args, tmp_path):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={tmp_path}/run",
         f"hydra.sweep.dir={tmp_path}/sweep", "logger=none"],
        capture_output=True, text=True, env=run_env(), timeout=300, cwd=tmp_path,
    )


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
