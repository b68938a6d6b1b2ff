"""Plotly figures of a scan-and-snap run, each built from one of its tidy tables."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _label(eta_y: float, eta_z: float) -> str:
    return f"eta_Y={eta_y:g}, eta_Z={eta_z:g}"


def mass_over_training(small: pd.DataFrame) -> go.Figure:
    """Mass of c_n on common vs distinct tokens per step (mean over classes), paper-setting runs."""
    runs = small[small["setting"] == "paper"]
    mass = (
        runs.groupby(["eta_y", "eta_z", "step", "class", "kind"])["c"]
        .sum()
        .groupby(["eta_y", "eta_z", "step", "kind"])
        .mean()
        .reset_index()
    )
    fig = go.Figure()
    for (eta_y, eta_z, kind), rows in mass.groupby(["eta_y", "eta_z", "kind"]):
        fig.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["c"],
                name=f"{kind}, {_label(eta_y, eta_z)}",
                line=dict(dash="solid" if kind == "distinct" else "dot"),
            )
        )
    fig.update_layout(
        title="Attention mass of c_n on common vs distinct tokens (small case)",
        xaxis_title="SGD step",
        yaxis_title="mass of c_n",
    )
    return fig


def final_composition(small: pd.DataFrame) -> go.Figure:
    """c_n of class 0 per token at a few steps (the paper's Fig. 4 layout), one panel per learning-rate pair."""
    runs = small[(small["setting"] == "paper") & (small["class"] == 0)]
    pairs = sorted(runs.groupby(["eta_y", "eta_z"]).groups)
    steps = sorted(runs["step"].unique())
    shown = sorted({steps[min(i, len(steps) - 1)] for i in (0, 2, 4, 6, 8, 10)} | {steps[-1]})
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[_label(*p) for p in pairs], shared_yaxes=True)
    for col, (eta_y, eta_z) in enumerate(pairs, start=1):
        grid = runs[(runs["eta_y"] == eta_y) & (runs["eta_z"] == eta_z) & runs["step"].isin(shown)].pivot_table(
            index="step", columns="slot", values="c"
        )
        fig.add_trace(
            go.Heatmap(
                z=grid.to_numpy(),
                x=[f"{'C' if s < 10 else 'D'}{s}" for s in grid.columns],
                y=[f"step {s}" for s in grid.index],
                colorscale="Viridis",
                showscale=col == len(pairs),
            ),
            row=1,
            col=col,
        )
    fig.update_layout(title="c_n of class 0: common tokens (C) then distinct tokens (D) by increasing P(l|n)")
    return fig


