"""Figures of a recall-vs-reasoning run, each built from one of its tidy tables."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from interp.plots import bars_with_errors, head_heatmap, layer_position_heatmap, top_k_bars


def accuracy_bars(dissociation: pd.DataFrame, title: str) -> go.Figure:
    """Accuracy per ablated set and task for each method; random sets as their mean with a 95% interval of the sets' spread."""
    fixed = dissociation[~dissociation["ablated"].str.startswith("random")][["method", "ablated", "task", "accuracy", "accuracy_se"]]
    randoms = dissociation[dissociation["ablated"].str.startswith("random")]
    spread = randoms.groupby(["method", "ablated", "task"])["accuracy"].agg(["mean", "std"]).reset_index()
    spread = spread.rename(columns={"mean": "accuracy", "std": "accuracy_se"}).assign(accuracy_se=lambda d: 1.96 * d["accuracy_se"].fillna(0.0))
    df = pd.concat([fixed, spread], ignore_index=True)
    df["condition"] = df["method"] + ": " + df["ablated"]
    fig = bars_with_errors(df, x="condition", y="accuracy", err="accuracy_se", color="task", title=title)
    fig.update_layout(yaxis=dict(range=[0, 1.05]))
    return fig


def unit_heatmap(effects: pd.DataFrame, task: str, title: str, value: str = "restoration") -> go.Figure:
    """Restoration (or its AtP estimate) of each head (layer x head) on one task; MLP layers sit in the extra column 'MLP' = n_heads."""
    rows = effects[effects["task"] == task].copy()
    n_heads = int(rows["head"].max()) + 1 if rows["head"].notna().any() else 0
    rows["head"] = rows["head"].fillna(n_heads).astype(int)
    fig = head_heatmap(rows, value=value, title=title)
    fig.update_xaxes(tickvals=list(range(n_heads + 1)), ticktext=[str(h) for h in range(n_heads)] + ["MLP"])
    return fig


def position_heatmap(positions: pd.DataFrame, task: str, title: str) -> go.Figure:
    rows = positions[positions["task"] == task]
    tokens = rows.drop_duplicates("position").sort_values("position")["token"].tolist()
    return layer_position_heatmap(rows, value="restoration", tokens=tokens, title=title)


def set_grid(choice: pd.DataFrame, title: str) -> go.Figure:
    """The recall set (+1) and reasoning set (-1) on the layer x head grid; MLP layers in the last column."""
    rows = choice.copy()
    n_heads = int(rows["head"].max()) + 1 if rows["head"].notna().any() else 0
    rows["head"] = rows["head"].fillna(n_heads).astype(int)
    rows["membership"] = rows["chosen_for"].map({"recall": 1.0, "reasoning": -1.0}).fillna(0.0)
    fig = head_heatmap(rows, value="membership", title=title)
    fig.update_traces(colorbar=dict(tickvals=[-1, 0, 1], ticktext=["reasoning set", "neither", "recall set"]))
    fig.update_xaxes(tickvals=list(range(n_heads + 1)), ticktext=[str(h) for h in range(n_heads)] + ["MLP"])
    return fig


def screen_bars(summary: pd.DataFrame, title: str) -> go.Figure:
    """Specialised units per feature, raw vs length-matched."""
    fig = go.Figure()
    for comparison, rows in summary.groupby("comparison"):
        fig.add_trace(go.Bar(x=rows["feature"], y=rows["specialised"], name=comparison))
    fig.update_layout(title=dict(text=title), barmode="group", yaxis=dict(title=dict(text="specialised units (q < alpha, |d| >= min_d)")))
    return fig


def training_curve(curve: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for column in [c for c in ("recall_acc", "reasoning_acc", "lookup_acc") if c in curve]:
        fig.add_trace(go.Scatter(x=curve["step"], y=curve[column], mode="lines", name=column))
    fig.update_layout(title=dict(text="Synthetic model: training-batch accuracy"), xaxis=dict(title=dict(text="step")), yaxis=dict(title=dict(text="accuracy"), range=[0, 1.05]))
    return fig


def run_figures(tables: dict[str, pd.DataFrame], prefix: str, label: str) -> dict[str, go.Figure]:
    """Every figure of one model's tables, named with prefix ('' for the chosen model, 'synthetic_' for the synthetic one)."""
    figures = {
        f"{prefix}accuracy": accuracy_bars(tables["dissociation"], f"{label}: accuracy after ablation (random: mean, 95% of sets)"),
        f"{prefix}sets": set_grid(tables["sets"], f"{label}: recall and reasoning sets"),
    }
    for task in ("recall", "reasoning"):
        effects = tables["unit_patching"]
        value = "restoration_atp" if "restoration_atp" in effects else "restoration"
        how = "AtP estimate" if value == "restoration_atp" else "exact"
        figures[f"{prefix}units_{task}"] = unit_heatmap(effects, task, f"{label}: {task}, restoration per unit patched at every position ({how})", value)
        if "position_patching" in tables:
            figures[f"{prefix}positions_{task}"] = position_heatmap(tables["position_patching"], task, f"{label}: {task}, resid_pre restoration by layer and position")
    if "neuron_dissociation" in tables:
        figures[f"{prefix}neuron_accuracy"] = accuracy_bars(tables["neuron_dissociation"], f"{label}: accuracy after ablating MLP neuron sets (random: mean, 95% of sets)")
        neurons = tables["neuron_unit_patching"].dropna(subset=["restoration"])
        for task in ("recall", "reasoning"):
            figures[f"{prefix}neurons_{task}"] = top_k_bars(neurons[neurons["task"] == task], value="restoration", k=20, label=("layer", "neuron"),
                                                            title=f"{label}: {task}, exact restoration of the top MLP neurons (AtP-preselected)")
    if "screen_summary" in tables:
        figures[f"{prefix}screen"] = screen_bars(tables["screen_summary"], f"{label}: correlational screen")
    return figures
