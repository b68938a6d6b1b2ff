"""A dashboard page is a list of Sections built from a results dir.

Each analysis may register its own section builder under the name in its config.json's
"analysis" field; runs of any other analysis get `default_sections` (config, metrics, every saved
figure, a preview of every table). Builders compose: an analysis can put its own sections first
and then append the default ones.

    @register_sections("activation_patching")
    def patching_sections(run: ResultsDir) -> list[Section]:
        return [Section("Restoration", text="...", figures=["restoration"]), *default_sections(run)]
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from interp.errors import InterpError
from interp.results import ResultsDir

TABLE_PREVIEW_ROWS = 20


@dataclass
class Section:
    """One titled block of a page. figures: saved figure names (from figures/*.json) or Figure objects."""

    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    figures: Sequence[str | go.Figure] = field(default_factory=list)


SectionBuilder = Callable[[ResultsDir], list[Section]]
# The one registry of what an analysis's page is made of: PAGES[analysis][kind] is its builder, kind "sections"
# (the page's blocks, register_sections) or "summary" (its verdict in words, dashboards.summaries.register_summary).
PAGES: dict[str, dict[str, Callable]] = {}


class _Builders(MutableMapping):
    """PAGES seen through one kind of builder: analysis -> builder."""

    def __init__(self, kind: str):
        self.kind = kind

    def __getitem__(self, analysis: str) -> Callable:
        return PAGES.get(analysis, {})[self.kind]

    def __setitem__(self, analysis: str, builder: Callable) -> None:
        PAGES.setdefault(analysis, {})[self.kind] = builder

    def __delitem__(self, analysis: str) -> None:
        del PAGES.get(analysis, {})[self.kind]

    def __iter__(self):
        return iter([a for a, kinds in PAGES.items() if self.kind in kinds])

    def __len__(self) -> int:
        return sum(self.kind in kinds for kinds in PAGES.values())


def register_builder(kind: str, analysis: str, function: str) -> Callable[[Callable], Callable]:
    """Decorator registering a `kind` builder for pages of runs whose config.json says this analysis."""

    def register(builder: Callable) -> Callable:
        current = PAGES.get(analysis, {}).get(kind)
        if current is not None and current is not builder:
            raise InterpError(
                f"{function}({analysis!r}): {current.__qualname__} is already registered for this analysis; pick another name."
            )
        PAGES.setdefault(analysis, {})[kind] = builder
        return builder

    return register


SECTION_BUILDERS: MutableMapping[str, SectionBuilder] = _Builders("sections")


def register_sections(analysis: str) -> Callable[[SectionBuilder], SectionBuilder]:
    """Decorator: use the decorated function to build pages of runs whose config.json says this analysis."""
    return register_builder("sections", analysis, "register_sections")


def sections_for(run: ResultsDir) -> list[Section]:
    if run.analysis not in SECTION_BUILDERS and importlib.util.find_spec(f"dashboards.{run.analysis}") is not None:
        importlib.import_module(f"dashboards.{run.analysis}")  # an analysis's page lives in dashboards/<analysis>.py
    builder = SECTION_BUILDERS.get(run.analysis, default_sections)
    sections = builder(run)
    if not isinstance(sections, list) or not all(isinstance(s, Section) for s in sections):
        raise InterpError(
            f"the section builder for analysis {run.analysis!r} returned {type(sections).__name__}; it must return a list of dashboards.Section."
        )
    return sections


def flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    """Nested dicts as dotted keys, so a config or metrics file reads as one two-column table."""
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def key_value_table(mapping: dict, key: str = "name", value: str = "value") -> pd.DataFrame:
    flat = flatten(mapping)
    return pd.DataFrame({key: list(flat), value: [_cell(v) for v in flat.values()]})


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)


def config_section(run: ResultsDir) -> Section:
    record = run.record()
    return Section(
        "Config",
        text=f"analysis: {record['analysis']}; config class: {record.get('config_type', 'unknown')}",
        table=key_value_table(record["config"], key="setting"),
    )


def metrics_section(run: ResultsDir) -> Section | None:
    metrics = run.metrics()
    return Section("Metrics", table=key_value_table(metrics, key="metric")) if metrics else None


def figures_section(run: ResultsDir, names: Sequence[str] | None = None) -> Section | None:
    names = run.figure_names() if names is None else list(names)
    return Section("Figures", figures=names) if names else None


def table_sections(run: ResultsDir) -> list[Section]:
    sections = []
    for name in run.table_names():
        df = run.load_table(name)
        shown = min(len(df), TABLE_PREVIEW_ROWS)
        sections.append(
            Section(
                f"Table: {name}",
                text=f"{len(df)} rows x {df.shape[1]} columns ({name}.parquet); first {shown} shown.",
                table=df.head(shown),
            )
        )
    return sections


def default_sections(run: ResultsDir) -> list[Section]:
    """Config, metrics, every saved figure, then a preview of every table."""
    maybe = [config_section(run), metrics_section(run), figures_section(run), *table_sections(run)]
    return [s for s in maybe if s is not None]
