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

from dashboards.sections import Section, flatten, sections_for
from interp.errors import InterpError
from interp.results import FIGURES_DIR, ResultsDir, atomic_write_text, list_runs

INDEX_FILE = "index.html"
INDEX_METRICS = 4  # headline metrics shown per run on the index page
FIGURE_CONFIG = {"responsive": True, "displaylogo": False}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 2rem; color: #1f2933; }
header { border-bottom: 1px solid #d9e2ec; margin-bottom: 1rem; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #627d98; margin-top: 0; }
nav a { margin-right: 1rem; } section { margin: 2rem 0; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.5rem 0; }
th, td { border: 1px solid #d9e2ec; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f0f4f8; } .figure { margin: 1rem 0; } .links { font-size: 0.8rem; color: #627d98; }
"""


def _page(title: str, subtitle: str, body: str, head_script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n{head_script}</head>\n<body>\n"
        f"<header><h1>{html.escape(title)}</h1><p class=\"subtitle\">{html.escape(subtitle)}</p></header>\n{body}\n</body>\n</html>\n"
    )


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, border=0, escape=True, float_format=lambda v: f"{v:.6g}", na_rep="NaN")


def _figure_html(run: ResultsDir, figure: str | go.Figure, number: int) -> str:
    links = ""
    if isinstance(figure, str):
        name, figure = figure, run.figure(figure)
        png = run.figures_dir / f"{name}.png"
        targets = [f"{FIGURES_DIR}/{name}.json"] + ([f"{FIGURES_DIR}/{name}.png"] if png.exists() else [])
        links = "<div class=\"links\">" + " &middot; ".join(f"<a href=\"{html.escape(t)}\">{html.escape(Path(t).name)}</a>" for t in targets) + "</div>"
    height = figure.layout.height or 500
    div = pio.to_html(figure, include_plotlyjs=False, full_html=False, div_id=f"figure-{number}", config=FIGURE_CONFIG, default_height=f"{height}px", validate=True)
    return f"<div class=\"figure\">{div}{links}</div>"


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
        blocks.append(f"<section id=\"{_anchor(number)}\">\n" + "\n".join(parts) + "\n</section>")
        toc.append(f"<a href=\"#{_anchor(number)}\">{html.escape(section.title)}</a>")
    body = f"<nav>{''.join(toc)}</nav>\n" + "\n".join(blocks)
    plotly_js = f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n" if figure_count else ""
    return _page(run.title, f"{run.analysis} · {run.path}", body, head_script=plotly_js)


def build_dashboard(run_dir: str | Path | ResultsDir) -> Path:
    """Write run_dir/dashboard.html from the run's sections (registered for its analysis, or the default)."""
    run = run_dir if isinstance(run_dir, ResultsDir) else ResultsDir.open(run_dir)
    return atomic_write_text(run.dashboard_path, render_page(run, sections_for(run)))


def _headline(metrics: dict) -> str:
    flat = list(flatten(metrics).items())[:INDEX_METRICS]
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in flat)


def build_index(run_dirs: Sequence[str | Path | ResultsDir], out: str | Path) -> Path:
    """Write an index page at `out` linking each run's dashboard.html (relative links, so the folder can move)."""
    out = Path(out)
    runs = [r if isinstance(r, ResultsDir) else ResultsDir.open(r) for r in run_dirs]
    rows = []
    for run in runs:
        href = Path(os.path.relpath(run.dashboard_path, out.parent)).as_posix()
        rows.append({"run": f"<a href=\"{html.escape(href)}\">{html.escape(run.title)}</a>", "analysis": html.escape(run.analysis),
                     "folder": html.escape(str(run.path)), "headline metrics": html.escape(_headline(run.metrics()))})
    table = pd.DataFrame(rows, columns=["run", "analysis", "folder", "headline metrics"]).to_html(index=False, border=0, escape=False)
    return atomic_write_text(out, _page("Results", f"{len(runs)} run{'s' if len(runs) != 1 else ''}", table))


def build_dashboards(run_dirs: Sequence[str | Path], index_path: str | Path | None = None) -> list[Path]:
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
            raise InterpError(f"run_dirs: {str(folder)!r} holds no results directory (no config.json at or below it); pass folders written by ResultsDir.create.")
        runs += [r for r in found if r not in runs]
    pages = [build_dashboard(run) for run in runs]
    if index_path is None:
        index_path = Path(os.path.commonpath([run.path.resolve().parent for run in runs])) / INDEX_FILE
    return [*pages, build_index(runs, index_path)]
