"""The sweep report: runs read from results.json, Pareto fronts, the table, the files, a browser."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from sweep_results import example_sweep, write_job

from lowbit.report import load_runs, markdown_table, pareto_front, write_report
from lowbit.report.runs import RunRecord
from lowbit.report.table import table_cells

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_script(name: str):
    """A script of scripts/ as a module (they are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_script, results_table = load_script("report"), load_script("results_table")


def run(name: str, cost: float, acc: float, status: str = "ok") -> RunRecord:
    return RunRecord(name=name, status=status, metrics={"cost": cost, "acc": acc})


def test_pareto_front_keeps_exactly_the_undominated_runs():
    runs = [run("a", 1, 0.5), run("b", 2, 0.7), run("c", 2, 0.6), run("d", 3, 0.7),
            run("e", 4, 0.9), run("f", 0.5, 0.99, status="diverged"),
            run("g", 5, math.nan), run("h", 6, 0.85)]
    # c: same cost as b, less accurate; d: costlier than b, not more accurate; h: costlier than
    # e and less accurate; f failed and g has no finite accuracy, so neither can be on it.
    assert [r.name for r in pareto_front(runs, "cost", "acc")] == ["a", "b", "e"]


def test_runs_are_read_in_job_order_with_what_they_recorded(tmp_path):
    example_sweep(tmp_path)
    write_job(tmp_path, 10, "dorefa", 2, 4, acc=0.5, size=300_000, latency=5.0)
    runs = load_runs([tmp_path])
    assert [r.name.split("_")[0] for r in runs] == ["0", "1", "2", "3", "4", "5", "10"]
    first = runs[0]
    assert (first.model, first.quantizer, first.bits_label, first.status) == \
        ("nin", "fp32", "32/32/32", "ok")
    assert runs[5].status == "diverged" and runs[5].metric("val/acc_best") is None


def test_table_shows_every_run_and_dashes_what_was_not_recorded(tmp_path):
    example_sweep(tmp_path)
    write_job(tmp_path, 6, "dorefa", 2, 2, acc=0.7, size=270_000, latency=5.0,
              **{"model/bops": 1_234_567, "latency/int8_ms": 0.75})
    headers, rows = table_cells(load_runs([tmp_path]))
    assert headers[:4] == ["run", "model", "quantizer", "W/A/G"]
    assert "BOPs" in headers and headers[-1] == "status"
    # Every latency a run recorded gets a column, the batch-1 one first.
    assert headers.index("latency (ms)") < headers.index("latency int8 (ms)")
    bops = headers.index("BOPs")
    assert [row[bops] for row in rows] == ["-"] * 6 + ["1,234,567"]  # never invented
    assert rows[5][-1] == "diverged" and rows[5][headers.index("val acc (best)")] == "-"
    assert rows[1][headers.index("W/A/G")] == "2/2/32"


def test_report_writes_a_self_contained_page_pngs_and_markdown(tmp_path):
    runs = load_runs([example_sweep(tmp_path / "sweep")])
    files = write_report(runs, tmp_path / "out", title="example")
    page = files.html.read_text()
    # Three figures, inline; nothing that a browser would fetch from elsewhere.
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert page.count("<tr class=") == 6 and "6 runs, 5 ok, 1 failed: 5_nin-dorefa" in page
    # The fronts named under their figures are the ones the data implies (see sweep_results).
    assert ("On the Pareto front (cheapest first): 1_nin-dorefa-w2a2g32-digits (0.8000), "
            "2_nin-dorefa-w4a4g32-digits (0.9000), 4_nin-pact-w4a4g32-digits (0.9300), "
            "0_nin-fp32-w32a32g32-digits (0.9500)") in page
    assert "On the Pareto front (cheapest first): 0_nin-fp32-w32a32g32-digits (0.9500)" in page
    assert sorted(p.name for p in files.figures) == ["accuracy_vs_bits.png",
                                                     "pareto_latency.png", "pareto_size.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in files.figures)
    table = files.markdown.read_text()
    assert table.count("\n| ") == 7  # header + 6 runs
    assert markdown_table(runs) in table


def test_report_script_writes_into_the_sweep_and_refuses_empty_input(tmp_path, capsys):
    sweep = example_sweep(tmp_path / "sweep")
    assert report_script.main([str(sweep)]) == 0
    assert (sweep / "report" / "index.html").is_file()
    assert "6 runs (1 failed)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert report_script.main([str(tmp_path / "empty")]) == 2
    assert report_script.main([str(tmp_path / "missing")]) == 2
    assert "neither a run dir nor a file" in capsys.readouterr().err


def test_results_table_prints_the_same_table(tmp_path, capsys):
    sweep = example_sweep(tmp_path)
    assert results_table.main([str(sweep)]) == 0
    assert capsys.readouterr().out == markdown_table(load_runs([sweep]))


def test_report_imports_no_training_code():
    code = ("import sys, lowbit.report, lowbit.report.wandb_runs; "
            "heavy = [m for m in ('torch', 'pytorch_lightning', 'lowbit.train') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return path


def test_report_page_renders_its_figures_in_a_real_browser(tmp_path):
    from PIL import Image

    sweep = example_sweep(tmp_path / "sweep")
    files = write_report(load_runs([sweep]), tmp_path / "out", title="browser check")
    shot = tmp_path / "shot.png"
    width, height = 1200, 1600
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={width},{height}", f"--screenshot={shot}", files.html.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (width, height)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the page looks blank"
    # The figures were drawn, not shown as broken images: the quantizers' marker colours
    # (DoReFa blue, PACT orange) are on the screen, as is the Pareto front's red.
    present = {rgb for _, rgb in colours}
    for rgb in [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0xD6, 0x27, 0x28)]:
        assert rgb in present, f"colour {rgb} not on the screenshot"
