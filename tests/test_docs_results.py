"""The measured tables are data (issue 28): every file under docs/results names the command that
made it (its folder's commands.yaml), every results-table marker in a page names a file and
columns that exist, the page as the site builds it (docs/hooks/results_tables.py) shows the
file's values, and the README's few measured numbers are the data files' (no mkdocs needed)."""

from __future__ import annotations

import math
import re
import runpy

import pytest
import yaml
from conftest import ROOT

from lowbit.report.results_tables import (
    COMMANDS_FILE,
    KEEP,
    MARKER,
    ResultsTableError,
    TableSpec,
    read_rows,
    render_markers,
)

DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
PAGES = sorted(DOCS.glob("*.md"))
MARKED_PAGES = [page for page in PAGES if MARKER.search(page.read_text())]


def data_files() -> list[str]:
    return sorted(
        str(path.relative_to(RESULTS))
        for path in RESULTS.rglob("*")
        if path.is_file() and path.name != COMMANDS_FILE
    )


def command_of(relative: str) -> object:
    path = RESULTS / relative
    sidecar = path.parent / COMMANDS_FILE
    return (yaml.safe_load(sidecar.read_text()) or {}).get(path.name) if sidecar.is_file() else None


def marker_ids(page):
    return [m["body"].split()[0] for m in MARKER.finditer(page.read_text())]


ALL_MARKERS = [(page, body) for page in MARKED_PAGES for body in marker_ids(page)]


@pytest.mark.parametrize("relative", data_files())
def test_every_results_file_names_its_command(relative):
    command = command_of(relative)
    assert isinstance(command, str) and command.strip(), f"{relative}: no entry in {COMMANDS_FILE}"


def test_every_command_entry_names_a_file_beside_it():
    for sidecar in RESULTS.rglob(COMMANDS_FILE):
        for name in yaml.safe_load(sidecar.read_text()) or {}:
            assert (sidecar.parent / name).is_file(), f"{sidecar}: {name} does not exist"


def test_the_pages_hold_markers():
    """The pages whose measured tables come from data files (a regex that stopped matching would
    leave every test below with nothing to check)."""
    names = {page.name for page in MARKED_PAGES}
    assert {"integer_parity.md", "starting_from_trained.md", "results.md"} <= names
    assert "performance.md" in names and len(ALL_MARKERS) >= 30


@pytest.mark.parametrize("page", MARKED_PAGES, ids=lambda page: page.name)
def test_each_marker_stands_on_a_line_of_its_own(page):
    for line in page.read_text().splitlines():
        if "results-table" in line:
            assert MARKER.fullmatch(line.strip()), f"{page.name}: {line}"


@pytest.mark.parametrize("page, path", ALL_MARKERS, ids=[f"{p.name}:{b}" for p, b in ALL_MARKERS])
def test_each_marker_names_a_file_and_columns_that_exist(page, path):
    for match in MARKER.finditer(page.read_text()):
        spec = TableSpec.parse(match["body"])
        if spec.path != path:
            continue
        rows = read_rows(DOCS / spec.path)
        assert rows, spec.path
        known = {key for row in rows for key in row}
        for column in [*spec.columns, *(c for c, _ in spec.where)]:
            assert column in known, f"{page.name}: {spec.path} has no column {column}"


def rendered_tables(text: str) -> list[tuple[TableSpec, list[str]]]:
    """Each marker's spec and the table lines that stand where it stood in the rendered page."""
    rendered = render_markers(text, DOCS).splitlines()
    tables, offset = [], 0
    for number, line in enumerate(text.splitlines()):
        match = MARKER.search(line)
        if not match:
            continue
        start = end = number + offset
        while end < len(rendered) and rendered[end].startswith("|"):
            end += 1
        tables.append((TableSpec.parse(match["body"]), rendered[start:end]))
        offset += end - start - 1
    return tables


def cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def shows(cell: str, value: object, decimals: int | str) -> bool:
    """Whether a table cell shows a file's value (numbers to the table's decimals)."""
    text = "" if value is None else str(value)
    try:
        number = float(text)
    except ValueError:
        return cell == text
    if decimals == KEEP or math.isnan(number):
        return cell == text or (math.isnan(number) and cell.lower() == "nan")
    return math.isclose(float(cell), number, rel_tol=0, abs_tol=0.5 * 10**-decimals + 1e-12)


