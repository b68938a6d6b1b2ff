"""Tidy tables of the runs and the verdict on each of the paper's predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau, spearmanr

from circuits.scan_snap.measures import common_mass, distinct_entropy, kendall_tau_distinct, measured_snap_time, slot_composition
from circuits.scan_snap.model import RunSpec, TrainedRuns

COMMON_MASS_MAX = 0.05  # "goes to ~0": below 5% of c_n after training
KENDALL_TAU_MIN = 0.8
TREND_FRACTION_MIN = 0.75  # share of sweep cells whose entropy moves the predicted way
SNAP_SPREAD_MAX = 0.1  # coefficient of variation of (measured snap time) * eta_Y across eta_Y
LOG_EXPONENT_MAX = 0.35  # d ln B / d ln t at 10 t0: ~0 for logarithmic growth, 2 before the snap


def composition_frame(trained: TrainedRuns, runs: list[RunSpec], labels: dict[str, list]) -> pd.DataFrame:
    """One row per (recorded step, run, class, slot): c_{l|n}, z and P(l|n); labels add per-run columns."""
    layout = trained.layout
    c = slot_composition(trained.class_logits, trained.probs.unsqueeze(0), layout)
    slot_tokens = layout.slot_to_token(torch.arange(c.shape[-1]), torch.arange(layout.max_classes).unsqueeze(-1))
    z = trained.class_logits.gather(-1, slot_tokens.expand(*trained.class_logits.shape[:-1], -1))
    p = trained.probs.gather(-1, slot_tokens.expand(len(runs), -1, -1))
    steps, n_runs, n_classes, n_slots = c.shape
    index = pd.MultiIndex.from_product([trained.record_steps, range(n_runs), range(n_classes), range(n_slots)], names=["step", "run", "class", "slot"])
    frame = index.to_frame(index=False)
    frame["c"], frame["z"] = c.flatten().numpy(), z.flatten().numpy()
    frame["prob"] = p.unsqueeze(0).expand(steps, -1, -1, -1).flatten().numpy()
    frame["kind"] = np.where(frame["slot"] < layout.n_common, "common", "distinct")
    frame["distinct_rank"] = np.where(frame["kind"] == "distinct", frame["slot"] - layout.n_common, -1)
    frame = frame[frame["class"] < trained.n_classes.numpy()[frame["run"]]]
    for name, values in labels.items():
        frame[name] = np.asarray(values)[frame["run"].to_numpy()]
    return frame.reset_index(drop=True)


def final_measures(trained: TrainedRuns, runs: list[RunSpec]) -> pd.DataFrame:
    """Per (run, class) at the end of training: common mass, distinct entropy, Kendall tau, final loss."""
    layout = trained.layout
    c = slot_composition(trained.class_logits[-1], trained.probs, layout)
    mass, entropy = common_mass(c, layout), distinct_entropy(c, layout)
    rows = []
    for r, spec in enumerate(runs):
        for k in range(spec.classes.n_classes):
            rows.append(dict(
                run=r, n_queries=spec.classes.n_queries, seed=spec.seed, eta_y=spec.eta_y, eta_z=spec.eta_z,
                ratio=spec.eta_y / spec.eta_z, cls=k, common_mass=float(mass[r, k]), entropy=float(entropy[r, k]),
                kendall_tau=kendall_tau_distinct(c[r, k : k + 1], layout), final_loss=float(trained.loss[-1, r]),
            ))
    return pd.DataFrame(rows)


def entropy_sweep(measures: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """n_queries -> eta_Z -> eta_Y/eta_Z -> mean entropy of c_n over distinct tokens (over seeds and classes)."""
    means = measures.groupby(["n_queries", "eta_z", "ratio"])["entropy"].mean()
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for (queries, eta_z, ratio), value in means.items():
        nested.setdefault(str(queries), {}).setdefault(f"{eta_z:g}", {})[f"{ratio:g}"] = float(value)
    return nested


def _trend_fraction(means: pd.Series, along: str, within: list[str], sign: int) -> float:
    """Share of cells (fixing `within`) whose Spearman correlation along `along` has the predicted sign."""
    agree = [np.sign(spearmanr(group.index.get_level_values(along), group.to_numpy()).statistic) == sign
             for _, group in means.groupby(level=within) if group.nunique() > 1]
    return float(np.mean(agree)) if agree else float("nan")


def verdicts(small: pd.DataFrame, sweep: pd.DataFrame, theorem3: pd.DataFrame, snap: pd.DataFrame, transformer: pd.DataFrame) -> pd.DataFrame:
    """The table of predictions: each a measured number, the threshold it is judged by, and the verdict."""
    final_step = small["step"].max()
    paper_runs = small[(small["step"] == final_step) & (small["setting"] == "paper")]
    per_class = paper_runs.groupby(["eta_y", "class"])
    mass = float(per_class.apply(lambda g: g.loc[g["kind"] == "common", "c"].sum()).mean())
    tau = float(per_class.apply(lambda g: kendalltau(g.loc[g["kind"] == "distinct", "prob"], g.loc[g["kind"] == "distinct", "c"]).statistic).mean())
    means = sweep.groupby(["n_queries", "eta_z", "ratio"])["entropy"].mean()
    falls_with_eta_z = _trend_fraction(means, "eta_z", ["n_queries", "ratio"], -1)
    rises_with_ratio = _trend_fraction(means, "ratio", ["n_queries", "eta_z"], +1)
    bounds_hold = float(theorem3["holds"].mean())
    snap_times = snap.groupby("eta_y").apply(measured_snap_time)
    scaled = snap_times * snap_times.index.to_numpy()
    spread = float(scaled.std() / scaled.mean())
    at_ten = snap[snap["t_over_t0"] >= 10].groupby("eta_y")["growth_exponent"].first()
    exponent_after = float(at_ten.max())
    transformer_rows = []
    for variant, frame in transformer.groupby("variant"):
        by_step = frame.groupby(["step", "kind"])["attention"].sum().unstack()
        last = frame[(frame["step"] == frame["step"].max()) & (frame["kind"] == "distinct")]
        tau_tf = float(kendalltau(last["distinct_rank"], last["attention_per_occurrence"]).statistic)
        drop = float(by_step["common"].iloc[0] - by_step["common"].iloc[-1])
        transformer_rows.append((variant, drop, tau_tf))
    rows = [
        ("common_mass_to_zero", "mass of c_n on common tokens after training (small case, paper setting)", mass, f"< {COMMON_MASS_MAX}", mass < COMMON_MASS_MAX),
        ("distinct_ranked_by_probability", "Kendall tau of c_{l|n} vs P(l|n) over distinct tokens (small case)", tau, f">= {KENDALL_TAU_MIN}", tau >= KENDALL_TAU_MIN),
        ("entropy_falls_with_eta_z", "share of (queries, ratio) cells where entropy decreases with eta_Z", falls_with_eta_z, f">= {TREND_FRACTION_MIN}", falls_with_eta_z >= TREND_FRACTION_MIN),
        ("entropy_rises_with_ratio", "share of (queries, eta_Z) cells where entropy increases with eta_Y/eta_Z", rises_with_ratio, f">= {TREND_FRACTION_MIN}", rises_with_ratio >= TREND_FRACTION_MIN),
        ("theorem3_bounds", "share of (time, token) points of the reduced ODE inside the Theorem 3 bounds", bounds_hold, "== 1", bounds_hold == 1.0),
        ("snap_time_scales_as_predicted", "coefficient of variation of measured snap time x eta_Y (t0 = K ln M / eta_Y)", spread, f"< {SNAP_SPREAD_MAX}", spread < SNAP_SPREAD_MAX),
        ("logarithmic_after_snap", "largest d ln B / d ln t at t = 10 t0 (2 before the snap)", exponent_after, f"< {LOG_EXPONENT_MAX}", exponent_after < LOG_EXPONENT_MAX),
    ]
    for variant, drop, tau_tf in transformer_rows:
        rows.append((f"transformer_{variant}_scan", f"TransformerLens {variant}: drop in last-position attention on common tokens (first to last record)", drop, "> 0", drop > 0))
        rows.append((f"transformer_{variant}_ranking", f"TransformerLens {variant}: Kendall tau of per-occurrence attention vs distinct rank", tau_tf, f">= {KENDALL_TAU_MIN}", tau_tf >= KENDALL_TAU_MIN))
    return pd.DataFrame(rows, columns=["prediction", "measure", "value", "criterion", "holds"])
