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
