"""Figures of a recall-vs-reasoning run, each built from one of its tidy tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp.plots import bars_with_errors, head_heatmap, layer_position_heatmap, top_k_bars


def accuracy_bars(dissociation: pd.DataFrame, title: str) -> go.Figure:
    """Accuracy per ablated set and task for each method; random sets as their mean with a 95% interval of the sets' spread."""
    fixed = dissociation[~dissociation["ablated"].str.startswith("random")][
        ["method", "ablated", "task", "accuracy", "accuracy_se"]
    ]
    randoms = dissociation[dissociation["ablated"].str.startswith("random")]
    spread = randoms.groupby(["method", "ablated", "task"])["accuracy"].agg(["mean", "std"]).reset_index()
    spread = spread.rename(columns={"mean": "accuracy", "std": "accuracy_se"}).assign(
        accuracy_se=lambda d: 1.96 * d["accuracy_se"].fillna(0.0)
    )
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
    fig.update_layout(
        title=dict(text=title),
        barmode="group",
        yaxis=dict(title=dict(text="specialised units (q < alpha, |d| >= min_d)")),
    )
    return fig


def training_curve(curve: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for column in [c for c in ("recall_acc", "reasoning_acc", "lookup_acc") if c in curve]:
        fig.add_trace(go.Scatter(x=curve["step"], y=curve[column], mode="lines", name=column))
    fig.update_layout(
        title=dict(text="Synthetic model: training-batch accuracy"),
        xaxis=dict(title=dict(text="step")),
        yaxis=dict(title=dict(text="accuracy"), range=[0, 1.05]),
    )
    return fig


def drop_intervals(items: pd.DataFrame, method: str, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per (ablated set, task): the accuracy drop on the evaluated items and its 95% item-bootstrap interval (paired: each item unablated vs ablated)."""
    rng = np.random.default_rng(seed)
    rows = []
    at = items[items["method"] == method]
    for task in ("recall", "reasoning"):
        base = at[(at["task"] == task) & (at["ablated"] == "none")].sort_values("item")["correct"].to_numpy(float)
        for ablated in ("recall_set", "reasoning_set"):
            after = at[(at["task"] == task) & (at["ablated"] == ablated)].sort_values("item")["correct"].to_numpy(float)
            diff = base - after
            draws = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
            rows.append(
                dict(
                    ablated=ablated,
                    task=task,
                    drop=float(diff.mean()),
                    low=float(np.quantile(draws, 0.025)),
                    high=float(np.quantile(draws, 0.975)),
                    n_items=len(diff),
                )
            )
    return pd.DataFrame(rows)


def dissociation_matrix(items: pd.DataFrame, method: str, title: str) -> go.Figure:
    """The 2 x 2 matrix: accuracy drop of each task (columns) after ablating each set (rows), with 95% item-bootstrap CIs, on held-out items."""
    cells = drop_intervals(items, method)
    z = cells.pivot(index="ablated", columns="task", values="drop").loc[
        ["recall_set", "reasoning_set"], ["recall", "reasoning"]
    ]
    text = cells.assign(
        label=lambda d: [f"{r.drop:.2f}<br>[{r.low:.2f}, {r.high:.2f}]<br>n={r.n_items}" for r in d.itertuples()]
    )
    text = text.pivot(index="ablated", columns="task", values="label").loc[z.index, z.columns]
    fig = go.Figure(
        go.Heatmap(
            z=z.to_numpy(),
            x=["recall items", "reasoning items"],
            y=["recall set ablated", "reasoning set ablated"],
            text=text.to_numpy(),
            texttemplate="%{text}",
            colorscale="Reds",
            zmin=0,
            zmax=max(1e-9, float(np.nanmax(z.to_numpy()))),
            colorbar=dict(title=dict(text="drop")),
        )
    )
    fig.update_layout(title=dict(text=title))
    return fig


def random_distributions(dissociation: pd.DataFrame, method: str, title: str) -> go.Figure:
    """For each chosen set: its matched random sets' own-task drop and selectivity (histograms), the chosen set marked by a line."""
    at = dissociation[dissociation["method"] == method]
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[
            "recall set: recall drop",
            "recall set: selectivity",
            "reasoning set: reasoning drop",
            "reasoning set: selectivity",
        ],
    )
    for row, (chosen, own, other) in enumerate(
        (("recall_set", "recall", "reasoning"), ("reasoning_set", "reasoning", "recall")), start=1
    ):
        drops = {
            task: at[(at["ablated"] == f"random_{chosen}") & (at["task"] == task)]
            .sort_values("set_index")["drop"]
            .to_numpy()
            for task in (own, other)
        }
        chosen_drop = {
            task: float(at[(at["ablated"] == chosen) & (at["task"] == task)]["drop"].iloc[0]) for task in (own, other)
        }
        values = [(drops[own], chosen_drop[own]), (drops[own] - drops[other], chosen_drop[own] - chosen_drop[other])]
        for col, (random_values, observed) in enumerate(values, start=1):
            fig.add_trace(
                go.Histogram(
                    x=random_values,
                    nbinsx=30,
                    name=f"{len(random_values)} matched random sets",
                    marker_color="#9aa5b1",
                    showlegend=row == 1 and col == 1,
                ),
                row=row,
                col=col,
            )
            fig.add_vline(
                x=observed,
                line_color="#c0392b",
                line_width=3,
                row=row,
                col=col,
                annotation_text=f"chosen {observed:.2f}",
                annotation_position="bottom right",
            )
    fig.update_layout(title=dict(text=title), bargap=0.05)
    return fig


def run_figures(tables: dict[str, pd.DataFrame], prefix: str, label: str) -> dict[str, go.Figure]:
    """Every figure of one model's tables, named with prefix ('' for the chosen model, 'synthetic_' for the synthetic one)."""
    figures = {
        f"{prefix}accuracy": accuracy_bars(
            tables["dissociation"], f"{label}: accuracy after ablation (random: mean, 95% of sets)"
        ),
        **{
            f"{prefix}matrix_{method}": dissociation_matrix(
                tables["item_ablation"],
                method,
                f"{label}: dissociation matrix, {method} ablation (held-out items; drop [95% CI])",
            )
            for method in tables["dissociation"]["method"].unique()
        },
        **{
            f"{prefix}random_{method}": random_distributions(
                tables["dissociation"], method, f"{label}: matched random sets vs the chosen set, {method} ablation"
            )
            for method in tables["dissociation"]["method"].unique()
        },
        f"{prefix}sets": set_grid(tables["sets"], f"{label}: recall and reasoning sets"),
    }
    for task in ("recall", "reasoning"):
        effects = tables["unit_patching"]
        value = "restoration_atp" if "restoration_atp" in effects else "restoration"
        how = "AtP estimate" if value == "restoration_atp" else "exact"
        figures[f"{prefix}units_{task}"] = unit_heatmap(
            effects, task, f"{label}: {task}, restoration per unit patched at every position ({how})", value
        )
        if "position_patching" in tables:
            figures[f"{prefix}positions_{task}"] = position_heatmap(
                tables["position_patching"], task, f"{label}: {task}, resid_pre restoration by layer and position"
            )
    if "neuron_dissociation" in tables:
        figures[f"{prefix}neuron_accuracy"] = accuracy_bars(
            tables["neuron_dissociation"],
            f"{label}: accuracy after ablating MLP neuron sets (random: mean, 95% of sets)",
        )
        for method in tables["neuron_dissociation"]["method"].unique():
            figures[f"{prefix}neuron_matrix_{method}"] = dissociation_matrix(
                tables["neuron_item_ablation"], method, f"{label}: neuron sets, dissociation matrix, {method} ablation"
            )
            figures[f"{prefix}neuron_random_{method}"] = random_distributions(
                tables["neuron_dissociation"], method, f"{label}: neuron sets vs matched random neuron sets, {method}"
            )
        neurons = tables["neuron_unit_patching"].dropna(subset=["restoration"])
        for task in ("recall", "reasoning"):
            figures[f"{prefix}neurons_{task}"] = top_k_bars(
                neurons[neurons["task"] == task],
                value="restoration",
                k=20,
                label=("layer", "neuron"),
                title=f"{label}: {task}, exact restoration of the top MLP neurons (AtP-preselected)",
            )
    if "screen_summary" in tables:
        figures[f"{prefix}screen"] = screen_bars(tables["screen_summary"], f"{label}: correlational screen")
    return figures


def control_bars(controls: pd.DataFrame) -> go.Figure:
    """Per control seed: the interaction with its bootstrap CI, marked by whether the dissociation was declared."""
    fig = go.Figure()
    for shuffled, rows in controls.groupby("shuffled"):
        label = "shuffled labels (must not detect)" if shuffled else "planted circuit (must detect)"
        fig.add_trace(
            go.Scatter(
                x=rows["seed"],
                y=rows["interaction"],
                mode="markers",
                name=label,
                marker=dict(symbol=["circle" if d else "x" for d in rows["double_dissociation"]], size=9),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=rows["interaction_ci95_high"] - rows["interaction"],
                    arrayminus=rows["interaction"] - rows["interaction_ci95_low"],
                ),
            )
        )
    fig.add_hline(y=0.0, line_dash="dot")
    fig.update_layout(
        title=dict(
            text="Controls: interaction (sum of both selectivities) per seed, 95% item-bootstrap CI; circle = declared"
        ),
        xaxis=dict(title=dict(text="seed")),
        yaxis=dict(title=dict(text="interaction")),
    )
    return fig
