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

from lowbit.report import (DEPLOYED_LATENCY, default_accuracy, load_runs, markdown_table,
                           pareto_front, write_report)
from lowbit.report.figures import pareto_figure
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


FAKE_QUANT_LABEL = "fake-quant latency (no int8 export)"


def run(name: str, cost: float, acc: float, status: str = "ok") -> RunRecord:
    return RunRecord(name=name, status=status, metrics={"cost": cost, "acc": acc})


def job_numbers(runs) -> list[str]:
    """Runs by their job number, the part of a sweep job's name that the tests choose."""
    return [r.name.split("_")[0] for r in runs]


def column(headers: list[str], rows: list[list[str]], header: str) -> list[str]:
    return [row[headers.index(header)] for row in rows]


def drawn_points(figure) -> dict[str, set[tuple[float, float]]]:
    """The (cost, accuracy) points of a Pareto figure, filled and hollow (a hollow marker has
    no face colour)."""
    points: dict[str, set[tuple[float, float]]] = {"filled": set(), "hollow": set()}
    for collection in figure.axes[0].collections:
        kind = "filled" if len(collection.get_facecolors()) else "hollow"
        points[kind] |= {(round(float(x), 6), round(float(y), 6))
                         for x, y in collection.get_offsets()}
    return points


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_pareto_front_keeps_exactly_the_undominated_runs():
    runs = [run("a", 1, 0.5), run("b", 2, 0.7), run("c", 2, 0.6), run("d", 3, 0.7),
            run("e", 4, 0.9), run("f", 0.5, 0.99, status="diverged"),
            run("g", 5, math.nan), run("h", 6, 0.85)]
    # c: same cost as b, less accurate; d: costlier than b, not more accurate; h: costlier than
    # e and less accurate; f failed and g has no finite accuracy, so neither can be on it.
    assert [r.name for r in pareto_front(runs, "cost", "acc")] == ["a", "b", "e"]


def test_deployed_latency_is_int8_where_recorded_and_marked_fake_quant_elsewhere():
    both = RunRecord("both", "ok", metrics={"latency/int8_ms": 0.5, "latency/ms": 4.0})
    old = RunRecord("old", "ok", metrics={"latency/ms": 4.0})
    nan_export = RunRecord("nan", "ok", metrics={"latency/int8_ms": math.nan, "latency/ms": 4.0})
    neither = RunRecord("neither", "ok", metrics={"latency/fp32_ms": 2.0})
    # Bug: the latency axis is latency/ms (fake-quant) even for runs that have an int8 latency.
    assert DEPLOYED_LATENCY.value(both) == 0.5 and not DEPLOYED_LATENCY.falls_back(both)
    # Bug: a run without an int8 latency drops out, or its stand-in is not known as one.
    for stand_in in (old, nan_export):
        assert DEPLOYED_LATENCY.value(stand_in) == 4.0 and DEPLOYED_LATENCY.falls_back(stand_in)
    assert DEPLOYED_LATENCY.value(neither) is None and not DEPLOYED_LATENCY.falls_back(neither)


def test_latency_front_ranks_runs_by_int8_latency_with_the_fake_quant_stand_in(tmp_path):
    runs = load_runs([example_sweep(tmp_path)])
    # By latency/ms alone the front would be fp32 (0) alone; by int8 only, without 0.
    assert job_numbers(pareto_front(runs, DEPLOYED_LATENCY, "val/acc_best")) == ["3", "4", "0"]


def test_bops_front_keeps_exactly_the_undominated_runs(tmp_path):
    runs = load_runs([example_sweep(tmp_path)])
    # 2 and 4 have the same BOPs and 4 is more accurate; 3 costs more than 4 for less accuracy.
    assert job_numbers(pareto_front(runs, "model/bops", "val/acc_best")) == ["1", "4", "0"]


def test_latency_figure_draws_fake_quant_points_hollow_with_their_own_legend_entry(tmp_path):
    runs = load_runs([example_sweep(tmp_path)])
    figure = pareto_figure(runs, DEPLOYED_LATENCY, "latency", "val/acc_best", "accuracy")
    # Bug: the fake-quant stand-ins look like int8 latencies on the same axis.
    assert drawn_points(figure) == {"filled": {(0.55, 0.9), (0.48, 0.92), (0.6, 0.93)},
                                    "hollow": {(3.0, 0.95), (5.0, 0.8)}}
    assert FAKE_QUANT_LABEL in legend_texts(figure)
    deployed_only = [r for r in runs if not DEPLOYED_LATENCY.falls_back(r)]
    figure = pareto_figure(deployed_only, DEPLOYED_LATENCY, "latency", "val/acc_best", "accuracy")
    assert not drawn_points(figure)["hollow"] and FAKE_QUANT_LABEL not in legend_texts(figure)


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
              **{"latency/fp32_ms": 2.5})
    headers, rows = table_cells(load_runs([tmp_path]))
    assert headers[:4] == ["run", "model", "quantizer", "W/A/G"]
    assert "BOPs" in headers and headers[-1] == "status"
    # The deployed latency first, then every other latency a run recorded.
    assert headers.index("latency int8 (ms)") < headers.index("latency fake-quant (ms)") \
        < headers.index("latency fp32 (ms)")
    assert column(headers, rows, "BOPs") == ["1,024,000,000", "4,000,000", "16,000,000",
                                             "64,000,000", "16,000,000", "-", "-"]  # not invented
    assert rows[5][-1] == "diverged" and rows[5][headers.index("val acc (best)")] == "-"
    assert rows[1][headers.index("W/A/G")] == "2/2/32"


