"""Activation patching sweeps on prompt pairs: config in, results dir (tables, figures, dashboard) out.

    python -m experiments.patching_sweep --out results/patching     (the built-in capital-city pairs)
    interp patch pairs.jsonl --out results/mine                      (your pairs)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from interp.errors import InterpError, did_you_mean

CAPITALS = {
    "France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo", "Russia": "Moscow",
    "Greece": "Athens", "England": "London", "China": "Beijing", "Canada": "Ottawa", "Austria": "Vienna",
    "Ireland": "Dublin", "Portugal": "Lisbon", "Norway": "Oslo", "Sweden": "Stockholm", "Kenya": "Nairobi",
}  # each prompt is 5 tokens and SmolLM2-135M answers each correctly (checked in tests/test_patching_sweep.py)


def builtin_pairs(n: int = 16) -> tuple[dict, ...]:
    """Clean 'The capital of X is' vs corrupted with the next country; answer X's capital, wrong the other's."""
    countries = list(CAPITALS)[:n]
    return tuple(
        {"clean": f"The capital of {c} is", "corrupted": f"The capital of {o} is", "answer": f" {CAPITALS[c]}", "wrong": f" {CAPITALS[o]}"}
        for c, o in zip(countries, countries[1:] + countries[:1])
    )


METHODS = ("exact", "atp", "atp*", "exact+atp")  # exact+atp: both, side by side, with their agreement
SWEEPS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos", "neurons")


@dataclass(frozen=True)
class PatchingSweepConfig:
    pairs: tuple[dict, ...] = field(default_factory=builtin_pairs)
    sweeps: tuple[str, ...] = ("resid_pre", "heads")
    metric: str = "logit_diff"
    align: bool = False
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    method: str = "exact"  # or "atp" / "atp*": attribution estimates from one forward/backward pair; "exact+atp": both, compared
    analysis: str = "activation_patching"

    def __post_init__(self):
        for sweep in self.sweeps:
            if sweep not in SWEEPS:
                raise InterpError(f"sweeps: {sweep!r} is not a sweep.{did_you_mean(sweep, SWEEPS)} Known: {', '.join(SWEEPS)}.")
        if self.method not in METHODS:
            raise InterpError(f"method: {self.method!r} is not a patching method.{did_you_mean(self.method, METHODS)} Known: {', '.join(METHODS)}.")
        if not self.pairs:
            raise InterpError("pairs is empty: give at least one clean/corrupted prompt pair.")


def read_pairs(path: Path) -> tuple[dict, ...]:
    """Prompt pairs from .jsonl or .csv with fields clean, corrupted, answer, wrong."""
    path = Path(path)
    if not path.exists():
        raise InterpError(f"pairs: {path} does not exist; give a .jsonl or .csv file with fields clean, corrupted, answer, wrong.")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".csv":
        rows = pd.read_csv(path, keep_default_na=False).to_dict("records")
    else:
        raise InterpError(f"pairs: {path.name} is neither .jsonl nor .csv.")
    for i, row in enumerate(rows):
        missing = {"clean", "corrupted", "answer", "wrong"} - set(row)
        if missing:
            raise InterpError(f"pairs: row {i} of {path.name} lacks {sorted(missing)}; every row needs clean, corrupted, answer, wrong.")
    return tuple(rows)


def sweep_tables(task, sweeps, method: str = "exact") -> dict[str, pd.DataFrame]:
    """Each sweep as a tidy table: exact patching, or its attribution estimate (one forward/backward for all)."""
    from interp.attribution import attribution_sweep
    from interp.patching import patch_heads, patch_layer_positions, patch_neurons

    if method != "exact":
        return attribution_sweep(task, sweeps, method=method)
    exact = {"heads": patch_heads, "heads_by_pos": lambda t: patch_heads(t, by_position=True), "neurons": patch_neurons}
    return {sweep: exact[sweep](task) if sweep in exact else patch_layer_positions(task, sweep) for sweep in sweeps}


def sweep_figures(tables: dict[str, pd.DataFrame], tokens, method: str = "exact") -> dict[str, object]:
    from interp import plots

    label = "" if method == "exact" else f" ({method} estimate)"
    figures = {}
    for sweep, df in tables.items():
        if sweep == "heads":
            figures[sweep] = plots.head_heatmap(df, value="restoration", title=f"Restoration from patching each head's z, all positions{label}")
        elif sweep == "heads_by_pos":
            figures[sweep] = plots.layer_position_heatmap(df, value="restoration", tokens=tokens, agg="max", title=f"Max restoration over heads, by layer and position{label}")
        elif sweep == "neurons":
            figures[sweep] = plots.top_k_bars(df, value="restoration", label=["layer", "neuron"], k=30, title=f"Top neurons by restoration{label}")
        else:
            figures[sweep] = plots.layer_position_heatmap(df, value="restoration", tokens=tokens, title=f"Restoration from patching {sweep}{label}")
    return figures


def _joined(exact: pd.DataFrame, estimate: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("layer", "head", "neuron", "position") if c in exact.columns and c in estimate.columns]
    return exact[keys + ["restoration"]].merge(estimate[keys + ["restoration"]], on=keys, suffixes=("_exact", "_atp"))


def agreement(exact: pd.DataFrame, estimate: pd.DataFrame, top: int = 10) -> dict:
    """How well AtP ranks what exact patching finds: Pearson r over units, and the overlap of the two top-`top` lists."""
    both = _joined(exact, estimate)
    k = min(top, len(both))
    best_exact = set(both.nlargest(k, "restoration_exact").index)
    best_atp = set(both.nlargest(k, "restoration_atp").index)
    r = float(both["restoration_exact"].corr(both["restoration_atp"])) if len(both) > 1 else float("nan")
    return {"pearson_r": r, f"top{k}_overlap": len(best_exact & best_atp) / k, "units": len(both)}


def agreement_figure(exact: pd.DataFrame, estimate: pd.DataFrame, sweep: str):
    import plotly.graph_objects as go

    both = _joined(exact, estimate)
    label = [" ".join(f"{c[0].upper()}{int(v)}" for c, v in row.items() if c in ("layer", "head", "neuron", "position") and pd.notna(v)) for _, row in both.iterrows()]
    lo, hi = float(both[["restoration_exact", "restoration_atp"]].min().min()), float(both[["restoration_exact", "restoration_atp"]].max().max())
    fig = go.Figure([go.Scatter(x=both["restoration_exact"], y=both["restoration_atp"], mode="markers", text=label, name=sweep),
                     go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="grey"), name="y = x")])
    fig.update_layout(title=dict(text=f"{sweep}: AtP estimate against exact patching (one point per unit)"),
                      xaxis=dict(title=dict(text="exact restoration")), yaxis=dict(title=dict(text="AtP restoration")))
    return fig


def run(config: PatchingSweepConfig, out: Path) -> Path:
    from dashboards import build_dashboard
    from interp.models import load_model
    from interp.patching import PatchingTask
    from interp.results import ResultsDir

    model = load_model(config.model)
    pairs = config.pairs
    task = PatchingTask(
        model, [p["clean"] for p in pairs], [p["corrupted"] for p in pairs], [p["answer"] for p in pairs],
        [p["wrong"] for p in pairs], metric=config.metric, align=config.align,
    )
    run_dir = ResultsDir.create(out, config, title="Activation patching", exist_ok=True)
    tokens = model.to_str_tokens(task.clean_tokens[0])
    if config.method == "exact+atp":
        tables, estimates = sweep_tables(task, config.sweeps, "exact"), sweep_tables(task, config.sweeps, "atp")
        figures = {**sweep_figures(tables, tokens, "exact"), **{f"{k}_atp": v for k, v in sweep_figures(estimates, tokens, "atp").items()},
                   **{f"{k}_exact_vs_atp": agreement_figure(tables[k], estimates[k], k) for k in tables}}
    else:
        tables, estimates = sweep_tables(task, config.sweeps, config.method), {}
        figures = sweep_figures(tables, tokens, config.method)
    for name, df in tables.items():
        run_dir.save_table(name, df)
    run_dir.save_figures(figures)
    headline = {"n_pairs": len(pairs), "metric": config.metric, "method": config.method, "clean_metric": task.clean_metric, "corrupted_metric": task.corrupted_metric}
    for name, df in tables.items():
        top = df.loc[df["restoration"].idxmax()]
        headline[f"{name}_top"] = {k: (int(v) if k in ("layer", "head", "neuron", "position") and pd.notna(v) else v) for k, v in top.items() if k in ("layer", "head", "neuron", "position", "restoration") and pd.notna(v)}
    for name, df in estimates.items():
        run_dir.save_table(f"{name}_atp", df)
        headline[f"{name}_atp_agreement"] = agreement(tables[name], df)
    run_dir.write_metrics(headline)
    build_dashboard(run_dir)
    return run_dir.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/patching"))
    parser.add_argument("--sweeps", nargs="+", default=["resid_pre", "heads"])
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    print(run(PatchingSweepConfig(sweeps=tuple(args.sweeps), model=args.model), args.out) / "dashboard.html")


if __name__ == "__main__":
    main()
