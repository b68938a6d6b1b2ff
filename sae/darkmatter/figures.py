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
        fig.add_trace(go.Scatter(x=grid, y=PowerLaw(law.c, law.a, law.m)(grid), mode="lines", name=f"{label}: {law.c:.3g} + {law.a:.3g} W^{law.m:.3g}"))
    fig.update_layout(title=dict(text="FVU by SAE width (matched L0)"), xaxis=dict(type="log", title=dict(text="width W")), yaxis=dict(title=dict(text="FVU")))
    return fig


def decomposition_figure(by_width: pd.DataFrame) -> go.Figure:
    """Stacked bars: the FVU each error part accounts for at each width."""
    widths = by_width.width.astype(str)
    fig = go.Figure([
        go.Bar(x=widths, y=by_width.fvu_sae_plus_nonlinear, name="linear error (left by Sae + Nonlinear)"),
        go.Bar(x=widths, y=by_width.fvu_sae_plus_linear, name="nonlinear error (left by Sae + Linear)"),
    ])
    fig.update_layout(barmode="stack", title=dict(text="SAE error decomposition (held-out tokens)"), xaxis=dict(title=dict(text="width")),
                      yaxis=dict(title=dict(text="FVU")))
    return fig


def norm_scatter_figure(per_token: pd.DataFrame, x: str, y: str, title: str) -> go.Figure:
    fig = go.Figure(go.Scattergl(x=per_token[x], y=per_token[y], mode="markers", marker=dict(size=3, opacity=0.4)))
    low, high = float(min(per_token[x].min(), per_token[y].min())), float(max(per_token[x].max(), per_token[y].max()))
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dot"), name="y = x"))
    fig.update_layout(title=dict(text=title), xaxis=dict(title=dict(text=x)), yaxis=dict(title=dict(text=y)), showlegend=False)
    return fig
