"""Dissociation's measurements: accuracy on both tasks after ablating the recall set, the reasoning set, and random sets.

Each ablation runs per token-length group of a task; mean and resample take their values from the
group's own clean and corrupted prompts (same length, so per-position means and whole-prompt
resamples are defined). A drop is base accuracy minus ablated accuracy (scored against distractors).
Random sets are drawn from the whole pool (random_sets) or matched to a set in kind and layer band
(matched_random_sets), and evaluate_conditions ablates every set exactly, in batches.
The rules that decide on these numbers: circuits.recall_reasoning.verdicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
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


# --- the held-out test's measurements: matched random sets, exact batched evaluation ------------

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
