"""MkDocs hook (mkdocs.yml ``hooks:``): every ``<!-- results-table: ... -->`` marker in a page
becomes the Markdown table of the data file it names, when the site is built, so a page shows
what the file holds. The work is ``lowbit.report.results_tables``, shared with
``scripts/csv_table.py``; a marker that names a missing file or column fails the build."""

from __future__ import annotations

from pathlib import Path

from lowbit.report.results_tables import ResultsTableError, render_markers


def on_page_markdown(markdown, page, config, files):
    try:
        return render_markers(markdown, Path(config["docs_dir"]))
    except ResultsTableError as error:
        raise ResultsTableError(f"{page.file.src_path}: {error}") from error
