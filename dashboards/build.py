"""Static HTML dashboards from results dirs: one self-contained page per run, and an index.

A page embeds plotly.js once, inline (it opens offline, no CDN), then one interactive figure per
saved figure JSON. `build_dashboards` is what `interp dashboard DIR...` calls.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from dashboards.sections import Section, sections_for
from dashboards.summaries import Summary, summarise
from interp.errors import InterpError
from interp.results import FIGURES_DIR, ResultsDir, atomic_write_text, list_runs

INDEX_FILE = "index.html"
FIGURE_CONFIG = {"responsive": True, "displaylogo": False}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 2rem; color: #1f2933; }
header { border-bottom: 1px solid #d9e2ec; margin-bottom: 1rem; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #627d98; margin-top: 0; }
nav a { margin-right: 1rem; } section { margin: 2rem 0; }
.table-box { max-width: 100%; overflow-x: auto; margin: 0.5rem 0; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #d9e2ec; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; max-width: 38rem; overflow-wrap: anywhere; }
th { background: #f0f4f8; } .figure { margin: 1rem 0; } .links { font-size: 0.8rem; color: #627d98; }
details summary { cursor: pointer; color: #486581; } .verdict { font-weight: 600; }
.summary { background: #f0f4f8; border-left: 4px solid #486581; padding: 0.6rem 1rem; } .caveat { color: #8d2b0b; }
"""
FOLD_CHARS = 160  # table cells longer than this are folded (<details>), e.g. the pairs list in a config


def _page(title: str, subtitle: str, body: str, head_script: str = "") -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n{head_script}</head>\n<body>\n"
        f'<header><h1>{html.escape(title)}</h1><p class="subtitle">{html.escape(subtitle)}</p></header>\n{body}\n</body>\n</html>\n'
    )


def _cell_html(value: object) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else "NaN" if value is None else str(value)
    if len(text) <= FOLD_CHARS:
        return html.escape(text, quote=False)
    return f"<details><summary>{html.escape(text[:60], quote=False)}&hellip; ({len(text):,} characters)</summary>{html.escape(text, quote=False)}</details>"


def _table_html(df: pd.DataFrame, *, raw_html: bool = False) -> str:
    """A table that scrolls inside its box rather than running off the page; long cells folded. raw_html: cells are HTML already."""
    body = df if raw_html else df.map(_cell_html)
    return f'<div class="table-box">{body.to_html(index=False, border=0, escape=False, na_rep="NaN")}</div>'


def summary_html(summary: Summary) -> str:
    """The block that opens a page: what the analysis shows, then its verdict and headline numbers."""
    parts = [f"<p>{html.escape(summary.about)}</p>"] if summary.about else []
    parts.append(f'<p class="verdict">Verdict: {html.escape(summary.verdict)}</p>')
    parts.append(f"<p>{html.escape(summary.headline)}</p>")
    if summary.caveat:
        parts.append(f'<p class="caveat">{html.escape(summary.caveat)}</p>')
    return '<section class="summary"><h2>What this shows</h2>\n' + "\n".join(parts) + "\n</section>"


def _figure_html(run: ResultsDir, figure: str | go.Figure, number: int) -> str:
    links = ""
    if isinstance(figure, str):
        name, figure = figure, run.figure(figure)
        png = run.figures_dir / f"{name}.png"
        targets = [f"{FIGURES_DIR}/{name}.json"] + ([f"{FIGURES_DIR}/{name}.png"] if png.exists() else [])
        items = [f'<a href="{html.escape(t)}">{html.escape(Path(t).name)}</a>' for t in targets]
        if not png.exists() and png.name in run.skipped_pngs():
            items.append(
                f"PNG not rendered (no browser when the run saved it): it would be {html.escape(str(png))}; "
                f"run <code>make browser</code>, then <code>interp dashboard {html.escape(str(run.path))} --png</code>"
            )
        links = '<div class="links">' + " &middot; ".join(items) + "</div>"
    height = figure.layout.height or 500
    div = pio.to_html(
        figure,
        include_plotlyjs=False,
        full_html=False,
        div_id=f"figure-{number}",
        config=FIGURE_CONFIG,
        default_height=f"{height}px",
        validate=True,
    )
    return f'<div class="figure">{div}{links}</div>'


def _anchor(number: int) -> str:
    return f"section-{number}"


