"""The sweep report: runs read from results.json, configurations over seeds with their statistics
and verdicts, Pareto fronts, the tables, the files, a browser."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script
from sweep_results import SEEDED_ACCURACIES, example_sweep, seeded_sweep, write_job

from lowbit.report import (
    DEPLOYED_LATENCY,
    configurations_markdown,
    default_accuracy,
    group_configurations,
    load_runs,
    markdown_table,
    pareto_front,
    write_report,
)
from lowbit.report.comparisons import draw_comparisons, verdict_line, verdict_lines
from lowbit.report.figures import best_float_references, bits_figure, pareto_figure
from lowbit.report.runs import INT8_PATHS, RunRecord
from lowbit.report.stats import CANNOT_TELL, EXCEEDS, WITHIN, summarize, welch
from lowbit.report.table import configuration_cells, table_cells

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    no face colour); error bars are line collections, not markers."""
    from matplotlib.collections import PathCollection

    points: dict[str, set[tuple[float, float]]] = {"filled": set(), "hollow": set()}
    for collection in figure.axes[0].collections:
        if not isinstance(collection, PathCollection):
            continue
        kind = "filled" if len(collection.get_facecolors()) else "hollow"
        points[kind] |= {
            (round(float(x), 6), round(float(y), 6)) for x, y in collection.get_offsets()
        }
    return points


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_pareto_front_keeps_exactly_the_undominated_runs():
    runs = [
        run("a", 1, 0.5),
        run("b", 2, 0.7),
        run("c", 2, 0.6),
        run("d", 3, 0.7),
        run("e", 4, 0.9),
        run("f", 0.5, 0.99, status="diverged"),
        run("g", 5, math.nan),
        run("h", 6, 0.85),
    ]
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
    runs = group_configurations(load_runs([example_sweep(tmp_path)]))
    figure = pareto_figure(runs, DEPLOYED_LATENCY, "latency", "val/acc_best", "accuracy")
    # Bug: the fake-quant stand-ins look like int8 latencies on the same axis.
    assert drawn_points(figure) == {
        "filled": {(0.55, 0.9), (0.48, 0.92), (0.6, 0.93)},
        "hollow": {(3.0, 0.95), (5.0, 0.8)},
    }
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
    assert (first.model, first.quantizer, first.bits_label, first.status) == (
        "nin",
        "fp32",
        "32/32/32",
        "ok",
    )
    assert runs[5].status == "diverged" and runs[5].metric("val/acc_best") is None


def test_table_shows_every_run_and_dashes_what_was_not_recorded(tmp_path):
    example_sweep(tmp_path)
    write_job(
        tmp_path, 6, "dorefa", 2, 2, acc=0.7, size=270_000, latency=5.0, **{"latency/fp32_ms": 2.5}
    )
    headers, rows = table_cells(load_runs([tmp_path]))
    assert headers[:4] == ["run", "model", "quantizer", "W/A/G"]
    assert "BOPs" in headers and headers[-1] == "status"
    # The deployed latency first, then every other latency a run recorded.
    assert (
        headers.index("latency int8 (ms)")
        < headers.index("latency fake-quant (ms)")
        < headers.index("latency fp32 (ms)")
    )
    assert column(headers, rows, "BOPs") == [
        "1,024,000,000",
        "4,000,000",
        "16,000,000",
        "64,000,000",
        "16,000,000",
        "-",
        "-",
    ]  # not invented
    assert rows[5][-1] == "diverged" and rows[5][headers.index("val acc (best)")] == "-"
    assert rows[1][headers.index("W/A/G")] == "2/2/32"


def test_table_marks_fake_quant_latencies_in_the_int8_column_and_explains_the_mark(tmp_path):
    runs = load_runs([example_sweep(tmp_path)])
    headers, rows = table_cells(runs)
    # Bug: the stand-in values are shown unmarked, as if they were int8 latencies.
    assert column(headers, rows, "latency int8 (ms)") == [
        "3.00†",
        "5.00†",
        "0.55",
        "0.48",
        "0.60",
        "-",
    ]
    note = f"† {FAKE_QUANT_LABEL}: latency/ms"
    assert note in markdown_table(runs)
    assert note not in markdown_table([r for r in runs if not DEPLOYED_LATENCY.falls_back(r)])


def test_table_of_old_runs_still_has_the_int8_and_bops_columns(tmp_path):
    write_job(tmp_path, 0, "dorefa", 4, 4, acc=0.9, size=508_000, latency=5.5)  # before both
    headers, rows = table_cells(load_runs([tmp_path]))
    assert rows == [[*rows[0][: headers.index("BOPs")], "-", "5.50†", "5.50", "12", "ok"]]
    assert headers[headers.index("BOPs") :] == [
        "BOPs",
        "latency int8 (ms)",
        "latency fake-quant (ms)",
        "duration (s)",
        "status",
    ]


