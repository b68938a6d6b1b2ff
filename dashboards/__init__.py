"""Static HTML dashboards built from results dirs (see interp.results.ResultsDir)."""

from dashboards.build import build_dashboard, build_dashboards, build_index, render_page, summary_table
from dashboards.summaries import SUMMARIES, Summary, register_summary, summarise
from dashboards.sections import SECTION_BUILDERS, Section, default_sections, register_sections, sections_for

__all__ = [
    "SECTION_BUILDERS",
    "SUMMARIES",
    "Section",
    "Summary",
    "register_summary",
    "summarise",
    "summary_table",
    "build_dashboard",
    "build_dashboards",
    "build_index",
    "default_sections",
    "register_sections",
    "render_page",
    "sections_for",
]
