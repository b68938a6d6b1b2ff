"""Dissociation: accuracy on both tasks after ablating the recall set, the reasoning set, and random sets of the same size.

Each ablation runs per token-length group of a task; mean and resample take their values from the
group's own clean and corrupted prompts (same length, so per-position means and whole-prompt
resamples are defined). A drop is base accuracy minus ablated accuracy (scored against distractors).

The verdict, per ablation method (q = the 97.5th percentile of the random sets' drops on a task):
    recall set is specific    : recall drop > q_recall,  and recall drop > reasoning drop under it
    reasoning set is specific : reasoning drop > q_reasoning, and reasoning drop > recall drop under it
    no cross effect           : reasoning drop under the recall set <= q_reasoning, and recall drop
                                under the reasoning set <= q_recall
    double dissociation       : all three hold.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.tasks import PromptSet, last_logits, score
from interp.errors import InterpError
from interp.interventions import METHODS, Ablation, ablation_hooks, reference_activations
from interp.sites import Site, as_site


def _reference_tokens(prompts: PromptSet, indices: list[int], tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokens, torch.stack([prompts.corrupted[i] for i in indices]).to(tokens.device)])


def ablated_scores(model: HookedTransformer, prompts: PromptSet, sites: Sequence[Site], method: str, seed: int = 0, reference_cache: dict | None = None) -> pd.DataFrame:
    """Per-item scores (see tasks.score) with every site ablated together; no sites: the unablated model.

    Mean and resample take their values from each length group's clean and corrupted prompts.
    reference_cache: a dict this function fills with each group's reference activations (every
    layer of each hook kind asked for), so many ablations of the same prompts cache the reference
    once per kind (pass the same dict each call).
    """
    if not sites:
        return score(last_logits(model, prompts), prompts)
    hook_names = {as_site(model, s).hook_name for s in sites}

    def hooks_for(indices: list[int], tokens: torch.Tensor):
        reference = None if method == "zero" else _reference_tokens(prompts, indices, tokens)
        ablation = Ablation(tuple(sites), method=method, reference=reference, seed=seed)
        if reference is None or reference_cache is None:
            return ablation_hooks(model, tokens, ablation)
        cached = reference_cache.setdefault((prompts.task, tuple(indices)), {})
        if missing := hook_names - set(cached):
            cached.update(reference_activations(model, reference, _every_layer(model, missing)))
        return ablation_hooks(model, tokens, ablation, reference_cache=cached)

    return score(last_logits(model, prompts, hooks_for), prompts)


def _every_layer(model: HookedTransformer, hook_names: set[str]) -> list[str]:
    """The hooks of the same kinds at every layer: later sets (random ones span all layers) then find them cached, at one forward per kind."""
    kinds = {re.sub(r"^blocks\.\d+\.", "", name) for name in hook_names}
    return [f"blocks.{layer}.{kind}" for kind in sorted(kinds) for layer in range(model.cfg.n_layers)]


def random_sets(pool: Sequence[Site], size: int, n_sets: int, seed: int) -> list[list[Site]]:
    """n_sets sets of `size` units drawn without replacement from pool (seeded)."""
    if size > len(pool):
        raise InterpError(f"random_sets(size={size}): the pool has only {len(pool)} units.")
    generator = torch.Generator().manual_seed(seed)
    return [[pool[i] for i in torch.randperm(len(pool), generator=generator)[:size].tolist()] for _ in range(n_sets)]


def dissociation(
    model: HookedTransformer,
    prompts: dict[str, PromptSet],
    recall_set: Sequence[Site],
    reasoning_set: Sequence[Site],
    pool: Sequence[Site],
    *,
    methods: Sequence[str] = METHODS,
    n_random: int = 20,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per (method, ablated set, task): accuracy (vs distractors), first-token accuracy, their SEs, and the drop from base.

    ablated: "none", "recall_set", "reasoning_set" or "random"; random sets of each chosen set's size carry set_index.
    """
    for method in methods:
        if method not in METHODS:
            raise InterpError(f"dissociation(methods=...): {method!r} is not an ablation method; choose from {', '.join(METHODS)}.")
    if n_random < 1:
        raise InterpError(f"dissociation(n_random={n_random}): at least one random set is needed for the baseline (the issue asks for >= 20).")
    sizes = sorted({len(recall_set), len(reasoning_set)} - {0})
    randoms = {size: random_sets(pool, size, n_random, seed + size) for size in sizes}
    conditions = [("recall_set", -1, list(recall_set)), ("reasoning_set", -1, list(reasoning_set))]
    conditions += [(f"random_{size}", i, s) for size, sets in randoms.items() for i, s in enumerate(sets)]
    base = {task: ablated_scores(model, p, [], "zero") for task, p in prompts.items()}
    rows, reference_cache = [], {}
    for method in methods:
        iterator = conditions
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(conditions, desc=f"ablation ({method})")
        rows += [_row(method, "none", -1, 0, task, scores, base[task]) for task, scores in base.items()]
        for ablated, set_index, sites in iterator:
            for task, p in prompts.items():
                scores = ablated_scores(model, p, sites, method, seed=seed + max(set_index, 0), reference_cache=reference_cache) if sites else base[task]
                rows.append(_row(method, ablated, set_index, len(sites), task, scores, base[task]))
    return pd.DataFrame(rows)


