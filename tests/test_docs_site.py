"""The README stays short and the documentation site lists every page: mkdocs.yml's nav names
each Markdown file under docs/, and every page or file it links to exists (mkdocs builds in
strict mode in CI, `make docs`; this check needs no mkdocs)."""

from __future__ import annotations

import re
import runpy

import yaml
from conftest import ROOT

DOCS = ROOT / "docs"


def nav_pages() -> set[str]:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    return {page for entry in nav for page in entry.values()}


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 320


def test_the_nav_lists_every_page_under_docs():
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    assert nav_pages() == pages


def test_the_readmes_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing


def test_the_readmes_sweep_and_quantizer_commands_are_in_getting_started():
    """The README's daily commands are the getting-started page's, which shows them all."""
    readme, index = (ROOT / "README.md").read_text(), (DOCS / "index.md").read_text()
    for command in ("python train.py quantizer=dorefa quant.wbits=4", "make export RUN="):
        assert command in readme and command in index


def test_the_configuration_reference_is_what_the_schema_and_conf_say():
    """docs/configuration_reference.md is generated; regenerate it with the command it names."""
    page = runpy.run_path(str(ROOT / "scripts" / "config_reference.py"))["page"]()
    assert (DOCS / "configuration_reference.md").read_text() == page


def test_the_configuration_reference_shows_each_keys_default():
    """Every schema key has a default cell, and the default run's values are the composed ones."""
    from lowbit.cli import compose
    from lowbit.validation import SCHEMA

    rows = {}
    for line in (DOCS / "configuration_reference.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert set(rows) == set(SCHEMA) and all(rows.values())
    cfg = compose("train", [])
    for key in ("trainer.max_epochs", "optimizer.lr", "calibration.method", "quant.wbits"):
        assert rows[key] == f"`{cfg[key.split('.')[0]][key.split('.')[1]]}`"
    assert (
        rows["quant.alpha_init"]
        == "`10.0` with `quantizer=pact`; `20.0` with `quantizer=pact_symmetric`"
    )
