"""Plotly figure builders shared by every analysis, and offline PNG export.

Every builder takes a tidy DataFrame (one row per measurement) and names the columns it reads;
effects use one diverging colour scale centred at 0 with a symmetric range, so colours compare
across figures. PNG export renders through kaleido with a locally installed Chromium only.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go

from interp.errors import InterpError, did_you_mean

DIVERGING = "RdBu"  # TransformerLens demos' convention: blue positive, red negative, white at 0
SEQUENTIAL = "Viridis"
BROWSER_CANDIDATES = (
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
    "chrome",
)  # looked up on PATH
BROWSER_HINT = "Install Chromium with `make browser` (Debian: apt-get install chromium), or set BROWSER_PATH to a Chrome/Chromium binary."
PNG_TIMEOUT_S = 60


def _require_columns(df: pd.DataFrame, columns: Mapping[str, str | None], builder: str) -> None:
    """columns maps argument name -> column name; None means the argument is unused."""
    if not isinstance(df, pd.DataFrame):
        raise InterpError(f"{builder}(df=...): expected a pandas DataFrame, got {type(df).__name__}.")
    if df.empty:
        raise InterpError(f"{builder}(df=...): the DataFrame is empty; there is nothing to plot.")
    for argument, column in columns.items():
        if column is not None and column not in df.columns:
            raise InterpError(
                f"{builder}({argument}={column!r}): no such column.{did_you_mean(column, map(str, df.columns))} "
                f"Columns: {', '.join(map(str, df.columns))}."
            )


def _numeric(df: pd.DataFrame, column: str, argument: str, builder: str) -> np.ndarray:
    if not pd.api.types.is_numeric_dtype(df[column]):
        raise InterpError(f"{builder}({argument}={column!r}): column has dtype {df[column].dtype}; expected numbers.")
    return df[column].to_numpy(dtype=float)


def _grid(df: pd.DataFrame, rows: str, cols: str, value: str, agg: str | None, builder: str) -> pd.DataFrame:
    """Pivot to a rows x cols grid; repeated cells are an error unless agg says how to combine them."""
    repeated = df.duplicated([rows, cols]).any()
    if repeated and agg is None:
        extra = [c for c in df.columns if c not in (rows, cols, value)]
        raise InterpError(
            f"{builder}: several rows share one ({rows}, {cols}) cell (other columns: {', '.join(map(str, extra)) or 'none'}). "
            f"Filter df to one measurement per cell, or pass agg='mean'."
        )
    return (
        df.pivot_table(index=rows, columns=cols, values=value, aggfunc=agg or "first", dropna=False)
        .sort_index()
        .sort_index(axis=1)
    )


def symmetric_range(values: np.ndarray) -> tuple[float, float]:
    """(-m, m) with m the largest |value|, so 0 sits at the centre of a diverging scale."""
    finite = np.abs(values[np.isfinite(values)])
    m = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return -m, m


def _heatmap(grid: pd.DataFrame, value: str, diverging: bool, **trace) -> go.Heatmap:
    z = grid.to_numpy(dtype=float)
    low, high = symmetric_range(z)
    colour = dict(colorscale=DIVERGING, zmin=low, zmax=high) if diverging else dict(colorscale=SEQUENTIAL)
    return go.Heatmap(z=z, colorbar=dict(title=dict(text=value)), **colour, **trace)


def layer_position_heatmap(
    df: pd.DataFrame,
    value: str = "restoration",
    *,
    tokens: Sequence[str] | None = None,
    layer: str = "layer",
    position: str = "position",
    agg: str | None = None,
    diverging: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Layer (y) x position (x) heatmap of `value`; x ticks show the prompt's tokens when given."""
    builder = "layer_position_heatmap"
    _require_columns(df, dict(value=value, layer=layer, position=position), builder)
    _numeric(df, value, "value", builder)
    grid = _grid(df, layer, position, value, agg, builder)
    positions = [int(p) for p in grid.columns]
    ticktext = [str(p) for p in positions]
    if tokens is not None:
        tokens = list(tokens)
        if max(positions) >= len(tokens) or min(positions) < -len(tokens):
            raise InterpError(
                f"{builder}(tokens=...): {len(tokens)} tokens given but df has positions up to {max(positions)}; pass one token per prompt position."
            )
        # position index in the label keeps repeated tokens apart
        ticktext = [f"{tokens[p]!r} ({p})" for p in positions]
    heatmap = _heatmap(
        grid,
        value,
        diverging,
        x=positions,
        y=[int(v) for v in grid.index],
        hovertemplate=f"{layer} %{{y}}<br>{position} %{{x}}<br>{value} %{{z:.4g}}<extra></extra>",
    )
    fig = go.Figure(heatmap)
    fig.update_layout(
        title=dict(text=title or f"{value} by layer and position"),
        xaxis=dict(title=dict(text=position), tickvals=positions, ticktext=ticktext),
        yaxis=dict(title=dict(text=layer), dtick=1),
    )
    return fig