def _row(method: str, ablated: str, set_index: int, set_size: int, task: str, scores: pd.DataFrame, base: pd.DataFrame) -> dict:
    n = len(scores)
    acc, acc_first = scores["correct_distractor"].mean(), scores["correct_first_token"].mean()
    return dict(method=method, ablated=ablated, set_index=set_index, set_size=set_size, task=task, n_items=n,
                accuracy=float(acc), accuracy_se=float(np.sqrt(acc * (1 - acc) / n)),
                accuracy_first_token=float(acc_first), drop=float(base["correct_distractor"].mean() - acc),
                mean_answer_logprob=float(scores["answer_logprob"].mean()))


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
        d = {(s, task): float(drop.get((s, task), np.nan)) for s in ("recall_set", "reasoning_set") for task in ("recall", "reasoning")}
        out = dict(method=method, recall_set_size=recall_size, reasoning_set_size=reasoning_size)
        out.update({f"{task}_drop_{s}": value for (s, task), value in d.items()})
        for task, size in (("recall", recall_size), ("reasoning", reasoning_size)):
            drops = _random_drops(t, task, size)
            mean, low, high = mean_ci95(drops) if len(drops) else (np.nan, np.nan, np.nan)
            out.update({f"random_{task}_drop_mean": mean, f"random_{task}_drop_ci95": [low, high], f"random_{task}_drop_q975": _q975(drops),
                        f"random_{task}_drop_n_sets": len(drops)})
        q_recall_r, q_reasoning_r = _q975(_random_drops(t, "recall", recall_size)), _q975(_random_drops(t, "reasoning", recall_size))
        q_recall_q, q_reasoning_q = _q975(_random_drops(t, "recall", reasoning_size)), _q975(_random_drops(t, "reasoning", reasoning_size))
        recall_specific = recall_size > 0 and d["recall_set", "recall"] > q_recall_r and d["recall_set", "recall"] > d["recall_set", "reasoning"]
        reasoning_specific = reasoning_size > 0 and d["reasoning_set", "reasoning"] > q_reasoning_q and d["reasoning_set", "reasoning"] > d["reasoning_set", "recall"]
        no_cross = bool(d["recall_set", "reasoning"] <= q_reasoning_r and d["reasoning_set", "recall"] <= q_recall_q)
        out.update(recall_set_specific=bool(recall_specific), reasoning_set_specific=bool(reasoning_specific), no_cross_effect=no_cross,
                   double_dissociation=bool(recall_specific and reasoning_specific and no_cross),
                   p_recall_set=_empirical_p(d["recall_set", "recall"], _random_drops(t, "recall", recall_size)),
                   p_reasoning_set=_empirical_p(d["reasoning_set", "reasoning"], _random_drops(t, "reasoning", reasoning_size)))
        rows.append(out)
    return pd.DataFrame(rows)


def _empirical_p(observed: float, drops: np.ndarray) -> float:
    """(1 + #random sets dropping at least as much) / (1 + #random sets)."""
    return float((1 + (drops >= observed).sum()) / (1 + len(drops))) if len(drops) and np.isfinite(observed) else float("nan")


def verdict_text(row: pd.Series, model_name: str) -> str:
    """The verdict in one plain sentence with its numbers."""
    head = "shows a double dissociation" if row["double_dissociation"] else "does NOT show a double dissociation"
    return (f"{model_name} {head} under {row['method']} ablation: the recall set drops recall accuracy by {row['recall_drop_recall_set']:.3f} "
            f"and reasoning by {row['reasoning_drop_recall_set']:.3f}; the reasoning set drops reasoning by {row['reasoning_drop_reasoning_set']:.3f} "
            f"and recall by {row['recall_drop_reasoning_set']:.3f}; random sets of the same size drop recall by {row['random_recall_drop_mean']:.3f} "
            f"(95% CI {row['random_recall_drop_ci95'][0]:.3f}..{row['random_recall_drop_ci95'][1]:.3f}, 97.5th pct {row['random_recall_drop_q975']:.3f}) "
            f"and reasoning by {row['random_reasoning_drop_mean']:.3f} (95% CI {row['random_reasoning_drop_ci95'][0]:.3f}..{row['random_reasoning_drop_ci95'][1]:.3f}, "
            f"97.5th pct {row['random_reasoning_drop_q975']:.3f}); empirical p of the recall set {row['p_recall_set']:.3f}, of the reasoning set {row['p_reasoning_set']:.3f}.")