def sweep_entropy(measures: pd.DataFrame) -> go.Figure:
    """Mean entropy of c_n over distinct tokens vs eta_Y/eta_Z, one panel per number of queries, one line per eta_Z."""
    per_run = measures.groupby(["n_queries", "eta_z", "ratio", "seed"])["entropy"].mean().reset_index()
    stats = per_run.groupby(["n_queries", "eta_z", "ratio"])["entropy"].agg(["mean", "std"]).reset_index()
    queries = sorted(stats["n_queries"].unique())
    fig = make_subplots(
        rows=1,
        cols=len(queries),
        subplot_titles=[f"{q} queries / {2 * q} next tokens" for q in queries],
        shared_yaxes=True,
    )
    for col, q in enumerate(queries, start=1):
        for eta_z, rows in stats[stats["n_queries"] == q].groupby("eta_z"):
            fig.add_trace(
                go.Scatter(
                    x=rows["ratio"],
                    y=rows["mean"],
                    error_y=dict(type="data", array=rows["std"].fillna(0)),
                    name=f"eta_Z={eta_z:g}",
                    legendgroup=f"{eta_z:g}",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="log", title_text="eta_Y / eta_Z", row=1, col=col)
    fig.update_yaxes(title_text="entropy of c_n over distinct tokens", row=1, col=1)
    fig.update_layout(title="Sweep: lower entropy = sparser attention")
    return fig


def snap_curves(snap: pd.DataFrame) -> go.Figure:
    """B(t) and its growth exponent d ln B / d ln t for each eta_Y, with the predicted snap time t0 marked."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["B(t) = eta_Z int xi", "growth exponent d ln B / d ln t"])
    for eta_y, rows in snap[snap["t"] > 0].groupby("eta_y"):
        fig.add_trace(
            go.Scatter(x=rows["t"], y=rows["B"], name=f"eta_Y={eta_y:g}", legendgroup=f"{eta_y:g}"), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(
                x=rows["t"],
                y=rows["growth_exponent"],
                name=f"eta_Y={eta_y:g}",
                legendgroup=f"{eta_y:g}",
                showlegend=False,
            ),
            row=1,
            col=2,
        )
        fig.add_vline(x=float(rows["snap_time"].iloc[0]), line_dash="dot", line_color="grey")
    fig.update_xaxes(type="log", title_text="t (SGD steps)")
    fig.update_layout(title=f"Reduced ODE (K=10, M=1000, eta_Z={snap['eta_z'].iloc[0]:g}); dotted: t0 = K ln M / eta_Y")
    return fig


def sgd_vs_ode(overlay: pd.DataFrame) -> go.Figure:
    """SGD trajectories (markers) over the population ODE (lines): common mass and top distinct token's c."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["mass of c_n on common tokens", "c of the most likely distinct token"]
    )
    for (eta_y, eta_z), rows in overlay.groupby(["eta_y", "eta_z"]):
        for source, style in (("ode", dict(mode="lines")), ("sgd", dict(mode="markers", marker=dict(size=4)))):
            part = rows[rows["source"] == source]
            for col, value in ((1, "common_mass"), (2, "top_distinct_c")):
                fig.add_trace(
                    go.Scatter(
                        x=part["step"],
                        y=part[value],
                        name=f"{source}, {_label(eta_y, eta_z)}",
                        legendgroup=f"{source}{eta_y}",
                        showlegend=col == 1,
                        **style,
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="SGD step = ODE time")
    fig.update_layout(title="SGD (plain, no momentum) against the T -> infinity gradient flow")
    return fig


def transformer_attention(transformer: pd.DataFrame) -> go.Figure:
    """Last-position attention of the TransformerLens model on common / distinct / query, over training."""
    variants = sorted(transformer["variant"].unique())
    fig = make_subplots(
        rows=1, cols=len(variants) + 1, subplot_titles=[*variants, "per-occurrence attention at the end"]
    )
    for col, variant in enumerate(variants, start=1):
        mass = transformer[transformer["variant"] == variant].groupby(["step", "kind"])["attention"].sum().reset_index()
        for kind, rows in mass.groupby("kind"):
            fig.add_trace(go.Scatter(x=rows["step"], y=rows["attention"], name=f"{variant}: {kind}"), row=1, col=col)
        last = transformer[(transformer["variant"] == variant) & (transformer["kind"] == "distinct")]
        last = last[last["step"] == last["step"].max()]
        fig.add_trace(
            go.Bar(
                x=last["distinct_rank"], y=last["attention_per_occurrence"], name=f"{variant}: distinct, per occurrence"
            ),
            row=1,
            col=len(variants) + 1,
        )
    fig.update_layout(
        title="1-layer TransformerLens transformer (W_pos = 0, Adam): attention of the query position", barmode="group"
    )
    return fig


def common_mass_scan_snap(curves: pd.DataFrame, measures: pd.DataFrame) -> go.Figure:
    """Seed-mean common mass per step for each eta_Y (authors' momentum; plain SGD dotted), mean snap step marked."""
    fig = go.Figure()
    for (setting, eta_y), rows in curves.groupby(["setting", "eta_y"]):
        fig.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["mean"],
                name=f"{setting}, eta_Y={eta_y:g}",
                line=dict(dash="solid" if setting == "authors_momentum" else "dot"),
            )
        )
    snaps = (
        measures[measures["setting"] == "authors_momentum"]
        .groupby("eta_y")[["snap_step", "mass_at_snap"]]
        .mean()
        .reset_index()
    )
    fig.add_trace(
        go.Scatter(
            x=snaps["snap_step"],
            y=snaps["mass_at_snap"],
            mode="markers",
            marker=dict(size=10, symbol="x"),
            name="snap (mean over seeds)",
        )
    )
    fig.update_layout(
        title="Common mass of c_n: a monotone scan, then a snap (small case, eta_Z = 1, zero init)",
        xaxis_title="SGD step",
        yaxis_title="mass on common tokens",
    )
    return fig


def figure4_loss(figure4: pd.DataFrame, authors: dict[int, float]) -> go.Figure:
    """Our loss per iteration (mean and spread over seeds) against the authors' figure_4.log."""
    stats = figure4.groupby("step")["loss"].agg(["mean", "min", "max"]).reset_index()
    fig = go.Figure(
        [
            go.Scatter(x=stats["step"], y=stats["max"], line=dict(width=0), showlegend=False),
            go.Scatter(
                x=stats["step"], y=stats["min"], fill="tonexty", line=dict(width=0), name="ours: min-max over seeds"
            ),
            go.Scatter(x=stats["step"], y=stats["mean"], name=f"ours: mean over {figure4['seed'].nunique()} seeds"),
            go.Scatter(
                x=list(authors), y=list(authors.values()), mode="markers", name="authors' figure_4.log (seed 2)"
            ),
        ]
    )
    fig.update_yaxes(type="log", title_text="loss")
    fig.update_layout(title="Figure 4 run: eta_Y = eta_Z = 1, zero init, SGD momentum 0.9", xaxis_title="iteration")
    return fig


def figure6_vs_authors(figure6: pd.DataFrame) -> go.Figure:
    """Our cell means against the authors' (error bars: standard deviations over seeds), one colour per variant."""
    fig = go.Figure()
    for variant, rows in figure6.groupby("variant"):
        fig.add_trace(
            go.Scatter(
                x=rows["authors"],
                y=rows["ours"],
                mode="markers",
                name=variant,
                error_x=dict(type="data", array=rows["authors_std"]),
                error_y=dict(type="data", array=rows["ours_std"]),
                text=[
                    f"{q} queries, eta_Z={z:g}, ratio={r:g}"
                    for q, z, r in zip(rows["n_queries"], rows["eta_z"], rows["ratio"])
                ],
            )
        )
    low, high = float(figure6[["authors", "ours"]].min().min()), float(figure6[["authors", "ours"]].max().max())
    fig.add_trace(
        go.Scatter(x=[low, high], y=[low, high], mode="lines", line=dict(dash="dot", color="grey"), name="y = x")
    )
    fig.update_layout(
        title="Figure 6 cells: entropy of c_n over distinct tokens, ours vs the authors' table",
        xaxis_title="authors (figure_6_data.pkl)",
        yaxis_title="ours",
    )
    return fig
