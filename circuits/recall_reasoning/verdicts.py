"""The decisions on a dissociation: the table rule, the held-out rule, and their statistics.

The table rule (verdicts), per ablation method, with q = the 97.5th percentile of the random sets' drops on a task:
    recall set is specific    : recall drop > q_recall,  and recall drop > reasoning drop under it
    reasoning set is specific : reasoning drop > q_reasoning, and reasoning drop > recall drop under it
    no cross effect           : reasoning drop under the recall set <= q_reasoning, and recall drop
                                under the reasoning set <= q_recall
    double dissociation       : all three hold.

The held-out rule (held_out_verdict), on items the sets were not chosen on: each set's own drop and its
selectivity (own drop - cross drop) against random sets matched in kind and layer band (empirical p at
resolution 1 / (1 + n)), and the interaction (the two selectivities summed) with an item-bootstrap 95% CI.
The measurements these rules read: circuits.recall_reasoning.dissociation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from interp.errors import InterpError


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its two-sided 95% t-interval."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2 or values.std(ddof=1) == 0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def _random_drops(table: pd.DataFrame, task: str, size: int) -> np.ndarray:
    return table[(table["ablated"] == f"random_{size}") & (table["task"] == task)]["drop"].to_numpy()


def _q975(drops: np.ndarray) -> float:
    return float(np.quantile(drops, 0.975)) if len(drops) else float("nan")


def verdicts(table: pd.DataFrame, recall_size: int, reasoning_size: int) -> pd.DataFrame:
    """The module's verdict per method: one row with the drops, the random baselines and the decision.

    random_recall_drop_* describe random sets of the recall set's size on recall, random_reasoning_drop_*
    random sets of the reasoning set's size on reasoning (the baselines of each set's own effect).
    An empty set (no unit passed the rule) is never specific.
    """
    rows = []
    for method, t in table.groupby("method", sort=False):
        drop = t.set_index(["ablated", "task"])["drop"]
        d = {
            (s, task): float(drop.get((s, task), np.nan))
            for s in ("recall_set", "reasoning_set")
            for task in ("recall", "reasoning")
        }
        out = dict(method=method, recall_set_size=recall_size, reasoning_set_size=reasoning_size)
        out.update({f"{task}_drop_{s}": value for (s, task), value in d.items()})
        for task, size in (("recall", recall_size), ("reasoning", reasoning_size)):
            drops = _random_drops(t, task, size)
            mean, low, high = mean_ci95(drops) if len(drops) else (np.nan, np.nan, np.nan)
            out.update(
                {
                    f"random_{task}_drop_mean": mean,
                    f"random_{task}_drop_ci95": [low, high],
                    f"random_{task}_drop_q975": _q975(drops),
                    f"random_{task}_drop_n_sets": len(drops),
                }
            )
        q_recall_r, q_reasoning_r = (
            _q975(_random_drops(t, "recall", recall_size)),
            _q975(_random_drops(t, "reasoning", recall_size)),
        )
        q_recall_q, q_reasoning_q = (
            _q975(_random_drops(t, "recall", reasoning_size)),
            _q975(_random_drops(t, "reasoning", reasoning_size)),
        )
        recall_specific = (
            recall_size > 0
            and d["recall_set", "recall"] > q_recall_r
            and d["recall_set", "recall"] > d["recall_set", "reasoning"]
        )
        reasoning_specific = (
            reasoning_size > 0
            and d["reasoning_set", "reasoning"] > q_reasoning_q
            and d["reasoning_set", "reasoning"] > d["reasoning_set", "recall"]
        )
        no_cross = bool(d["recall_set", "reasoning"] <= q_reasoning_r and d["reasoning_set", "recall"] <= q_recall_q)
        out.update(
            recall_set_specific=bool(recall_specific),
            reasoning_set_specific=bool(reasoning_specific),
            no_cross_effect=no_cross,
            double_dissociation=bool(recall_specific and reasoning_specific and no_cross),
            p_recall_set=_empirical_p(d["recall_set", "recall"], _random_drops(t, "recall", recall_size)),
            p_reasoning_set=_empirical_p(
                d["reasoning_set", "reasoning"], _random_drops(t, "reasoning", reasoning_size)
            ),
        )
        rows.append(out)
    return pd.DataFrame(rows)


def _empirical_p(observed: float, drops: np.ndarray) -> float:
    """(1 + #random sets dropping at least as much) / (1 + #random sets)."""
    return (
        float((1 + (drops >= observed).sum()) / (1 + len(drops)))
        if len(drops) and np.isfinite(observed)
        else float("nan")
    )


def verdict_text(row: pd.Series, model_name: str) -> str:
    """The verdict in one plain sentence with its numbers."""
    head = "shows a double dissociation" if row["double_dissociation"] else "does NOT show a double dissociation"
    return (
        f"{model_name} {head} under {row['method']} ablation: the recall set drops recall accuracy by {row['recall_drop_recall_set']:.3f} "
        f"and reasoning by {row['reasoning_drop_recall_set']:.3f}; the reasoning set drops reasoning by {row['reasoning_drop_reasoning_set']:.3f} "
        f"and recall by {row['recall_drop_reasoning_set']:.3f}; random sets of the same size drop recall by {row['random_recall_drop_mean']:.3f} "
        f"(95% CI {row['random_recall_drop_ci95'][0]:.3f}..{row['random_recall_drop_ci95'][1]:.3f}, 97.5th pct {row['random_recall_drop_q975']:.3f}) "
        f"and reasoning by {row['random_reasoning_drop_mean']:.3f} (95% CI {row['random_reasoning_drop_ci95'][0]:.3f}..{row['random_reasoning_drop_ci95'][1]:.3f}, "
        f"97.5th pct {row['random_reasoning_drop_q975']:.3f}); empirical p of the recall set {row['p_recall_set']:.3f}, of the reasoning set {row['p_reasoning_set']:.3f}."
    )


def empirical_p(observed: float, null: np.ndarray) -> float:
    """(1 + #null values >= observed) / (1 + #null values): never below its resolution 1 / (1 + n); NaN without a null."""
    null = np.asarray(null, dtype=float)
    if len(null) == 0 or not np.isfinite(null).all() or not np.isfinite(observed):
        return float("nan")
    return float((1 + (null >= observed).sum()) / (1 + len(null)))


def bootstrap_interaction(
    correct: dict[str, np.ndarray], n_boot: int, seed: int, masks: dict[str, np.ndarray] | None = None
) -> np.ndarray:
    """Item-bootstrap draws of the interaction (selectivity of the recall set + selectivity of the reasoning set).

    correct[task]: [3, n_items] correctness under (none, recall set, reasoning set). Items of each task
    are resampled with replacement (independently per task), drops and selectivities recomputed.
    """
    rng = np.random.default_rng(seed)
    means = {}
    for task, c in correct.items():
        c = c if masks is None else c[:, masks[task]]
        idx = rng.integers(0, c.shape[1], size=(n_boot, c.shape[1]))
        means[task] = c[:, idx].mean(-1)  # [3, n_boot]
    drop = {task: means[task][0] - means[task][1:] for task in means}  # [2 (recall set, reasoning set), n_boot]
    selectivity_recall = drop["recall"][0] - drop["reasoning"][0]
    selectivity_reasoning = drop["reasoning"][1] - drop["recall"][1]
    return selectivity_recall + selectivity_reasoning


def held_out_verdict(
    correct: dict[str, np.ndarray],
    n_random: dict[str, int],
    *,
    alpha: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    masks: dict[str, np.ndarray] | None = None,
) -> dict:
    """The held-out statistic on one method's evaluation: correct[task] is [n_conditions, n_items] correctness with conditions
    ordered none, recall set, reasoning set, n_random["recall_set"] random sets matched to the recall set, then
    n_random["reasoning_set"] matched to the reasoning set. masks[task] restricts the items (e.g. one family).

    For each set S (own task T, other task T'): drop_T(S) = acc_T(none) - acc_T(S), selectivity(S) = drop_T(S) - drop_T'(S);
    p_own / p_selectivity: empirical p of S against its matched random sets. interaction = selectivity(recall set) +
    selectivity(reasoning set), with a 95% item-bootstrap CI. Double dissociation: both sets non-empty, all four p < alpha,
    and the CI's lower end above 0.
    """
    if masks is not None:
        correct = {task: c[:, masks[task]] for task, c in correct.items()}
    if min(c.shape[1] for c in correct.values()) == 0:
        raise InterpError("held_out_verdict: a task has no evaluated items (check the held-out split and masks).")
    acc = {task: c.mean(1) for task, c in correct.items()}
    drop = {task: acc[task][0] - acc[task] for task in acc}
    n_r, n_q = n_random["recall_set"], n_random["reasoning_set"]
    random_of = {"recall_set": slice(3, 3 + n_r), "reasoning_set": slice(3 + n_r, 3 + n_r + n_q)}
    out: dict = {}
    decided = []
    for name, index, own, other in (
        ("recall_set", 1, "recall", "reasoning"),
        ("reasoning_set", 2, "reasoning", "recall"),
    ):
        own_random, other_random = drop[own][random_of[name]], drop[other][random_of[name]]
        selectivity = drop[own][index] - drop[other][index]
        if len(own_random) == 0:  # an empty set (no unit passed the rule) has no baseline and is never specific
            own_random = other_random = np.full(1, np.nan)
        random_selectivity = own_random - other_random
        p_own, p_sel = empirical_p(drop[own][index], own_random), empirical_p(selectivity, random_selectivity)
        out.update(
            {
                f"{name}_own_drop": float(drop[own][index]),
                f"{name}_cross_drop": float(drop[other][index]),
                f"{name}_selectivity": float(selectivity),
                f"{name}_p_own": p_own,
                f"{name}_p_selectivity": p_sel,
                f"{name}_random_own_drop_mean": float(own_random.mean()),
                f"{name}_random_cross_drop_mean": float(other_random.mean()),
                f"{name}_random_selectivity_mean": float(random_selectivity.mean()),
                f"{name}_random_selectivity_q975": float(np.quantile(random_selectivity, 0.975)),
                f"{name}_n_random": int(n_random[name]),
            }
        )
        decided.append(bool(p_own < alpha and p_sel < alpha))
    interaction = out["recall_set_selectivity"] + out["reasoning_set_selectivity"]
    draws = bootstrap_interaction({task: c[:3] for task, c in correct.items()}, n_boot, seed)
    low, high = (float(x) for x in np.quantile(draws, [0.025, 0.975]))
    resolution = 1.0 / (1 + min(n_r, n_q)) if min(n_r, n_q) else float("nan")
    out.update(
        interaction=float(interaction),
        interaction_ci95=[low, high],
        n_bootstrap=n_boot,
        alpha=alpha,
        p_resolution=resolution,
        n_recall_eval=int(correct["recall"].shape[1]),
        n_reasoning_eval=int(correct["reasoning"].shape[1]),
        recall_set_specific=bool(decided[0]),
        reasoning_set_specific=bool(decided[1]),
        double_dissociation=bool(decided[0] and decided[1] and low > 0),
    )
    return out