def render_page(run: ResultsDir, sections: Sequence[Section]) -> str:
    """The HTML of one run's page: plotly.js inline once, then each section."""
    blocks, toc, figure_count = [], [], 0
    for number, section in enumerate(sections):
        parts = [f"<h2>{html.escape(section.title)}</h2>"]
        if section.text:
            parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in section.text.split("\n\n")]
        if section.table is not None:
            parts.append(_table_html(section.table))
        for figure in section.figures:
            parts.append(_figure_html(run, figure, figure_count))
            figure_count += 1
        blocks.append(f'<section id="{_anchor(number)}">\n' + "\n".join(parts) + "\n</section>")
        toc.append(f'<a href="#{_anchor(number)}">{html.escape(section.title)}</a>')
    body = f"<nav>{''.join(toc)}</nav>\n" + summary_html(summarise(run)) + "\n" + "\n".join(blocks)
    plotly_js = f'<script type="text/javascript">{get_plotlyjs()}</script>\n' if figure_count else ""
    return _page(run.title, f"{run.analysis} · {run.path}", body, head_script=plotly_js)


def build_dashboard(run_dir: str | Path | ResultsDir) -> Path:
    """Write run_dir/dashboard.html from the run's sections (registered for its analysis, or the default)."""
    run = run_dir if isinstance(run_dir, ResultsDir) else ResultsDir.open(run_dir)
    return atomic_write_text(run.dashboard_path, render_page(run, sections_for(run)))


def summary_table(runs: Sequence[ResultsDir], relative_to: Path | None = None) -> pd.DataFrame:
    """One row per run: investigation, headline numbers, verdict (and the page's path). Plain text, for the terminal and the index."""
    rows = []
    for run in runs:
        s = summarise(run)
        page = (
            Path(os.path.relpath(run.dashboard_path, relative_to)).as_posix()
            if relative_to is not None
            else str(run.dashboard_path)
        )
        rows.append(
            {
                "investigation": s.investigation,
                "headline": s.headline + (f" [{s.caveat}]" if s.caveat else ""),
                "verdict": s.verdict,
                "page": page,
            }
        )
    return pd.DataFrame(rows, columns=["investigation", "headline", "verdict", "page"])


def build_index(run_dirs: Sequence[str | Path | ResultsDir], out: str | Path, *, note: str = "") -> Path:
    """Write an index page at `out`: what each investigation found (a row each, linked), then the runs' folders (relative links, so the folder can move)."""
    out = Path(out)
    runs = [r if isinstance(r, ResultsDir) else ResultsDir.open(r) for r in run_dirs]
    table = summary_table(runs, relative_to=out.parent)
    findings = pd.DataFrame(
        {
            "investigation": [
                f'<a href="{html.escape(page)}">{html.escape(name)}</a>'
                for name, page in zip(table.investigation, table.page)
            ],
            "headline": table.headline.map(html.escape),
            "verdict": table.verdict.map(lambda v: f'<span class="verdict">{html.escape(v)}</span>'),
        }
    )
    rows = []
    for run in runs:
        href = Path(os.path.relpath(run.dashboard_path, out.parent)).as_posix()
        rows.append(
            {
                "run": f'<a href="{html.escape(href)}">{html.escape(run.title)}</a>',
                "analysis": html.escape(run.analysis),
                "folder": html.escape(str(run.path)),
                "files": html.escape(", ".join(["metrics.json", *(f"{t}.parquet" for t in run.table_names())])),
            }
        )
    folders = pd.DataFrame(rows, columns=["run", "analysis", "folder", "files"])
    body = (
        f"<section><h2>What each investigation found</h2>{f'<p>{html.escape(note)}</p>' if note else ''}{_table_html(findings, raw_html=True)}</section>\n"
        f"<section><h2>Runs</h2>{_table_html(folders, raw_html=True)}</section>"
    )
    return atomic_write_text(out, _page("Results", f"{len(runs)} run{'s' if len(runs) != 1 else ''}", body))


def build_dashboards(
    run_dirs: Sequence[str | Path], index_path: str | Path | None = None, *, note: str = ""
) -> list[Path]:
    """Build every run's page and one index; each DIR is a results dir or a folder holding results dirs.

    Returns the run pages, then the index (by default index.html in the runs' common parent folder).
    """
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise InterpError("run_dirs is empty: pass at least one results directory or a folder of them.")
    runs: list[ResultsDir] = []
    for folder in run_dirs:
        found = list_runs(folder)
        if not found:
            raise InterpError(
                f"run_dirs: {str(folder)!r} holds no results directory (no config.json at or below it); pass folders written by ResultsDir.create."
            )
        runs += [r for r in found if r not in runs]
    pages = [build_dashboard(run) for run in runs]
    if index_path is None:
        index_path = Path(os.path.commonpath([run.path.resolve().parent for run in runs])) / INDEX_FILE
    return [*pages, build_index(runs, index_path, note=note)]
