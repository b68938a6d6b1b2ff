"""Activation patching sweeps on prompt pairs: config in, results dir (tables, figures, dashboard) out.

python -m experiments.patching_sweep --out results/patching     (the built-in capital-city pairs)
interp patch pairs.jsonl --out results/mine                      (your pairs)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from interp.errors import InterpError, did_you_mean
from interp.patching.sweeps import SWEEPS
from interp.patching.pairs import CAPITALS, PAIR_FIELDS, builtin_pairs, check_pair, read_pairs  # noqa: F401  (re-exported)

METHODS = ("exact", "atp", "atp*", "exact+atp")
METRICS = ("logit_diff", "answer_prob", "accuracy", "kl_div")
METRIC_ALIASES = {"kl": "kl_div"}


@dataclass(frozen=True)
class PatchingSweepConfig:
    pairs: tuple[dict, ...] = field(default_factory=builtin_pairs)
    sweeps: tuple[str, ...] = ("resid_pre", "heads")
    metric: str = "logit_diff"
    align: bool = False
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    method: str = (
        "exact"  # or "atp" / "atp*": attribution estimates from one forward/backward pair; "exact+atp": both, compared
    )
    analysis: str = "activation_patching"

    def __post_init__(self):
        object.__setattr__(self, "metric", METRIC_ALIASES.get(self.metric, self.metric))
        if self.metric not in METRICS:
            raise InterpError(
                f"metric: {self.metric!r} is not a metric.{did_you_mean(str(self.metric), METRICS)} Known: {', '.join(METRICS)} (kl is kl_div)."
            )
        for sweep in self.sweeps:
            if sweep not in SWEEPS:
                raise InterpError(
                    f"sweeps: {sweep!r} is not a sweep.{did_you_mean(sweep, SWEEPS)} Known: {', '.join(SWEEPS)}."
                )
        if self.method not in METHODS:
            raise InterpError(
                f"method: {self.method!r} is not a patching method.{did_you_mean(self.method, METHODS)} Known: {', '.join(METHODS)}."
            )
        if not self.pairs:
            raise InterpError("pairs is empty: give at least one clean/corrupted prompt pair.")
        for i, row in enumerate(self.pairs):
            check_pair(row, f"pairs[{i}]")
        if all(row["clean"] == row["corrupted"] for row in self.pairs):
            raise InterpError(
                "pairs: every pair has the same clean and corrupted prompt, so clean and corrupted give the same metric and restoration "
                "(patched - corrupted) / (clean - corrupted) is undefined. Give corrupted prompts that change the answer."
            )


def sweep_tables(task, sweeps, method: str = "exact") -> dict[str, pd.DataFrame]:
    """Each sweep as a tidy table: exact patching, or its attribution estimate (one forward/backward for all)."""
    from interp.attribution import attribution_sweep
    from interp.patching.sweeps import sweep

    if method != "exact":
        return attribution_sweep(task, sweeps, method=method)
    return {name: sweep(task, name) for name in sweeps}


def sweep_figures(tables: dict[str, pd.DataFrame], tokens, method: str = "exact") -> dict[str, object]:
    from interp import plots

    label = "" if method == "exact" else f" ({method} estimate)"
    figures = {}
    for sweep, df in tables.items():
        if sweep == "heads":
            figures[sweep] = plots.head_heatmap(
                df, value="restoration", title=f"Restoration from patching each head's z, all positions{label}"
            )
        elif sweep == "heads_by_pos":
            figures[sweep] = plots.layer_position_heatmap(
                df,
                value="restoration",
                tokens=tokens,
                agg="max",
                title=f"Max restoration over heads, by layer and position{label}",
            )
        elif sweep == "neurons":
            figures[sweep] = plots.top_k_bars(
                df, value="restoration", label=["layer", "neuron"], k=30, title=f"Top neurons by restoration{label}"
            )
        else:
            figures[sweep] = plots.layer_position_heatmap(
                df, value="restoration", tokens=tokens, title=f"Restoration from patching {sweep}{label}"
            )
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
    label = [
        " ".join(
            f"{c[0].upper()}{int(v)}"
            for c, v in row.items()
            if c in ("layer", "head", "neuron", "position") and pd.notna(v)
        )
        for _, row in both.iterrows()
    ]
    lo, hi = (
        float(both[["restoration_exact", "restoration_atp"]].min().min()),
        float(both[["restoration_exact", "restoration_atp"]].max().max()),
    )
    fig = go.Figure(
        [
            go.Scatter(x=both["restoration_exact"], y=both["restoration_atp"], mode="markers", text=label, name=sweep),
            go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="grey"), name="y = x"),
        ]
    )
    fig.update_layout(
        title=dict(text=f"{sweep}: AtP estimate against exact patching (one point per unit)"),
        xaxis=dict(title=dict(text="exact restoration")),
        yaxis=dict(title=dict(text="AtP restoration")),
    )
    return fig


def check_task(task, metric: str) -> None:
    """Refuse a task whose clean and corrupted prompts give the same metric: every restoration would be 0/0."""
    clean, corrupted = task.clean_metric, task.corrupted_metric
    if not (math.isfinite(clean) and math.isfinite(corrupted)):
        raise InterpError(
            f"pairs: the {metric} of the clean ({clean}) or corrupted ({corrupted}) prompts is not finite on this model; check the prompts and answers."
        )
    if abs(clean - corrupted) <= 1e-6 * max(1.0, abs(clean), abs(corrupted)):
        raise InterpError(
            f"pairs: clean and corrupted prompts give the same {metric} ({clean:.6g}) on this model, so restoration "
            "(patched - corrupted) / (clean - corrupted) is 0/0 for every patch and the sweep would be all NaN. "
            "Use corrupted prompts that change the model's answer, or another --metric."
        )


def run(config: PatchingSweepConfig, out: Path, *, overwrite: bool = False) -> Path:
    """The sweeps into `out`: a folder holds one run (the same config reruns into it; another is refused unless overwrite)."""
    from dashboards import build_dashboard
    from interp.models import load_model, require_hooked
    from interp.patching import PatchingTask
    from interp.results import ResultsDir

    from interp.distributed import on_rank0, rank_world

    title = "Activation patching"
    # under torchrun (interp.distributed): every rank runs its share of each sweep and ends with all of it; rank 0
    # alone checks and writes the folder (its refusal stops the other ranks too)
    on_rank0(lambda: ResultsDir.check_create(out, config, title=title, exist_ok=True, overwrite=overwrite))
    model = require_hooked(load_model(config.model), "interp patch")
    task = PatchingTask.from_pairs(model, config.pairs, metric=config.metric, align=config.align)
    check_task(task, config.metric)
    if rank_world()[0] != 0:
        on_rank0(lambda: None)  # rank 0 creating the folder
        for method in ("exact", "atp") if config.method == "exact+atp" else (config.method,):
            sweep_tables(task, config.sweeps, method)  # the same sweeps in the same order as rank 0's _sweep_into
        return Path(out)
    run_dir = on_rank0(lambda: ResultsDir.create(out, config, title=title, exist_ok=True, overwrite=overwrite))
    with run_dir.failure_marker():
        _sweep_into(run_dir, config, model, task)
        build_dashboard(run_dir)
    return run_dir.path


def _sweep_into(run_dir, config: PatchingSweepConfig, model, task) -> None:
    pairs = config.pairs
    tokens = model.to_str_tokens(task.clean_tokens[0])
    if config.method == "exact+atp":
        tables, estimates = sweep_tables(task, config.sweeps, "exact"), sweep_tables(task, config.sweeps, "atp")
        figures = {
            **sweep_figures(tables, tokens, "exact"),
            **{f"{k}_atp": v for k, v in sweep_figures(estimates, tokens, "atp").items()},
            **{f"{k}_exact_vs_atp": agreement_figure(tables[k], estimates[k], k) for k in tables},
        }
    else:
        tables, estimates = sweep_tables(task, config.sweeps, config.method), {}
        figures = sweep_figures(tables, tokens, config.method)
    for name, df in tables.items():
        run_dir.save_table(name, df)
    run_dir.save_figures(figures)
    headline = {
        "n_pairs": len(pairs),
        "metric": config.metric,
        "method": config.method,
        "clean_metric": task.clean_metric,
        "corrupted_metric": task.corrupted_metric,
    }
    for name, df in tables.items():
        if df["restoration"].notna().any():
            top = df.loc[df["restoration"].idxmax()]
            headline[f"{name}_top"] = {
                k: (int(v) if k in ("layer", "head", "neuron", "position") and pd.notna(v) else v)
                for k, v in top.items()
                if k in ("layer", "head", "neuron", "position", "restoration") and pd.notna(v)
            }
    for name, df in estimates.items():
        run_dir.save_table(f"{name}_atp", df)
        headline[f"{name}_atp_agreement"] = agreement(tables[name], df)
    run_dir.write_metrics(headline, merge=False)


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run patching`)
    from experiments.cli import script_main

    script_main("patching")