def test_report_writes_a_self_contained_page_pngs_and_markdown(tmp_path):
    runs = load_runs([example_sweep(tmp_path / "sweep")])
    files = write_report(runs, tmp_path / "out", title="example")
    page = files.html.read_text()
    # Four figures, inline; nothing that a browser would fetch from elsewhere.
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', page)
    # 6 configuration rows (one seed each), then 6 run rows.
    assert page.count('<tr class="configuration"') == 5 and page.count("<tr class=") == 12
    assert "6 runs, 5 ok, 1 failed: 5_nin-dorefa" in page
    # The fronts named under their figures are the ones the data implies (see sweep_results).
    assert (
        "On the Pareto front of the means (cheapest first): dorefa W2A2 (0.8000, n = 1), "
        "dorefa W4A4 (0.9000, n = 1), pact W4A4 (0.9300, n = 1), "
        "fp32 (0.9500, n = 1)"
    ) in page
    assert (
        "On the Pareto front of the means (cheapest first): dorefa W8A8 (0.9200, n = 1), "
        "pact W4A4 (0.9300, n = 1), fp32 (0.9500, n = 1). "
        f"Hollow markers (2 of 5 configurations): {FAKE_QUANT_LABEL}."
    ) in page
    assert (
        "On the Pareto front of the means (cheapest first): dorefa W2A2 (0.8000, n = 1), "
        "pact W4A4 (0.9300, n = 1), fp32 (0.9500, n = 1)<"
    ) in page
    # One seed per configuration: the one comparison it draws (PACT vs DoReFa at W4A4) and the
    # adjacent bits (DoReFa 2 -> 4 -> 8) cannot be judged.
    assert "3 comparisons: 0 exceed the noise, 0 within noise, 3 cannot tell" in page
    assert (
        "pact W4A4 vs dorefa W4A4: +3.0 points (n = 1 vs 1): cannot tell, one seed: no "
        "spread to compare against"
    ) in page
    assert f'<p class="note">† {FAKE_QUANT_LABEL}: latency/ms' in page  # the table's dagger
    assert sorted(p.name for p in files.figures) == [
        "accuracy_vs_bits.png",
        "pareto_bops.png",
        "pareto_latency.png",
        "pareto_size.png",
    ]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in files.figures)
    table = files.markdown.read_text()
    assert table.count("\n| ") == 7  # header + 6 runs
    assert markdown_table(runs) in table


def test_detection_runs_get_map_figures_and_columns_with_the_new_costs(tmp_path):
    for number, (wbits, map50, bops) in enumerate(
        [(8, 0.60, 64e6), (4, 0.62, 16e6), (2, 0.40, 4e6)]
    ):
        write_job(
            tmp_path,
            number,
            "dorefa",
            wbits,
            wbits,
            size=5e5,
            latency=5.0,
            bops=bops,
            int8_latency=0.5,
            model="yolo",
            **{"val/map50_best": map50},
        )
    runs = load_runs([tmp_path])
    assert default_accuracy(runs) == "val/map50_best"
    assert job_numbers(pareto_front(runs, "model/bops", "val/map50_best")) == ["2", "1"]
    headers, _ = table_cells(runs)
    assert "val mAP@0.5 (best)" in headers and "val acc (best)" not in headers
    assert report_script.main([str(tmp_path)]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Accuracy: validation mAP@0.5 (best epoch)" in page
    assert (
        "On the Pareto front of the means (cheapest first): dorefa W2A2 (0.4000, n = 1), "
        "dorefa W4A4 (0.6200, n = 1)<"
    ) in page


def test_report_script_writes_into_the_sweep_and_refuses_empty_input(tmp_path, capsys):
    sweep = example_sweep(tmp_path / "sweep")
    assert report_script.main([str(sweep)]) == 0
    assert (sweep / "report" / "index.html").is_file()
    assert "6 runs (1 failed)" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert report_script.main([str(tmp_path / "empty")]) == 2
    assert report_script.main([str(tmp_path / "missing")]) == 2
    assert "neither a run dir nor a file" in capsys.readouterr().err


def test_results_table_prints_the_same_tables(tmp_path, capsys):
    sweep = seeded_sweep(tmp_path)
    assert results_table.main([str(sweep)]) == 0
    assert capsys.readouterr().out == configurations_markdown(
        group_configurations(load_runs([sweep]))
    )
    assert results_table.main(["--runs", str(sweep)]) == 0
    assert capsys.readouterr().out == markdown_table(load_runs([sweep]))


def test_mean_interval_is_students_t_with_n_minus_1_degrees_of_freedom():
    summary = summarize([1.0, 2.0, 3.0])
    # sd 1; t(0.975, 2) = 4.3027 (any t table), so the half width is 4.3027 / sqrt(3).
    assert (summary.n, summary.mean, summary.sd) == (3, 2.0, 1.0)
    assert summary.ci_low == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-4)
    assert summary.ci_high == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-4)
    one = summarize([0.9])  # one seed: a mean, no spread
    assert (one.n, one.mean, one.sd, one.ci_low, one.half_width) == (1, 0.9, None, None, None)
    assert summarize([]) is None


