"""scripts/openvino_forms.py: which part of OpenVINO's form buys what (issue #31)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import ROOT


def forms_script():
    spec = importlib.util.spec_from_file_location(
        "openvino_forms", ROOT / "scripts" / "openvino_forms.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("openvino_forms", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 6.5 s; tests/test_openvino_form.py checks the rewrites in the default suite
def test_a_quick_run_times_every_graph_and_checks_each_rewrite(capsys):
    """YOLOv3-tiny at 128 pixels, one timed run each: every graph in OpenVINO, the ORT-side
    ones in ONNX Runtime, every rewrite checked op by op (a changed output raises NotExact)."""
    pytest.importorskip("openvino")
    script = forms_script()
    argv = ["--quick", "--model", "yolov3_tiny", "--repeats", "1", "--warmup", "0"]
    assert script.main(argv) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    graphs = {(row["runtime"], row["graph"]) for row in rows}
    for form in ("lowbit_qdq", "signed_grids", "float_clips", "openvino_form", "float_outputs"):
        assert ("openvino", f"int8 {form}") in graphs, form
    assert ("onnxruntime", "int8 float_outputs (qdq)") in graphs
    assert ("openvino", "float bf16 (default)") in graphs or (
        "openvino",
        "float fp32 (default)",
    ) in graphs
    for row in rows:
        assert (
            row["ms"] > 0 and row["interval_low"] <= row["over_best_float"] <= row["interval_high"]
        )


def test_bad_counts_are_one_line_and_exit_2(capsys):
    assert forms_script().main(["--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("openvino_forms: error: ")
