"""The foundation's accuracy claims, re-measured (slow: about 4 minutes on 2 CPU cores).

Run with `make test-slow`. Same configs as `make train` and the README's DoReFa W4A4 row.
"""

from __future__ import annotations

import pytest

from lowbit.train import run

pytestmark = pytest.mark.slow


def test_default_run_and_dorefa_w4a4_reach_the_readme_accuracies(make_cfg):
    fp32 = run(make_cfg("logger=none", fast=False, name="fp32"))["metrics"]
    w4a4 = run(make_cfg("quantizer=dorefa", "quant.wbits=4", "quant.abits=4", "logger=none",
                        fast=False, name="w4a4"))["metrics"]
    assert fp32["val/acc_best"] >= 0.95
    assert w4a4["val/acc_best"] >= fp32["val/acc_best"] - 0.02
    assert w4a4["model/compression"] > 7