def test_welch_difference_matches_the_formula_and_scipys_test():
    from scipy.stats import ttest_ind

    a, b = [0.85, 0.87, 0.89], [0.80, 0.82, 0.84]
    difference = welch(summarize(a), summarize(b))
    # Equal sd 0.02 and n 3: se = sqrt(2 * 0.0004 / 3), Welch's dof = 4, t(0.975, 4) = 2.7764.
    se = math.sqrt(2 * 0.0004 / 3)
    assert difference.delta == pytest.approx(0.05)
    assert difference.dof == pytest.approx(4.0)
    assert difference.ci_low == pytest.approx(0.05 - 2.7764 * se, abs=1e-4)
    assert difference.ci_high == pytest.approx(0.05 + 2.7764 * se, abs=1e-4)
    assert difference.p_value == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert difference.verdict == EXCEEDS
    # Unequal variances and counts: the same p as scipy's Welch test, and within noise.
    a, b = [0.90, 0.95, 0.91, 0.97], [0.92, 0.89]
    difference = welch(summarize(a), summarize(b))
    assert difference.p_value == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue)
    assert difference.verdict == WITHIN and difference.ci_low < 0 < difference.ci_high
    for one_side in ([0.9], [0.5]):
        assert welch(summarize(one_side), summarize(b)).verdict == CANNOT_TELL
    assert welch(summarize([0.9, 0.9]), summarize([0.8, 0.8])).verdict == CANNOT_TELL


def test_runs_that_differ_only_in_their_seed_are_one_configuration(tmp_path):
    seeded_sweep(tmp_path / "a", seeds=(0, 1))
    seeded_sweep(tmp_path / "b", seeds=(0, 1, 2))  # seeds 0 and 1 again: repeats, left out
    write_job(tmp_path / "c", 0, "pact", 2, 2, status="diverged", seed=3)
    configurations = group_configurations(load_runs([tmp_path]))
    assert [c.name for c in configurations] == [
        "dorefa W2A2",
        "dorefa W4A4",
        "pact W2A2",
        "pact W4A4",
    ]
    for c in configurations:
        assert sorted(c.seeds) == [0, 1, 2] and len(c.repeats) == 2
        expected = SEEDED_ACCURACIES[(c.quantizer, c.bits("wbits"))]
        assert c.summary("val/acc_best").mean == pytest.approx(sum(expected) / 3)
        assert c.summary("val/acc_best").n == 3
    pact2 = configurations[2]
    assert [r.status for r in pact2.failed] == ["diverged"]
    headers, rows = configuration_cells(configurations)
    assert rows[2][headers.index("seeds")] == "3 (1 failed, 2 repeated)"
    # Every numeric metric is summarised, the seed-dependent latency with a spread.
    latency = configurations[0].summary("latency/int8_ms")
    assert latency.mean == pytest.approx(0.51) and latency.sd == pytest.approx(0.01)


def test_a_setting_besides_the_seed_makes_another_configuration(tmp_path):
    for number, (seed, first_bits) in enumerate([(0, 8), (1, 8), (0, 4)]):
        job = write_job(tmp_path, number, "dorefa", 2, 2, acc=0.8, size=2e5, latency=5.0, seed=seed)
        payload = json.loads((job / "results.json").read_text())
        payload["quant"]["first_layer_bits"] = first_bits
        (job / "results.json").write_text(json.dumps(payload))
    configurations = group_configurations(load_runs([tmp_path]))
    assert sorted((c.name, c.n) for c in configurations) == [
        ("dorefa W2A2 (first_layer_bits=4)", 1),
        ("dorefa W2A2 (first_layer_bits=8)", 2),
    ]


def test_old_runs_take_their_seed_from_the_config_hydra_saved(tmp_path):
    job = write_job(tmp_path, 0, "dorefa", 2, 2, acc=0.8, size=2e5, latency=5.0)  # no seed
    (job / ".hydra" / "config.yaml").write_text("seed: 7\nquant:\n  wbits: 2\n")
    recorded = write_job(tmp_path, 1, "dorefa", 4, 4, acc=0.9, size=3e5, latency=5.0, seed=0)
    (recorded / ".hydra" / "config.yaml").write_text("seed: 7\n")  # results.json's wins
    bare = write_job(tmp_path, 2, "pact", 4, 4, acc=0.9, size=3e5, latency=5.0)
    assert not (bare / ".hydra" / "config.yaml").exists()
    assert [r.seed for r in load_runs([tmp_path])] == [7, 0, None]


