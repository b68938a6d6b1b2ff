"""Figures of a reachability run, each built from one of its tidy tables."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.plots import bars_with_errors


def accuracy_figure(accuracy: pd.DataFrame) -> go.Figure:
    """accuracy: (method, accuracy, sem)."""
    return bars_with_errors(
        accuracy, x="method", y="accuracy", err="sem", title="Held-out accuracy (construction: hand-set weights)"
    )


def grouped_by_step(table: pd.DataFrame, model: str, what: str) -> go.Figure:
    """table: (model, step, group, mean, sem) as written by probes.group_means."""
    rows = table[table["model"] == model]
    return bars_with_errors(
        rows, x="step", y="mean", err="sem", color="group", title=f"{what} per thought step ({model})"
    )


def probe_auc_figure(auc: pd.DataFrame) -> go.Figure:
    """auc: (model, step, node, auc); bars are the mean over nodes."""
    summary = auc.groupby(["model", "step"], as_index=False)["auc"].agg(mean="mean", sem="sem").fillna({"sem": 0.0})
    return bars_with_errors(
        summary,
        x="step",
        y="mean",
        err="sem",
        color="model",
        title="Linear probe of 'v reachable within c steps': mean per-node AUC",
    )


def _depths(nodes: list[int], edges: pd.DataFrame) -> dict[int, int]:
    """Longest-path depth of each node in the DAG (ids need not be in topological order)."""
    depth = {v: 0 for v in nodes}
    pairs = list(zip(edges["source"], edges["target"]))
    for _ in range(len(nodes)):  # relax until stable: at most one pass per node in a DAG
        changed = False
        for source, target in pairs:
            if depth[target] < depth[source] + 1:
                depth[target], changed = depth[source] + 1, True
        if not changed:
            break
    return depth


def accuracy_curve_figure(curves: pd.DataFrame) -> go.Figure:
    """curves: (method, step, accuracy, n): held-out accuracy against training steps, one line per format."""
    fig = go.Figure()
    for method, rows in curves.groupby("method"):
        sem = (rows["accuracy"] * (1 - rows["accuracy"]) / rows["n"]).pow(0.5)
        fig.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["accuracy"],
                error_y=dict(type="data", array=sem),
                mode="lines+markers",
                name=method,
            )
        )
    fig.update_layout(
        title=dict(text="Held-out accuracy against training steps (curve set)"),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text="accuracy"), range=[0, 1.02]),
    )
    return fig


def example_graph_figure(nodes: pd.DataFrame, edges: pd.DataFrame, model: str) -> go.Figure:
    """The example graph once per step, each node coloured by the thought's weight on it (softmax over the graph's nodes).

    nodes: (model, step, node, distance, inner_product[, weight]); edges: (source, target[, root, answer, decoy]).
    """
    rows = nodes[nodes["model"] == model]
    steps = sorted(rows["step"].unique())
    ids = sorted(rows["node"].unique())
    depth = _depths(ids, edges)
    column: dict[int, int] = {}
    xy = {}
    for v in ids:
        xy[v] = (depth[v], column.get(depth[v], 0))
        column[depth[v]] = column.get(depth[v], 0) + 1
    fig = make_subplots(rows=1, cols=len(steps), subplot_titles=[f"thought {c}" for c in steps])
    value = "weight" if "weight" in rows else "inner_product"
    lo, hi = (0.0, 1.0) if value == "weight" else (rows["inner_product"].min(), rows["inner_product"].max())
    roles = {int(edges[role].iloc[0]): role for role in ("root", "answer", "decoy") if role in edges}
    names = [f"{v} {roles[v]}" if v in roles else str(v) for v in ids]
    for col, c in enumerate(steps, start=1):
        for source, target in zip(edges["source"], edges["target"]):
            fig.add_trace(
                go.Scatter(
                    x=[xy[source][0], xy[target][0]],
                    y=[xy[source][1], xy[target][1]],
                    mode="lines",
                    line=dict(color="lightgray"),
                    showlegend=False,
                    hoverinfo="skip",
                ),
                1,
                col,
            )
        step_rows = rows[rows["step"] == c].set_index("node").loc[ids]
        labels = [f"{v} (d={d})" if d >= 0 else f"{v} (unreachable)" for v, d in zip(ids, step_rows["distance"])]
        fig.add_trace(
            go.Scatter(
                x=[xy[v][0] for v in ids],
                y=[xy[v][1] for v in ids],
                mode="markers+text",
                text=[f"{n}<br>{w:.2f}" for n, w in zip(names, step_rows[value])],
                textposition="top center",
                hovertext=[
                    f"{lab}: inner product {ip:.3g}, {value} {w:.3g}"
                    for lab, ip, w in zip(labels, step_rows["inner_product"], step_rows[value])
                ],
                hoverinfo="text",
                showlegend=False,
                marker=dict(
                    size=16,
                    color=step_rows[value],
                    colorscale="Viridis",
                    cmin=lo,
                    cmax=hi,
                    showscale=col == len(steps),
                    line=dict(width=1, color="black"),
                ),
            ),
            1,
            col,
        )
    fig.update_layout(
        title=dict(
            text=f"Held-out example graph ({model}): node colour and label = thought c's {value} on the node; x = depth in the DAG"
        )
    )
    return fig


def loss_figure(curves: pd.DataFrame) -> go.Figure:
    """curves: (method, step, stage, loss), smoothed over 50 steps."""
    fig = go.Figure()
    for method, rows in curves.groupby("method"):
        fig.add_trace(
            go.Scatter(x=rows["step"], y=rows["loss"].rolling(50, min_periods=1).mean(), mode="lines", name=method)
        )
    fig.update_layout(
        title=dict(text="Training loss (50-step mean)"),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text="loss")),
    )
    return fig
