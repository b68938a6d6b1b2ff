"""Figures of a dark-matter run, each built from one of its tidy tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from sae.darkmatter.decomposition import PowerLaw


def scaling_figure(by_width: pd.DataFrame, laws: pd.DataFrame) -> go.Figure:
    """FVU of Sae(x) and Sae(x) + LinearError by width, with their fitted c + a W^m."""
    fig = go.Figure()
    grid = np.geomspace(by_width.width.min(), by_width.width.max(), 100)
    for column, label in (("fvu_sae", "Sae(x)"), ("fvu_sae_plus_linear", "Sae(x) + LinearError")):
        fig.add_trace(go.Scatter(x=by_width.width, y=by_width[column], mode="markers", name=label, marker=dict(size=9)))
        law = laws.set_index("series").loc[column]
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=PowerLaw(law.c, law.a, law.m)(grid),
                mode="lines",
                name=f"{label}: {law.c:.3g} + {law.a:.3g} W^{law.m:.3g}",
            )
        )
    fig.update_layout(
        title=dict(text="FVU by SAE width (matched L0)"),
        xaxis=dict(type="log", title=dict(text="width W")),
        yaxis=dict(title=dict(text="FVU")),
    )
    return fig


def decomposition_figure(by_width: pd.DataFrame) -> go.Figure:
    """Stacked bars: the FVU each error part accounts for at each width."""
    widths = by_width.width.astype(str)
    fig = go.Figure(
        [
            go.Bar(x=widths, y=by_width.fvu_sae_plus_nonlinear, name="linear error (left by Sae + Nonlinear)"),
            go.Bar(x=widths, y=by_width.fvu_sae_plus_linear, name="nonlinear error (left by Sae + Linear)"),
        ]
    )
    fig.update_layout(
        barmode="stack",
        title=dict(text="SAE error decomposition (held-out tokens)"),
        xaxis=dict(title=dict(text="width")),
        yaxis=dict(title=dict(text="FVU")),
    )
    return fig


def norm_scatter_figure(per_token: pd.DataFrame, x: str, y: str, title: str) -> go.Figure:
    fig = go.Figure(go.Scattergl(x=per_token[x], y=per_token[y], mode="markers", marker=dict(size=3, opacity=0.4)))
    low, high = float(min(per_token[x].min(), per_token[y].min())), float(max(per_token[x].max(), per_token[y].max()))
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dot"), name="y = x"))
    fig.update_layout(
        title=dict(text=title), xaxis=dict(title=dict(text=x)), yaxis=dict(title=dict(text=y)), showlegend=False
    )
    return fig


def norm_r2_grid_figure(grid: pd.DataFrame) -> go.Figure:
    """Norm R^2 with its bootstrap 95% CI against the first positions dropped: one line per width, k and training (cells not yet run left out)."""
    fig = go.Figure()
    done = grid.dropna(subset=["norm_r2"])
    for (width, k, training), cell in done.groupby(["width", "k", "training"], sort=True):
        cell = cell.sort_values("positions_dropped")
        fig.add_trace(
            go.Scatter(
                x=cell.positions_dropped,
                y=cell.norm_r2,
                mode="lines+markers",
                name=f"W{width} k{k} {training} ({int(cell.steps.iloc[0])} steps)",
                line=dict(dash="solid" if training == "converged" else "dot"),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=cell.ci_high - cell.norm_r2,
                    arrayminus=cell.norm_r2 - cell.ci_low,
                ),
            )
        )
    fig.add_hline(y=0.9, line=dict(dash="dash", color="grey"), annotation_text="paper: > 0.9")
    fig.update_layout(
        title=dict(text="Norm R^2 (||e||^2 from x, no intercept, held out) by first positions dropped"),
        xaxis=dict(title=dict(text="first positions of each sequence dropped"), type="log"),
        yaxis=dict(title=dict(text="norm R^2")),
    )
    return fig