def test_seeded_sweep_report_has_four_rows_intervals_error_bars_and_verdicts(tmp_path):
    """The issue's check: 2 quantizers x 2 bit widths x 3 seeds."""
    runs = load_runs([seeded_sweep(tmp_path / "sweep")])
    files = write_report(runs, tmp_path / "out", title="seeds")
    page = files.html.read_text()
    assert page.count('<tr class="configuration"') == 4
    assert "12 runs, 12 ok; 4 configurations, 3 seeds each" in page
    # PACT W2A2: 0.87 +- t(0.975, 2) * 0.02 / sqrt(3).
    half = 4.3027 * 0.02 / math.sqrt(3)
    assert f"[{0.87 - half:.4f}, {0.87 + half:.4f}]" in page
    # Each comparison with its verdict: quantizers at each bits, then adjacent bits.
    assert "4 comparisons: 3 exceed the noise, 1 within noise, 0 cannot tell" in page
    from scipy.stats import ttest_ind

    se = math.sqrt(2 * 0.0004 / 3)
    p_value = ttest_ind(
        SEEDED_ACCURACIES[("pact", 2)], SEEDED_ACCURACIES[("dorefa", 2)], equal_var=False
    ).pvalue
    assert (
        f"pact W2A2 vs dorefa W2A2: +5.0 points, 95% CI [+{100 * (0.05 - 2.7764 * se):.1f}, "
        f"+{100 * (0.05 + 2.7764 * se):.1f}] (n = 3 vs 3, p = {p_value:.3f}): "
        "exceeds noise"
    ) in page
    assert "pact W4A4 vs dorefa W4A4: +0.5 points, 95% CI [" in page
    assert "(n = 3 vs 3, p = 0.5" in page and "): within noise</li>" in page
    assert "dorefa W4A4 vs dorefa W2A2: +9.0 points" in page
    assert "pact W4A4 vs pact W2A2: +4.5 points" in page
    assert "Welch&#x27;s t test" in page and "within noise" in page
    # Files with every metric's summary and every comparison.
    summaries = list(csv.DictReader(files.tables[0].open()))
    assert {row["metric"] for row in summaries} >= {
        "val/acc_best",
        "latency/int8_ms",
        "model/bops",
        "test/acc",
    }
    assert len(list(csv.DictReader(files.tables[1].open()))) == 4


def test_figures_draw_means_with_95_percent_error_bars(tmp_path):
    configurations = group_configurations(load_runs([seeded_sweep(tmp_path)]))
    figure = pareto_figure(configurations, "model/size_bytes", "size", "val/acc_best", "acc")
    assert drawn_points(figure)["filled"] == {
        (30_000 * bits + 200_000, round(sum(accs) / 3, 6))
        for (_, bits), accs in SEEDED_ACCURACIES.items()
    }
    bars = [
        segment
        for collection in figure.axes[0].collections
        if not hasattr(collection, "get_sizes") or not len(collection.get_sizes())
        for segment in collection.get_segments()
    ]
    vertical = sorted(round(float(s[1][1] - s[0][1]), 6) for s in bars if s[0][0] == s[1][0])
    # One vertical bar per configuration, each twice the 95% half width of its mean.
    expected = sorted(round(2 * c.summary("val/acc_best").half_width, 6) for c in configurations)
    assert vertical == expected and all(v > 0 for v in vertical)
    panels = bits_figure(configurations, "val/acc_best", "acc").axes
    assert len(panels) == 2 and all(axes.containers for axes in panels)  # errorbar containers


def test_one_seed_each_cannot_tell_and_long_lists_are_truncated(tmp_path):
    configurations = group_configurations(load_runs([seeded_sweep(tmp_path, seeds=(0,))]))
    comparisons = draw_comparisons(configurations, "val/acc_best")
    assert len(comparisons) == 4
    assert all(c.difference.verdict == CANNOT_TELL for c in comparisons)
    assert "cannot tell, one seed" in verdict_line(comparisons[0])
    lines = verdict_lines(comparisons, limit=3)
    assert len(lines) == 4 and lines[-1].startswith("... and 1 more (truncated")


def test_a_verdict_counts_the_failed_seeds_it_leaves_out_of_the_means(tmp_path):
    sweep = seeded_sweep(tmp_path)
    write_job(sweep, 12, "pact", 2, 2, status="diverged", seed=3)
    configurations = group_configurations(load_runs([sweep]))
    lines = [verdict_line(c) for c in draw_comparisons(configurations, "val/acc_best")]
    with_failure = [line for line in lines if "pact W2A2" in line]
    assert len(with_failure) == 2 and len(lines) == 4
    assert "pact W2A2 vs dorefa W2A2: +5.0 points" in with_failure[0]
    assert all(
        "n = 3 + 1 failed vs 3" in line or "n = 3 vs 3 + 1 failed" in line for line in with_failure
    )
    assert all(line.endswith("; the failed runs are not in the means") for line in with_failure)
    assert not any("failed" in line for line in lines if "pact W2A2" not in line)


