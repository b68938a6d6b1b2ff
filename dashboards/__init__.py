"""Static HTML dashboards built from results dirs (see interp.results.ResultsDir)."""

from dashboards.build import build_dashboard, build_dashboards, build_index, render_page
from dashboards.sections import SECTION_BUILDERS, Section, default_sections, register_sections, sections_for

__all__ = ["SECTION_BUILDERS", "Section", "build_dashboard", "build_dashboards", "build_index", "default_sections", "register_sections", "render_page", "sections_for"]
