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

from circuits.recall_reasoning.tasks import (
    PromptSet,
    correct_by_distractors,
    correct_by_first_token,
    last_logits,
    score,
)
from interp.errors import InterpError
from interp.interventions import METHODS, Ablation, ablation_hooks, reference_activations
from interp.sites import Site, as_site


def _reference_tokens(prompts: PromptSet, indices: list[int], tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([tokens, torch.stack([prompts.corrupted[i] for i in indices]).to(tokens.device)])


def ablated_scores(
    model: HookedTransformer,
    prompts: PromptSet,
    sites: Sequence[Site],
    method: str,
    seed: int = 0,
    reference_cache: dict | None = None,
) -> pd.DataFrame:
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
            raise InterpError(
                f"dissociation(methods=...): {method!r} is not an ablation method; choose from {', '.join(METHODS)}."
            )
    if n_random < 1:
        raise InterpError(
            f"dissociation(n_random={n_random}): at least one random set is needed for the baseline (20 or more make it usable)."
        )
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
                scores = (
                    ablated_scores(
                        model, p, sites, method, seed=seed + max(set_index, 0), reference_cache=reference_cache
                    )
                    if sites
                    else base[task]
                )
                rows.append(_row(method, ablated, set_index, len(sites), task, scores, base[task]))
    return pd.DataFrame(rows)


def _row(
    method: str, ablated: str, set_index: int, set_size: int, task: str, scores: pd.DataFrame, base: pd.DataFrame
) -> dict:
    n = len(scores)
    acc, acc_first = scores["correct_distractor"].mean(), scores["correct_first_token"].mean()
    return dict(
        method=method,
        ablated=ablated,
        set_index=set_index,
        set_size=set_size,
        task=task,
        n_items=n,
        accuracy=float(acc),
        accuracy_se=float(np.sqrt(acc * (1 - acc) / n)),
        accuracy_first_token=float(acc_first),
        drop=float(base["correct_distractor"].mean() - acc),
        mean_answer_logprob=float(scores["answer_logprob"].mean()),
    )


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


# --- the held-out test: matched random sets, exact batched evaluation, selectivity, bootstrap ------------

KINDS = {"z": "head", "mlp_out": "mlp", "mlp_post": "neuron"}


def composition(sites: Sequence[Site]) -> dict[str, int]:
    """How many units of each kind (head, mlp, neuron) a set holds."""
    counts = {kind: 0 for kind in KINDS.values()}
    for site in sites:
        counts[KINDS[site.component]] += 1
    return counts


def layer_band(sites: Sequence[Site], pool: Sequence[Site], n_layers: int, min_factor: int = 2) -> tuple[int, int]:
    """The layers [lo, hi] the random sets of `sites` are drawn from.

    Starts at the set's own span (lowest to highest layer) and widens by one layer each side until,
    for every kind the set holds k of, the band has at least min_factor * k units of that kind
    outside the set (or the band is the whole model).
    """
    if not sites:
        raise InterpError("layer_band: the set is empty; an empty set has no band (and no random baseline).")
    lo, hi = min(s.layer for s in sites), max(s.layer for s in sites)
    counts, chosen = composition(sites), set(sites)

    def enough(lo: int, hi: int) -> bool:
        return all(
            sum(1 for u in pool if KINDS[u.component] == kind and lo <= u.layer <= hi and u not in chosen)
            >= min_factor * k
            for kind, k in counts.items()
            if k
        )

    while not enough(lo, hi) and (lo > 0 or hi < n_layers - 1):
        lo, hi = max(0, lo - 1), min(n_layers - 1, hi + 1)
    return lo, hi


def matched_random_sets(
    pool: Sequence[Site], chosen: Sequence[Site], n_sets: int, seed: int, n_layers: int, min_factor: int = 2
) -> tuple[list[list[Site]], tuple[int, int]]:
    """n_sets random sets with the chosen set's composition (as many heads, MLP layers and neurons), each unit drawn
    without replacement from the pool's units of that kind inside the layer band (layer_band) and outside the chosen set
    (when the whole model has fewer such units than the set holds, from all units of the kind, the chosen ones included).

    Returns the sets and the band. Sets may repeat when the band holds few combinations.
    """
    if n_sets < 1:
        raise InterpError(
            f"matched_random_sets(n_sets={n_sets}): at least one random set is needed (the held-out test uses 200 or more)."
        )
    lo, hi = layer_band(chosen, pool, n_layers, min_factor)
    counts, excluded = composition(chosen), set(chosen)
    candidates = {
        kind: [u for u in pool if KINDS[u.component] == kind and lo <= u.layer <= hi and u not in excluded]
        for kind in counts
    }
    for kind, k in counts.items():
        if (
            k > len(candidates[kind])
        ):  # too few others in the whole model (a tiny model): draw from every unit of the kind, the chosen ones included
            candidates[kind] = [u for u in pool if KINDS[u.component] == kind and lo <= u.layer <= hi]
        if k > len(candidates[kind]):
            raise InterpError(
                f"matched_random_sets: the set holds {k} {kind} unit(s) but the pool has only {len(candidates[kind])} in layers {lo}..{hi}."
            )
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        drawn = []
        for kind in KINDS.values():
            if counts[kind]:
                drawn += [
                    candidates[kind][i]
                    for i in torch.randperm(len(candidates[kind]), generator=generator)[: counts[kind]].tolist()
                ]
        sets.append(sorted(drawn, key=lambda s: (s.layer, s.component, s.head or 0, s.neuron or 0)))
    return sets, (lo, hi)


def _score_chunk(answer_ids: torch.Tensor, candidate_ids: torch.Tensor):
    """Reduce [n, batch, vocab] logits to [n, batch, 3]: correct vs distractors, correct by first token, answer log-prob."""

    def reduce(logits: torch.Tensor) -> torch.Tensor:
        n, batch, vocab = logits.shape
        flat = logits.reshape(n * batch, vocab)
        answers, candidates = answer_ids.repeat(n), candidate_ids.repeat(n, 1)
        scores = torch.stack(
            [
                correct_by_distractors(flat, answers, candidates).float(),
                correct_by_first_token(flat, answers).float(),
                flat.log_softmax(-1).gather(-1, answers[:, None])[:, 0],
            ],
            -1,
        )
        return scores.view(n, batch, 3)

    return reduce


def evaluate_conditions(
    model: HookedTransformer,
    prompts: PromptSet,
    references: dict[int, torch.Tensor],
    conditions: Sequence[Sequence[Site]],
    method: str,
    *,
    seed: int = 0,
    memory_budget: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Per condition (a set of Sites ablated together; [] = unablated) and item: [n_conditions, n_items, 3] scores
    (correct vs distractors, correct by first token, answer log-prob), by exact batched forwards (interp.patching.ablate).

    references: token length -> the reference prompts (tokens) that mean and resample take their values from;
    every length of `prompts` needs one (they must not be evaluated prompts: the caller's held-out split sees to it).
    Condition i under resample draws its reference rows with seed + i.
    """
    from interp.patching.ablate import ablated_last_logits
    from interp.patching.engine import DEFAULT_MEMORY_BUDGET

    if method not in METHODS:
        raise InterpError(
            f"evaluate_conditions(method={method!r}) is not an ablation method; choose from {', '.join(METHODS)}."
        )
    out = np.zeros((len(conditions), len(prompts), 3), dtype=np.float32)
    by_template = any(
        isinstance(key, tuple) for key in references
    )  # keys (template, length): each item's reference is its own template's
    groups: dict = {}
    for i, row in enumerate(prompts.tokens):
        groups.setdefault((prompts.items["template"].iloc[i], len(row)) if by_template else len(row), []).append(i)
    for key, indices in groups.items():
        length = key[1] if by_template else key
        tokens = torch.stack([prompts.tokens[i] for i in indices])
        reference = references.get(key)
        if method != "zero" and (reference is None or len(reference) == 0):
            raise InterpError(
                f"evaluate_conditions: no reference prompts of {length} tokens for {prompts.task}; pass references[{length}] (held-out prompts of that length)."
            )
        reduce = _score_chunk(prompts.answer_ids[indices], prompts.candidate_ids[indices])
        plain = [i for i, sites in enumerate(conditions) if not sites]
        ablated = [i for i, sites in enumerate(conditions) if sites]
        if plain:
            with torch.no_grad():
                base = reduce(model(tokens.to(model.cfg.device))[:, -1].float().cpu()[None])[0].numpy()
            out[np.ix_(plain, indices)] = base[None]
        if not ablated:
            continue
        cache = None
        if method != "zero":
            hook_names = {as_site(model, s).hook_name for i in ablated for s in conditions[i]}
            cache = reference_activations(model, reference, _every_layer(model, hook_names))
        ablations = [
            Ablation(
                tuple(conditions[i]), method=method, reference=None if method == "zero" else reference, seed=seed + i
            )
            for i in ablated
        ]
        scores = ablated_last_logits(
            model,
            tokens,
            ablations,
            reference_cache=cache,
            memory_budget=memory_budget or DEFAULT_MEMORY_BUDGET,
            progress=progress,
            reduce=reduce,
        )
        out[np.ix_(ablated, indices)] = scores.numpy()
    return out


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