def test_report_script_aggregates_over_several_sweep_folders_or_their_parent(tmp_path, capsys):
    first, second = seeded_sweep(tmp_path / "s0", seeds=(0,)), tmp_path / "s1"
    seeded_sweep(second, seeds=(1, 2))
    seeded_sweep(tmp_path / "rerun" / "s0", seeds=(0,))  # seed 0 again, deeper down
    assert report_script.main([str(first), str(second), "--out", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "4 configurations, 3 seeds each" in page and "lowbit report: s0 and 1 more" in page
    assert report_script.main([str(tmp_path), "--out", str(tmp_path / "parent")]) == 0
    page = (tmp_path / "parent" / "index.html").read_text()
    assert "4 configurations, 3 seeds each; 4 repeated seeds left out" in page
    assert "configurations.md" in capsys.readouterr().out


def test_report_imports_no_training_code():
    code = (
        "import sys, lowbit.report, lowbit.report.wandb_runs; "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lowbit.train') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
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

    sweep = seeded_sweep(tmp_path / "sweep")
    files = write_report(load_runs([sweep]), tmp_path / "out", title="browser check")
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    # The page as the browser parsed it: the four configurations and each verdict.
    dom = subprocess.run(
        [*browser, "--dump-dom", files.html.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('<tr class="configuration"') == 4, dom[-2000:]
    assert dom.count("<li class=") == 4 and dom.count('class="exceeds"') == 3
    shot = tmp_path / "shot.png"
    width, height = 1200, 2600  # down to the first figures, below the tables and verdicts
    result = subprocess.run(
        [*browser, f"--window-size={width},{height}", f"--screenshot={shot}", files.html.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
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


def test_a_tiny_p_value_is_written_as_an_upper_bound_never_as_zero():
    from lowbit.report.comparisons import p_text

    assert p_text(0.00001) == "p < 0.001"
    assert p_text(0.0005) == "p = 0.001"  # rounds up, so three decimals are honest
    assert p_text(0.042) == "p = 0.042"


def test_runs_trained_differently_are_two_configurations_however_alike_their_quantizers(tmp_path):
    """Seeds are pooled only across runs that trained alike: a 4-epoch and an 8-epoch run of
    one quantizer are two rows, labelled by the setting they differ in; where a run ran
    (trainer.devices) does not split them."""

    def saved(job: Path, epochs: int, devices: int) -> None:
        (job / ".hydra" / "config.yaml").write_text(
            f"trainer:\n  max_epochs: {epochs}\n  devices: {devices}\nseed: 0\n"
        )

    saved(write_job(tmp_path, 0, "pact", 2, 2, acc=0.90, size=1000, seed=0), epochs=4, devices=1)
    saved(write_job(tmp_path, 1, "pact", 2, 2, acc=0.92, size=1000, seed=1), epochs=4, devices=2)
    saved(write_job(tmp_path, 2, "pact", 2, 2, acc=0.97, size=1000, seed=0), epochs=8, devices=1)
    configurations = group_configurations(load_runs([tmp_path]))
    assert sorted((c.distinct, len(c.counted)) for c in configurations) == [
        ("trainer.max_epochs=4", 2),
        ("trainer.max_epochs=8", 1),
    ]
    # A quantizer is compared with another only where both trained alike.
    saved(write_job(tmp_path, 3, "dorefa", 2, 2, acc=0.80, size=1000, seed=0), epochs=8, devices=1)
    configurations = group_configurations(load_runs([tmp_path]))
    drawn = draw_comparisons(configurations, "val/acc_best")
    assert [(c.kind, c.better.distinct, c.worse.quantizer) for c in drawn] == [
        ("quantizers", "trainer.max_epochs=8", "dorefa")
    ]


def test_a_setting_left_null_pools_with_runs_made_before_the_key_existed(tmp_path):
    old = write_job(tmp_path, 0, "lsq", 4, 4, acc=0.90, size=1000, seed=0)
    (old / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 8\nseed: 0\n")
    for job, (seed, clip) in enumerate([(1, "null"), (2, "null"), (0, "1.0")], start=1):
        new = write_job(tmp_path, job, "lsq", 4, 4, acc=0.9 + job / 100, size=1000, seed=seed)
        (new / ".hydra" / "config.yaml").write_text(
            f"trainer:\n  max_epochs: 8\n  gradient_clip_val: {clip}\nseed: {seed}\n"
        )
    configurations = group_configurations(load_runs([tmp_path]))
    assert sorted((c.distinct, c.seeds) for c in configurations) == [
        ("trainer.gradient_clip_val=1.0", [0]),
        ("trainer.gradient_clip_val=null", [0, 1, 2]),
    ]


def test_a_setting_that_tells_namesakes_apart_reads_as_a_command_line_override(tmp_path):
    for job, clip in enumerate(["null", "1.0"]):
        folder = write_job(tmp_path, job, "lsq", 4, 4, acc=0.9, size=1000, seed=0)
        (folder / ".hydra" / "config.yaml").write_text(
            f"trainer:\n  gradient_clip_val: {clip}\nseed: 0\n"
        )
    configurations = group_configurations(load_runs([tmp_path]))
    assert sorted(c.name for c in configurations) == [
        "lsq W4A4 (trainer.gradient_clip_val=1.0)",
        "lsq W4A4 (trainer.gradient_clip_val=null)",
    ]


def test_ptq_qat_from_fp32_and_from_scratch_are_three_configurations_compared_per_bits(tmp_path):
    """The ptq_vs_qat sweep's three starts at one bit width: three rows, and a verdict between
    each pair of starts (never between two quantizers that started differently)."""
    accuracies = {"ptq": (0.50, 0.52, 0.51), "init": (0.90, 0.91, 0.92), None: (0.80, 0.82, 0.81)}
    number = 0
    for start, values in accuracies.items():
        for seed, acc in enumerate(values):
            job = write_job(tmp_path, number, "lsq", 2, 2, acc=acc, size=1000, seed=seed)
            payload = json.loads((job / "results.json").read_text())
            payload["start"] = start or "scratch"
            if start:
                payload["init"] = {"run_name": "nin-fp32-w32a32g32-digits", "spec": "x"}
            (job / "results.json").write_text(json.dumps(payload))
            number += 1
    configurations = group_configurations(load_runs([tmp_path]))
    assert sorted(c.name for c in configurations) == [
        "lsq W2A2 (init=nin-fp32-w32a32g32-digits, start=init)",
        "lsq W2A2 (init=nin-fp32-w32a32g32-digits, start=ptq)",
        "lsq W2A2 (init=null, start=null)",  # from scratch
    ]
    comparisons = draw_comparisons(configurations, "val/acc_best")
    assert sorted(c.kind for c in comparisons) == ["starts"] * 3
    best = max(comparisons, key=lambda c: c.difference.delta)
    assert "start=init" in best.better.name and "start=ptq" in best.worse.name
    assert best.difference.delta == pytest.approx(0.40)


def test_csv_table_prints_the_chosen_columns_of_the_chosen_rows(tmp_path, capsys):
    table = tmp_path / "configurations.csv"
    table.write_text(
        "configuration,metric,n,mean\n"
        "lsq W2A2,val/acc_best,3,0.81234567\n"
        "lsq W2A2,test/acc,3,0.5\n"
        "lsq W4A4,val/acc_best,2,0.97\n"
    )
    script = load_script("csv_table")
    assert (
        script.main([str(table), "configuration", "n", "mean", "--where", "metric=val/acc_best"])
        == 0
    )
    assert capsys.readouterr().out.splitlines() == [
        "| configuration | n | mean |",
        "|---|---|---|",
        "| lsq W2A2 | 3 | 0.8123 |",
        "| lsq W4A4 | 2 | 0.9700 |",
    ]
    assert script.main([str(table), "nope"]) == 2
    assert "has no column nope" in capsys.readouterr().err


def test_a_run_that_recorded_no_source_counts_as_from_scratch():
    from lowbit.report.runs import start_settings

    assert start_settings({"start": "scratch"}) == {}
    assert start_settings({}) == {}  # runs made before lowbit recorded starts
    assert start_settings({"start": "init"}) == {}  # nothing loaded, whatever init= said
    assert start_settings({"start": "ptq", "init": {"run_name": "fp32-run", "spec": "x"}}) == {
        "start": "ptq",
        "init": "fp32-run",
    }


def test_runs_of_different_arithmetic_never_pool(tmp_path):
    # issue #27: evaluation computes in integers from arithmetic 2 on; a run made before
    # recorded none and evaluated in float (arithmetic 1)
    for number, (seed, version) in enumerate([(0, None), (1, None), (0, 2), (1, 2)]):
        job = write_job(tmp_path, number, "dorefa", 2, 2, acc=0.8, size=2e5, latency=5.0, seed=seed)
        payload = json.loads((job / "results.json").read_text())
        if version is not None:
            payload["arithmetic"] = {"version": version}
        (job / "results.json").write_text(json.dumps(payload))
    configurations = group_configurations(load_runs([tmp_path]))
    assert sorted((c.name, c.n) for c in configurations) == [
        ("dorefa W2A2 (arithmetic=1)", 2),
        ("dorefa W2A2 (arithmetic=2)", 2),
    ]
    # one verdict between the two arithmetic versions, and none of another kind
    comparisons = draw_comparisons(configurations, "val/acc_best")
    assert [c.kind for c in comparisons] == ["arithmetic"]
    fp32 = write_job(tmp_path / "f", 0, "fp32", 32, 32, acc=0.9, size=8e5, latency=5.0, seed=0)
    assert "arithmetic" not in load_runs([fp32])[0].settings


# -- mixed precision on the fronts (#29), the latency axis and the best float path (#31) ------


def drawn_markers(figure) -> dict[str, set[tuple[float, float]]]:
    """The (cost, accuracy) points of a Pareto figure by marker shape: "o" for circles, "D"
    for diamonds (a scatter keeps its marker as the path of every point)."""
    from matplotlib.collections import PathCollection
    from matplotlib.markers import MarkerStyle

    shapes = {}
    for name in ("o", "D"):
        style = MarkerStyle(name)
        shapes[name] = style.get_path().transformed(style.get_transform()).vertices
    points: dict[str, set[tuple[float, float]]] = {name: set() for name in shapes}
    for collection in figure.axes[0].collections:
        if not isinstance(collection, PathCollection):
            continue
        (path,) = collection.get_paths()
        (shape,) = [
            name
            for name, vertices in shapes.items()
            if vertices.shape == path.vertices.shape
            and (abs(vertices - path.vertices) < 1e-9).all()
        ]
        points[shape] |= {
            (round(float(x), 6), round(float(y), 6)) for x, y in collection.get_offsets()
        }
    return points


def mixed_sweep(sweep_dir: Path, mixed: bool = True) -> Path:
    """LSQ at W2A4 and W4A4 and, with ``mixed``, one allocation between them in size, BOPs and
    latency, more accurate than W4A4: on every front, between the two uniform points."""
    costs = {2: (300_000, 8e6, 0.50), 4: (500_000, 16e6, 0.60)}
    for number, (wbits, acc) in enumerate([(2, 0.80), (4, 0.90)]):
        size, bops, latency = costs[wbits]
        write_job(
            sweep_dir, number, "lsq", wbits, 4, acc=acc, size=size, latency=5.0,
            int8_latency=latency, bops=bops,
        )  # fmt: skip
    if mixed:
        write_job(
            sweep_dir, 2, "lsq", 4, 4, acc=0.92, size=400_000, latency=5.0, int8_latency=0.55,
            bops=12e6, allocation="alloc_400kb.yaml",
        )  # fmt: skip
    return sweep_dir


@pytest.mark.parametrize(
    "cost, mixed_point",
    [
        ("model/size_bytes", (400_000, 0.92)),
        ("model/bops", (12e6, 0.92)),
        (DEPLOYED_LATENCY, (0.55, 0.92)),
    ],
)
def test_mixed_runs_are_diamonds_on_the_same_fronts_as_uniform_ones(tmp_path, cost, mixed_point):
    configurations = group_configurations(load_runs([mixed_sweep(tmp_path)]))
    figure = pareto_figure(configurations, cost, "cost", "val/acc_best", "accuracy")
    # Bug: the mixed configuration is a circle like the uniform ones, told apart by nothing.
    assert drawn_markers(figure)["D"] == {mixed_point}
    assert mixed_point not in drawn_markers(figure)["o"] and len(drawn_markers(figure)["o"]) == 2
    assert "mixed precision (allocation)" in legend_texts(figure)
    # One front over both kinds: the mixed point is on it, between W2A4 and W4A4.
    (front,) = [line for line in figure.axes[0].lines if line.get_label() == "Pareto front"]
    assert mixed_point[0] in list(front.get_xdata())
    assert [c.name for c in pareto_front(configurations, cost, "val/acc_best")] == [
        "lsq W2A4",
        "lsq mixed A4",
    ]
    uniform = group_configurations(load_runs([mixed_sweep(tmp_path / "uniform", mixed=False)]))
    figure = pareto_figure(uniform, cost, "cost", "val/acc_best", "accuracy")
    assert not drawn_markers(figure)["D"]
    assert "mixed precision (allocation)" not in legend_texts(figure)


def test_the_tables_and_captions_mark_mixed_runs(tmp_path):
    runs = load_runs([mixed_sweep(tmp_path / "sweep")])
    headers, rows = table_cells(runs)
    assert column(headers, rows, "W/A/G") == ["2/4/32", "4/4/32", "mixed/4/32"]
    headers, rows = configuration_cells(group_configurations(runs))
    assert column(headers, rows, "W/A/G") == ["mixed/4/32", "2/4/32", "4/4/32"]
    page = write_report(runs, tmp_path / "out", title="mixed").html.read_text()
    # under each of the three Pareto figures
    assert page.count("Diamonds (1 of 3 configurations): mixed precision (allocation).") == 3


def deployed_sweep(sweep_dir: Path, openvino: bool = True) -> Path:
    """DoReFa W8A8 and W4A4 with 2 seeds each and PACT W4A4 with 1, as runs record them since
    OpenVINO (#31): int8 in ONNX Runtime and OpenVINO, the best float path with its name.

    W8A8: OpenVINO is faster in both seeds (means 0.61 against 0.775; seed 1 alone is faster in
    ORT, 0.55). W4A4: ORT is faster (0.50 against 0.70). The best float path: OpenVINO bf16 in 4
    of the 5 runs, median 0.45 ms. ``openvino`` False: the same runs as recorded before #31."""
    jobs = [
        # quantizer, bits, seed, acc, ORT int8, OpenVINO int8, best float ms, its path
        ("dorefa", 8, 0, 0.92, 1.00, 0.60, 0.40, "openvino bf16"),
        ("dorefa", 8, 1, 0.92, 0.55, 0.62, 0.45, "openvino bf16"),
        ("dorefa", 4, 0, 0.90, 0.50, 0.70, 0.50, "openvino bf16"),
        ("dorefa", 4, 1, 0.90, 0.50, 0.70, 0.60, "onnxruntime fp32"),
        ("pact", 4, 0, 0.93, 0.80, 0.65, 0.44, "openvino bf16"),
    ]
    for number, (quantizer, bits, seed, acc, ort, ov, best, path) in enumerate(jobs):
        measured = {
            "latency/openvino_int8_ms": ov,
            "latency/best_int8_ms": min(ort, ov),
            "latency/best_float_ms": best,
            "latency/best_float_path": path,
        }
        write_job(
            sweep_dir, number, quantizer, bits, bits, acc=acc + seed / 1000, size=1e5 * bits,
            latency=5.0, int8_latency=ort, bops=bits * bits * 1e6, seed=seed,
            **(measured if openvino else {}),
        )  # fmt: skip
    return sweep_dir


def test_the_latency_axis_is_the_fastest_int8_runtime_named_in_table_and_caption(tmp_path):
    runs = load_runs([deployed_sweep(tmp_path / "sweep")])
    configurations = group_configurations(runs)
    # Bug: the axis is ONNX Runtime's int8 latency, however much faster OpenVINO ran.
    points = [
        (c.name, round(DEPLOYED_LATENCY.value(c), 6), DEPLOYED_LATENCY.path(c))
        for c in configurations
    ]
    assert points == [
        ("dorefa W4A4", 0.50, "onnxruntime int8"),
        ("dorefa W8A8", 0.61, "openvino int8"),  # the lowest mean, not each run's lowest
        ("pact W4A4", 0.65, "openvino int8"),
    ]
    figure = pareto_figure(configurations, DEPLOYED_LATENCY, "latency", "val/acc_best", "acc")
    assert drawn_points(figure)["filled"] == {(0.5, 0.9005), (0.61, 0.9205), (0.65, 0.93)}
    headers, rows = table_cells(runs)
    assert column(headers, rows, "latency best int8 (ms)") == [
        "0.60",
        "0.55",
        "0.50",
        "0.50",
        "0.65",
    ]
    assert column(headers, rows, "int8 runtime") == [
        "openvino",
        "onnxruntime",
        "onnxruntime",
        "onnxruntime",
        "openvino",
    ]
    assert column(headers, rows, "latency onnxruntime int8 (ms)")[0] == "1.00"  # each runtime's too
    assert "latency best_int8 (ms)" not in headers  # the first column's value, not twice
    headers, rows = configuration_cells(configurations)
    assert column(headers, rows, "int8 runtime") == ["onnxruntime", "openvino", "openvino"]
    page = write_report(runs, tmp_path / "out", title="deployed").html.read_text()
    assert (
        "On the Pareto front of the means (cheapest first): dorefa W4A4 (0.9005, n = 2, "
        "onnxruntime int8), dorefa W8A8 (0.9205, n = 2, openvino int8), pact W4A4 (0.9300, "
        "n = 1, openvino int8)"
    ) in page


def reference_lines(figure) -> list[tuple[float, str]]:
    """The vertical lines of a figure (x, legend label): a line whose two ends share an x."""
    return [
        (float(line.get_xdata()[0]), line.get_label())
        for line in figure.axes[0].lines
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]


def test_the_best_float_path_is_a_reference_line_on_the_latency_figure(tmp_path):
    configurations = group_configurations(load_runs([deployed_sweep(tmp_path / "sweep")]))
    references = best_float_references(configurations)
    figure = pareto_figure(
        configurations, DEPLOYED_LATENCY, "latency", "val/acc_best", "acc", references
    )
    # Bug: no line, so the float path that beats every int8 point is not on the figure.
    label = "best float (openvino bf16 in 4 of 5 runs): 0.45 ms"
    assert reference_lines(figure) == [(0.45, label)]  # the median of the five runs
    assert label in legend_texts(figure)
    page = write_report(
        load_runs([tmp_path / "sweep"]), tmp_path / "out", title="deployed"
    ).html.read_text()
    assert (
        f"Grey line: {label}, the median of latency/best_float_ms over the 5 runs of "
        "nin/digits that measured it"
    ) in page
    assert page.count("Grey line:") == 1  # on the latency figure only


def test_runs_from_before_openvino_keep_the_onnx_runtime_axis_and_no_line(tmp_path):
    runs = load_runs([deployed_sweep(tmp_path / "sweep", openvino=False)])
    configurations = group_configurations(runs)
    assert {DEPLOYED_LATENCY.source(c) for c in configurations} == {"latency/int8_ms"}
    assert not best_float_references(configurations)
    figure = pareto_figure(configurations, DEPLOYED_LATENCY, "latency", "val/acc_best", "acc")
    assert drawn_points(figure)["filled"] == {(0.5, 0.9005), (0.775, 0.9205), (0.8, 0.93)}
    assert not reference_lines(figure)
    assert not any(text.startswith("best float") for text in legend_texts(figure))
    headers, _ = table_cells(runs)
    assert "latency int8 (ms)" in headers and "int8 runtime" not in headers
    page = write_report(runs, tmp_path / "out", title="old").html.read_text()
    assert "Grey line:" not in page and "onnxruntime int8)" not in page


def test_the_report_names_int8_paths_as_the_exporter_does():
    from lowbit.export.onnx_run import INT8_PATHS as EXPORTED

    assert INT8_PATHS == EXPORTED
    assert DEPLOYED_LATENCY.keys == tuple(EXPORTED)
