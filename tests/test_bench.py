"""scripts/bench.py: its sections, the last JSON line, the targets, bad arguments."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT


def bench_module():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_size_section_meets_the_packed_size_target_and_ends_with_json(capsys):
    assert bench_module().main(["--sections", "size", "--check"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    results = json.loads(lines[-1])
    for bits in (2, 4, 8):
        entry = results["size"][f"w{bits}"]
        assert entry["file_bytes"] == entry["payload_bytes"] + entry["header_bytes"]
        assert results["targets"][f"size_payload_over_limit_w{bits}"]["met"]
    assert "latency" not in results and "train_step" not in results


def test_quick_run_of_every_section_reports_every_target(capsys):
    assert bench_module().main(["--quick", "--threads", "1"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(results["targets"]) == set(bench_module().TARGETS)
    # Each ratio is its own time over the reference's, measured in the same run.
    latency, steps = results["latency"], results["train_step"]
    reference_ms = latency["ort_fp32"]["ms"]
    for name, entry in latency.items():
        assert entry["over_ort_fp32"] == pytest.approx(entry["ms"] / reference_ms), name
    for name, entry in steps.items():
        assert entry["ratio"] == pytest.approx(entry["ms"] / steps["fp32"]["ms"]), name
    for name in ("ort_static_qdq", "lowbit_int8_w8a8", "lowbit_int8_w4a4"):
        assert results["latency"][name]["ms"] > 0


def test_unknown_section_is_one_line_and_exit_2(capsys):
    assert bench_module().main(["--sections", "size,speed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown section(s) speed" in err[0]