def test_table_marks_fake_quant_latencies_in_the_int8_column_and_explains_the_mark(tmp_path):
    runs = load_runs([example_sweep(tmp_path)])
    headers, rows = table_cells(runs)
    # Bug: the stand-in values are shown unmarked, as if they were int8 latencies.
    assert column(headers, rows, "latency int8 (ms)") == ["3.00†", "5.00†", "0.55", "0.48",
                                                          "0.60", "-"]
    note = f"† {FAKE_QUANT_LABEL}: latency/ms"
    assert note in markdown_table(runs)
    assert note not in markdown_table([r for r in runs if not DEPLOYED_LATENCY.falls_back(r)])


def test_table_of_old_runs_still_has_the_int8_and_bops_columns(tmp_path):
    write_job(tmp_path, 0, "dorefa", 4, 4, acc=0.9, size=508_000, latency=5.5)  # before both
    headers, rows = table_cells(load_runs([tmp_path]))
    assert rows == [[*rows[0][:headers.index("BOPs")], "-", "5.50†", "5.50", "12", "ok"]]
    assert headers[headers.index("BOPs"):] == ["BOPs", "latency int8 (ms)",
                                               "latency fake-quant (ms)", "duration (s)",
                                               "status"]


def test_report_writes_a_self_contained_page_pngs_and_markdown(tmp_path):
    runs = load_runs([example_sweep(tmp_path / "sweep")])
    files = write_report(runs, tmp_path / "out", title="example")
    page = files.html.read_text()
    # Four figures, inline; nothing that a browser would fetch from elsewhere.
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert page.count("<tr class=") == 6 and "6 runs, 5 ok, 1 failed: 5_nin-dorefa" in page
    # The fronts named under their figures are the ones the data implies (see sweep_results).
    assert ("On the Pareto front (cheapest first): 1_nin-dorefa-w2a2g32-digits (0.8000), "
            "2_nin-dorefa-w4a4g32-digits (0.9000), 4_nin-pact-w4a4g32-digits (0.9300), "
            "0_nin-fp32-w32a32g32-digits (0.9500)") in page
    assert ("On the Pareto front (cheapest first): 3_nin-dorefa-w8a8g32-digits (0.9200), "
            "4_nin-pact-w4a4g32-digits (0.9300), 0_nin-fp32-w32a32g32-digits (0.9500). "
            f"Hollow markers (2 of 5 runs): {FAKE_QUANT_LABEL}.") in page
    assert ("On the Pareto front (cheapest first): 1_nin-dorefa-w2a2g32-digits (0.8000), "
            "4_nin-pact-w4a4g32-digits (0.9300), 0_nin-fp32-w32a32g32-digits (0.9500)<") in page
    assert f'<p class="note">† {FAKE_QUANT_LABEL}: latency/ms' in page  # the table's dagger
    assert sorted(p.name for p in files.figures) == ["accuracy_vs_bits.png", "pareto_bops.png",
                                                     "pareto_latency.png", "pareto_size.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in files.figures)
    table = files.markdown.read_text()
    assert table.count("\n| ") == 7  # header + 6 runs
    assert markdown_table(runs) in table


def test_detection_runs_get_map_figures_and_columns_with_the_new_costs(tmp_path):
    for number, (wbits, map50, bops) in enumerate([(8, 0.60, 64e6), (4, 0.62, 16e6),
                                                   (2, 0.40, 4e6)]):
        write_job(tmp_path, number, "dorefa", wbits, wbits, size=5e5, latency=5.0, bops=bops,
                  int8_latency=0.5, model="yolo", **{"val/map50_best": map50})
    runs = load_runs([tmp_path])
    assert default_accuracy(runs) == "val/map50_best"
    assert job_numbers(pareto_front(runs, "model/bops", "val/map50_best")) == ["2", "1"]
    headers, _ = table_cells(runs)
    assert "val mAP@0.5 (best)" in headers and "val acc (best)" not in headers
    assert report_script.main([str(tmp_path)]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Accuracy: validation mAP@0.5 (best epoch)" in page
    assert ("On the Pareto front (cheapest first): 2_yolo-dorefa-w2a2g32-digits (0.4000), "
            "1_yolo-dorefa-w4a4g32-digits (0.6200)<") in page


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