def head_heatmap(
    df: pd.DataFrame,
    value: str = "effect",
    *,
    layer: str = "layer",
    head: str = "head",
    agg: str | None = None,
    diverging: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Layer (y) x head (x) heatmap of `value`."""
    builder = "head_heatmap"
    _require_columns(df, dict(value=value, layer=layer, head=head), builder)
    _numeric(df, value, "value", builder)
    grid = _grid(df, layer, head, value, agg, builder)
    heatmap = _heatmap(
        grid,
        value,
        diverging,
        x=[int(h) for h in grid.columns],
        y=[int(v) for v in grid.index],
        hovertemplate=f"L%{{y}}H%{{x}}<br>{value} %{{z:.4g}}<extra></extra>",
    )
    fig = go.Figure(heatmap)
    fig.update_layout(
        title=dict(text=title or f"{value} by layer and head"),
        xaxis=dict(title=dict(text=head), dtick=1),
        yaxis=dict(title=dict(text=layer), dtick=1),
    )
    return fig


def _row_labels(df: pd.DataFrame, label: Sequence[str]) -> list[str]:
    return [" ".join(f"{c}={v}" for c, v in zip(label, row)) for row in df[list(label)].itertuples(index=False)]


def top_k_bars(
    df: pd.DataFrame,
    value: str = "effect",
    *,
    k: int = 20,
    label: Sequence[str] = ("layer", "neuron"),
    by_magnitude: bool = True,
    title: str | None = None,
) -> go.Figure:
    """Horizontal bars of the k rows with the largest value (largest |value| when by_magnitude), biggest on top."""
    builder = "top_k_bars"
    _require_columns(df, {"value": value, **{f"label[{i}]": c for i, c in enumerate(label)}}, builder)
    if not isinstance(k, int) or k < 1:
        raise InterpError(f"{builder}(k={k!r}): k must be a positive integer.")
    values = _numeric(df, value, "value", builder)
    key = np.abs(values) if by_magnitude else values
    top = df.iloc[np.argsort(-key, kind="stable")[:k]]
    fig = go.Figure(
        go.Bar(
            x=top[value],
            y=_row_labels(top, label),
            orientation="h",
            marker=dict(color=top[value], colorscale=DIVERGING, cmid=0),
        )
    )
    fig.update_layout(
        title=dict(text=title or f"top {len(top)} by {'|' + value + '|' if by_magnitude else value}"),
        xaxis=dict(title=dict(text=value)),
        yaxis=dict(autorange="reversed", title=dict(text=", ".join(label))),
    )
    return fig


def neuron_scatter(
    df: pd.DataFrame,
    value: str = "effect",
    *,
    neuron: str = "neuron",
    layer: str = "layer",
    title: str | None = None,
) -> go.Figure:
    """One point per neuron (x: neuron index, y: value), one colour per layer."""
    builder = "neuron_scatter"
    _require_columns(df, dict(value=value, neuron=neuron, layer=layer), builder)
    _numeric(df, value, "value", builder)
    fig = go.Figure()
    for layer_value, rows in df.groupby(layer, sort=True):
        fig.add_trace(
            go.Scattergl(
                x=rows[neuron],
                y=rows[value],
                mode="markers",
                name=f"{layer} {layer_value}",
                marker=dict(size=5),
                hovertemplate=f"{layer} {layer_value} {neuron} %{{x}}<br>{value} %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=dict(text=title or f"{value} per neuron"),
        xaxis=dict(title=dict(text=neuron)),
        yaxis=dict(title=dict(text=value)),
    )
    return fig


def bars_with_errors(
    df: pd.DataFrame,
    x: str,
    y: str,
    err: str,
    *,
    color: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Bars of y over x with symmetric error bars from column err (e.g. a standard error), grouped by color."""
    builder = "bars_with_errors"
    _require_columns(df, dict(x=x, y=y, err=err, color=color), builder)
    _numeric(df, y, "y", builder)
    if (_numeric(df, err, "err", builder) < 0).any():
        raise InterpError(
            f"{builder}(err={err!r}): error bars must be non-negative; pass a standard error or deviation, not a signed value."
        )
    groups = df.groupby(color, sort=True) if color is not None else [(None, df)]
    fig = go.Figure()
    for group, rows in groups:
        fig.add_trace(
            go.Bar(
                x=rows[x].astype(str) if color is not None else rows[x],
                y=rows[y],
                name=None if group is None else f"{color}={group}",
                error_y=dict(type="data", array=rows[err].to_numpy(dtype=float), visible=True),
            )
        )
    fig.update_layout(
        title=dict(text=title or f"{y} by {x}"),
        barmode="group",
        showlegend=color is not None,
        xaxis=dict(title=dict(text=x)),
        yaxis=dict(title=dict(text=y)),
    )
    return fig


def find_browser() -> str:
    """Path of a Chrome/Chromium binary for PNG export: $BROWSER_PATH, else the first of BROWSER_CANDIDATES found."""
    if explicit := os.environ.get("BROWSER_PATH"):
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            raise NoBrowserError(f"BROWSER_PATH={explicit!r} is not an executable file. {BROWSER_HINT}")
        return explicit
    for name in BROWSER_CANDIDATES:
        if found := shutil.which(name):
            return found
    raise NoBrowserError(
        f"PNG export needs a Chrome or Chromium browser and none was found (looked for {', '.join(BROWSER_CANDIDATES)}). {BROWSER_HINT}"
    )


class NoBrowserError(InterpError):
    """PNG export was asked for and no Chrome/Chromium can be had (or it failed to render)."""


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Print one warning line per distinct message per process (a run saves many figures; the user needs to hear it once)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def png_switched_off() -> bool:
    """INTERP_PNG=0 (or false/no/off): runs write figure JSON and HTML only, as on a machine with no browser."""
    return os.environ.get("INTERP_PNG", "1").strip().lower() in ("0", "false", "no", "off")


def write_pngs(
    figures: Mapping[str | Path, go.Figure], *, width: int = 900, height: int = 600, scale: float = 1.0
) -> list[Path]:
    """Render each figure to its PNG path in one browser session; each file appears whole or not at all.

    Offline by construction: plotly.js comes from the installed plotly package and MathJax is off,
    so the renderer never asks the network for a script.
    """
    if not figures:
        return []
    browser = find_browser()
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    import kaleido  # imported here: it starts nothing, but pulls in choreographer's logging on import

    targets = [Path(p) for p in figures]
    staging = {}
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging[path] = Path(tempfile.mkdtemp(prefix=".png-", dir=path.parent))
    specs = [
        dict(
            fig=fig.to_dict() if isinstance(fig, go.Figure) else fig,
            path=staging[path] / path.name,
            opts=dict(format="png", width=width, height=height, scale=scale),
        )
        for path, fig in zip(targets, figures.values())
    ]
    try:
        kaleido.write_fig_from_object_sync(
            specs, kopts=dict(path=browser, plotlyjs=str(plotly_js), mathjax=False, timeout=PNG_TIMEOUT_S)
        )
        for path in targets:
            os.replace(staging[path] / path.name, path)
    except Exception as error:
        if isinstance(error, InterpError):
            raise
        raise NoBrowserError(
            f"PNG export with {browser} failed: {type(error).__name__}: {error}. {BROWSER_HINT}"
        ) from error
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
    return targets
