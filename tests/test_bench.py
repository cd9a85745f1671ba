"""scripts/bench.py: its sections, the last JSON line, the targets, bad arguments."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT

from lowbit import allocator


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
    # timed under training's allocator setting (lowbit.allocator), wherever glibc has it
    assert results["keep_freed_memory"] is (allocator.glibc() is not None)


def test_quick_run_of_every_section_reports_every_eager_target(capsys):
    bench = bench_module()
    assert bench.main(["--quick", "--threads", "1"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # --quick leaves compiling out: every target but the compiled step's
    compiled = {name for name in bench.TARGETS if name.startswith("step_compiled_")}
    assert compiled and set(results["targets"]) == set(bench.TARGETS) - compiled
    assert results["train_step_modes"] == ["eager"]
    # Each ratio is its own time over the reference's, measured in the same run.
    latency = results["latency"]
    reference_ms = latency["ort_fp32"]["ms"]
    for name, entry in latency.items():
        assert entry["over_ort_fp32"] == pytest.approx(entry["ms"] / reference_ms), name
    for name in ("ort_static_qdq", "lowbit_int8_w8a8", "lowbit_int8_w4a4"):
        assert results["latency"][name]["ms"] > 0
    # the deployed table: every runtime x precision, and int8 against the best float path (#31)
    for model, entry in results["deployed"].items():
        kinds = {kind: [] for kind in ("float", "int8")}
        for key, (_, _, kind) in bench.DEPLOYED_PATHS.items():
            if kind in kinds and key in entry:
                kinds[kind].append((entry[key]["ms"], key))
        if entry["openvino_default_precision"] is not None:  # OpenVINO installed
            assert set(bench.DEPLOYED_PATHS) <= entry.keys(), model
        assert entry["best_float"] == min(kinds["float"])[1]
        assert entry["best_int8"] == min(kinds["int8"])[1]
        assert entry["int8_speedup"] == pytest.approx(
            min(kinds["float"])[0] / min(kinds["int8"])[0]
        )
        # paired: the median of the round-by-round ratios, inside its interval (#31)
        assert entry["rounds"] == 3  # --quick: 3 repeats, one run per round
        assert entry[entry["best_float"]]["paired_over_best_float"]["interval"] == [1.0, 1.0]
        for key in bench.DEPLOYED_PATHS.keys() & entry.keys():
            paired = entry[key]["paired_over_best_float"]
            assert paired["interval"][0] <= paired["median"] <= paired["interval"][1], key
            assert "rounds_ms" not in entry[key]  # each round's times stay out of the JSON
        low, high = entry["int8_speedup_interval"]
        assert low <= entry["int8_speedup_paired"] <= high
        assert 0 < entry["int8_speedup_coverage"] < 1


def test_train_step_section_covers_both_models_and_every_method(capsys):
    bench = bench_module()
    assert bench.main(["--quick", "--sections", "train_step", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    results = json.loads(out[-1])
    steps = results["train_step"]
    assert set(steps) == {"nin", "mobilenetv3_small"}
    for modes in steps.values():
        assert set(modes) == {"eager"}
        entries = modes["eager"]
        assert set(entries) == set(bench.STEP_CONFIGS)
        for name, entry in entries.items():
            assert entry["ratio"] == pytest.approx(entry["ms"] / entries["fp32"]["ms"]), name
            assert "compile_s" not in entry
    assert (
        results["targets"]["step_pact_w4a4_over_fp32"]["value"]
        == steps["nin"]["eager"]["pact_w4a4"]["paired_ratio"]
    )
    assert "size" not in results and "latency" not in results
    assert not any(line.startswith("compile time") for line in out)


def test_unknown_mode_is_one_line_and_exit_2(capsys):
    assert bench_module().main(["--sections", "train_step", "--modes", "eager,jit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown mode(s) jit" in err[0]


def test_unknown_section_is_one_line_and_exit_2(capsys):
    assert bench_module().main(["--sections", "size,speed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown section(s) speed" in err[0]


@pytest.mark.slow  # a second quick train-step run; the default suite times both models above
def test_models_option_times_only_the_named_model(capsys):
    bench = bench_module()
    args = ["--quick", "--sections", "train_step", "--repeats", "1", "--models", "nin"]
    assert bench.main(args) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(results["train_step"]) == {"nin"}
    assert "step_pact_w4a4_over_fp32" in results["targets"]


def test_two_layouts_interleave_every_method_and_compare_each_to_its_nchw_step(capsys):
    # every quantizer's step runs on NCHW and on channels-last models and batches, FP32 too
    bench = bench_module()
    args = ["--quick", "--sections", "train_step", "--repeats", "2", "--models", "nin"]
    assert bench.main([*args, "--layouts", "nchw,nhwc"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    results = json.loads(out[-1])
    assert results["layouts"] == ["nchw", "nhwc"]
    entries = results["train_step"]["nin"]["eager"]
    assert set(entries) == set(bench.STEP_CONFIGS) | {f"{n}@nhwc" for n in bench.STEP_CONFIGS}
    for name in bench.STEP_CONFIGS:
        nchw, nhwc = entries[name], entries[f"{name}@nhwc"]
        assert (nchw["layout"], nhwc["layout"]) == ("nchw", "nhwc")
        assert "over_first_layout" not in nchw
        low, high = nhwc["over_first_layout"]["interval"]
        assert low <= nhwc["over_first_layout"]["median"] <= high
        # each layout's ratios are to the FP32 step of that layout
        assert nhwc["ratio"] == pytest.approx(nhwc["ms"] / entries["fp32@nhwc"]["ms"])
    # the targets read the first layout
    target = results["targets"]["step_pact_w4a4_over_fp32"]
    assert target["value"] == entries["pact_w4a4"]["paired_ratio"]
    assert target["interval"] == entries["pact_w4a4"]["paired_interval"]
    assert any(line.startswith("Training step, 2 threads, NCHW and NHWC") for line in out)


def test_unknown_layout_is_one_line_and_exit_2(capsys):
    assert bench_module().main(["--sections", "train_step", "--layouts", "nchw,nwhc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layouts takes distinct names" in err[0] and "nwhc" in err[0]


def test_a_verdict_within_the_noise_is_neither_met_nor_missed():
    verdict = bench_module().verdict
    assert verdict(1.04, 1.05, [1.01, 1.045]) == "met"
    assert verdict(1.04, 1.05, [1.01, 1.08]) == "within noise"
    assert verdict(1.07, 1.05, [1.03, 1.09]) == "within noise"
    assert verdict(1.07, 1.05, [1.06, 1.09]) == "MISSED"
    assert verdict(0.3, 0.35, None) == "met"


def test_unknown_model_is_one_line_and_exit_2(capsys):
    assert bench_module().main(["--sections", "train_step", "--models", "nin,resnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model(s) resnet" in err[0]


def test_unknown_format_is_one_line_and_exit_2(capsys):
    assert bench_module().main(["--sections", "deployed", "--formats", "qdq,qlinear"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--formats takes distinct names from qdq, qop" in err[0]


def test_deployed_rows_name_the_format_of_lowbits_graph():
    """--formats adds rows named after the format; the default format's keep their names."""
    bench = bench_module()
    assert bench.format_row("lowbit_int8", "qdq") == "lowbit_int8"
    assert bench.format_row("lowbit_int8", "qop") == "lowbit_int8_qop"
    assert bench.deployed_path("lowbit_int8") == ("onnxruntime", "int8 (lowbit qdq)", "int8")
    assert bench.deployed_path("lowbit_int8_qop") == ("onnxruntime", "int8 (lowbit qop)", "int8")
    # OpenVINO runs lowbit's integers in its own form whatever the format (openvino_form)
    assert bench.deployed_path("openvino_lowbit_int8") == (
        "openvino",
        "int8 (lowbit, OpenVINO's form)",
        "int8",
    )
    assert bench.deployed_path("lowbit_int8_float_outputs")[2] == "int8"
    # ORT's own QDQ quantization is not a format of lowbit's
    assert bench.deployed_path("ort_static_qdq") == bench.DEPLOYED_PATHS["ort_static_qdq"]