@pytest.mark.parametrize("page", MARKED_PAGES, ids=lambda page: page.name)
def test_the_rendered_page_shows_what_each_file_holds(page):
    text = page.read_text()
    tables = rendered_tables(text)
    assert len(tables) == len(MARKER.findall(text))
    assert "results-table" not in render_markers(text, DOCS)
    for spec, lines in tables:
        rows = read_rows(DOCS / spec.path)
        columns = list(spec.columns) or list(dict.fromkeys(k for row in rows for k in row))
        kept = [r for r in rows if all(str(r.get(c)) == v for c, v in spec.where)]
        assert cells(lines[0]) == columns, spec.path
        assert len(lines) - 2 == len(kept), f"{spec.path}: {len(lines) - 2} rows shown"
        for line, row in zip(lines[2:], kept, strict=True):
            shown = cells(line)
            for column, cell in zip(columns, shown, strict=True):
                assert shows(cell, row.get(column), spec.decimals), (spec.path, column, cell)


def test_the_build_uses_the_hook_and_the_hook_renders_the_markers():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["hooks"] == ["docs/hooks/results_tables.py"]
    hook = runpy.run_path(str(ROOT / config["hooks"][0]))["on_page_markdown"]
    page = DOCS / "integer_parity.md"
    text = page.read_text()
    assert hook(text, None, {"docs_dir": str(DOCS)}, None) == render_markers(text, DOCS)


def test_csv_table_prints_the_table_a_marker_renders(capsys):
    main = runpy.run_path(str(ROOT / "scripts" / "csv_table.py"))["main"]
    path = "results/ptq_vs_qat_nin_digits/comparisons.csv"
    args = [str(DOCS / path), "better", "verdict", "--where", "kind=starts"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table == TableSpec(path, ("better", "verdict"), (("kind", "starts"),)).table(DOCS)
    assert main([*args, "--marker"]) == 0
    marker = capsys.readouterr().out.strip()
    assert render_markers(marker, DOCS) + "\n" == table


@pytest.mark.parametrize(
    "body",
    [
        "results/no_such_file.csv",
        "results/ptq_vs_qat_nin_digits/comparisons.csv columns=better,no_such_column",
        "results/ptq_vs_qat_nin_digits/comparisons.csv where=kind=no_such_kind",
        "results/ptq_vs_qat_nin_digits/comparisons.csv decimals=some",
        "results/ptq_vs_qat_nin_digits/comparisons.csv colums=better",
    ],
)
def test_a_marker_that_names_nothing_fails_the_build(body):
    with pytest.raises(ResultsTableError):
        render_markers(f"<!-- results-table: {body} -->", DOCS)


def test_the_readmes_measured_numbers_are_in_a_data_file():
    """The README states one measurement, how long `make train` takes; it must be the data's."""
    readme = (ROOT / "README.md").read_text()
    measured = re.findall(r"\d[\d.,]*\s?(?:min|s|ms|%|bytes|points)\b", readme)
    assert measured == ["2 min"], "a new measured number in the README needs a check here"
    (minutes,) = re.findall(r"make train .*~(\d+) min", readme)
    rows = read_rows(RESULTS / "quantizers" / "nin_fp32_and_dorefa_w4a4.csv")
    (wall,) = [row["wall time"] for row in rows if row["command"] == "`make train`"]
    m, s = map(int, re.fullmatch(r"(\d+) min (\d+) s", wall).groups())
    assert round((60 * m + s) / 60) == int(minutes)


def test_a_json_list_renders_like_a_csv(tmp_path):
    (tmp_path / "runs.json").write_text('[{"run": "a|b", "acc": 0.98765, "n": 3}, {"run": "c"}]')
    table = render_markers("<!-- results-table: runs.json columns=run,acc,n -->", tmp_path)
    assert table.splitlines() == [
        "| run | acc | n |",
        "|---|---|---|",
        "| a\\|b | 0.9877 | 3 |",
        "| c |  |  |",
    ]
