"""The analysis every model gets: keep correct items, split them by entity, localise on one half, test on the other.

The steps are DESIGN below (the dashboard shows the same text). Its settings: circuits.recall_reasoning.settings; the
held-out halves and reference prompts: circuits.recall_reasoning.heldout; the headline metrics and verdict sentence:
circuits.recall_reasoning.headline.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.dissociation import composition, evaluate_conditions, matched_random_sets

from circuits.recall_reasoning.verdicts import held_out_verdict
from circuits.recall_reasoning.headline import (  # noqa: F401 (VERDICT_KEYS, verdict_text: their old import path)
    VERDICT_KEYS,
    family_accuracy,
    headline_metrics,
    verdict_text,
)
from circuits.recall_reasoning.heldout import (  # noqa: F401 (reference_halves: its old import path)
    held_out_halves,
    reference_check,
    reference_halves,
    reference_stats,
)
from circuits.recall_reasoning.localisation import (
    chosen_sites,
    choose_sets,
    localise,
    patch_positions,
    unit_name,
    units,
)
from circuits.recall_reasoning.screen import screen, screen_summary
from circuits.recall_reasoning.settings import SUBSETS, AnalysisSettings  # noqa: F401 (SUBSETS: its old import path)
from circuits.recall_reasoning.tasks import (
    NO_COPY_FAMILIES,
    TASKS,
    PromptSet,
    ReferencePool,
    answer_in_prompt,
    keep_correct,
    shuffle_labels,
)

DESIGN = """\
1. Items the unablated model gets wrong are dropped. The rest are split by entity (the same entity in the
   same half for both tasks) into a localisation half and an evaluation half (tasks.split_by_entity).
2. Units are patched on the localisation half only and the sets chosen there (localisation.choose_sets).
3. Every accuracy, drop and verdict is computed on the evaluation half. Mean / resample ablation take each
   item's values from prompts of its own template and token length (label-blind, on-distribution) whose
   entity is not in the evaluation half: the localisation side's items and, where a reference pool is given
   (tasks.reference_pool), every other fill of the template with those entities (other bridges, items the
   model gets wrong, items not sampled). Never an evaluated prompt.
4. Each chosen set gets n_random random sets of the same composition (as many heads, MLP layers and neurons)
   from the same layer band (dissociation.matched_random_sets); all sets are ablated exactly, in batches.
5. The verdict per ablation method (verdicts.held_out_verdict): selectivity = own-task drop - cross-task
   drop; a double dissociation needs, for both sets, empirical p < p_threshold for the own-task drop and for
   the selectivity, and the item-bootstrap 95% CI of the interaction (the sum of both selectivities) above 0.
   settings.verdict_method (mean) is the headline.
"""  # plain text: the module documentation and the dashboard both show it


def _single_length(prompts: PromptSet) -> PromptSet:
    return prompts.subset(max(prompts.length_groups().values(), key=len))


def analyse(
    model: HookedTransformer,
    prompts: dict[str, PromptSet],
    settings: AnalysisSettings,
    *,
    model_name: str,
    progress: bool = False,
    reference_pool: ReferencePool | None = None,
) -> tuple[dict[str, pd.DataFrame], dict]:
    """Run the whole pipeline on prompt sets of both tasks; returns tidy tables and the headline metrics.

    reference_pool: extra never-scored prompts for template references (tasks.reference_pool); the evaluation half's entities are kept out.
    """
    tables: dict[str, pd.DataFrame] = {}
    kept, item_scores = {}, []
    for task in TASKS:
        correct, scores = keep_correct(model, prompts[task])
        kept[task] = _single_length(correct) if settings.single_length else correct
        item_scores.append(scores)
    tables["items"] = pd.concat(item_scores, ignore_index=True)
    if settings.shuffle_labels:
        kept = shuffle_labels(kept, settings.seed)
    localisation, evaluation, refs, dropped = held_out_halves(kept, settings, reference_pool)
    tables["split"] = pd.concat(
        [
            p.items.assign(half=half)
            for half, halves in (("localisation", localisation), ("evaluation", evaluation))
            for p in halves.values()
        ],
        ignore_index=True,
    )
    tables.update(
        _localise_and_ablate(
            model,
            localisation,
            evaluation,
            refs,
            units(model, settings.unit_kinds),
            settings.set_size,
            settings.min_restoration,
            settings.exact_candidates,
            settings,
            "",
            progress,
        )
    )
    if settings.neuron_set_size > 0:
        tables.update(
            _localise_and_ablate(
                model,
                localisation,
                evaluation,
                refs,
                units(model, ("neuron",)),
                settings.neuron_set_size,
                settings.neuron_min_restoration,
                settings.neuron_candidates,
                replace(settings, methods=settings.neuron_methods or settings.methods),
                "neuron_",
                progress,
            )
        )
    if settings.position_layers != ():
        layers = None if settings.position_layers is None else list(settings.position_layers)
        frames = []
        for task in TASKS:
            df, tokens = patch_positions(model, localisation[task], layers=layers)
            frames.append(df.assign(token=[tokens[p] for p in df["position"]]))
        tables["position_patching"] = pd.concat(frames, ignore_index=True)
    if settings.screen:
        screened = screen(
            model,
            kept["recall"],
            kept["reasoning"],
            control_length=settings.control_length,
            alpha=settings.alpha,
            min_d=settings.min_d,
        )
        tables["screen"] = screened
        tables["screen_summary"] = screen_summary(screened)
    metrics = headline_metrics(tables, kept, evaluation, settings, model_name)
    metrics.update(
        n_recall_localisation=len(localisation["recall"]),
        n_reasoning_localisation=len(localisation["reasoning"]),
        n_recall_evaluation=len(evaluation["recall"]),
        n_reasoning_evaluation=len(evaluation["reasoning"]),
        n_recall_no_reference=dropped["recall"],
        n_reasoning_no_reference=dropped["reasoning"],
        **reference_stats(refs, evaluation, settings),
        reasoning_answer_in_prompt_fraction_all=float(answer_in_prompt(prompts["reasoning"]).mean()),
        reasoning_answer_in_prompt_fraction=float(answer_in_prompt(evaluation["reasoning"]).mean()),
        n_reasoning_no_copy_evaluation=int((~answer_in_prompt(evaluation["reasoning"])).sum()),
        **family_accuracy(tables["items"]),
        shuffled_labels=settings.shuffle_labels,
    )
    return tables, metrics


def _conditions(
    model: HookedTransformer, pool: list, recall_set: list, reasoning_set: list, settings: AnalysisSettings
) -> tuple[list, pd.DataFrame, dict]:
    """[none, recall set, reasoning set, matched random sets of each]; a table naming each condition; each set's band."""
    conditions = [("none", -1, []), ("recall_set", -1, recall_set), ("reasoning_set", -1, reasoning_set)]
    bands, n_random = {}, {}
    for offset, (name, chosen) in enumerate((("recall_set", recall_set), ("reasoning_set", reasoning_set))):
        if not chosen:
            bands[name], n_random[name] = None, 0
            continue
        sets, bands[name] = matched_random_sets(
            pool,
            chosen,
            settings.n_random,
            settings.seed + 7919 * (offset + 1),
            model.cfg.n_layers,
            settings.band_factor,
        )
        n_random[name] = len(sets)
        conditions += [(f"random_{name}", i, s) for i, s in enumerate(sets)]
    names = pd.DataFrame(
        dict(
            ablated=[c[0] for c in conditions],
            set_index=[c[1] for c in conditions],
            set_size=[len(c[2]) for c in conditions],
            units=[", ".join(unit_name(s) for s in c[2]) for c in conditions],
        )
    )
    return [c[2] for c in conditions], names, dict(bands=bands, n_random=n_random)


def _subset_masks(evaluation: dict[str, PromptSet], min_items: int) -> dict[str, dict[str, np.ndarray]]:
    reasoning = evaluation["reasoning"].items
    no_copy = reasoning["family"].isin(NO_COPY_FAMILIES).to_numpy() & ~answer_in_prompt(evaluation["reasoning"])
    every = {task: np.ones(len(evaluation[task]), dtype=bool) for task in TASKS}
    masks = {"all": every}
    if no_copy.sum() >= min_items:
        masks["no_copy"] = {"recall": every["recall"], "reasoning": no_copy}
        if (~no_copy).sum() >= min_items:
            masks["copy"] = {"recall": every["recall"], "reasoning": ~no_copy}
    return masks


def _localise_and_ablate(
    model: HookedTransformer,
    localisation: dict[str, PromptSet],
    evaluation: dict[str, PromptSet],
    refs: dict[str, dict],
    pool: list,
    set_size: int,
    min_restoration: float,
    exact_candidates: int | None,
    settings: AnalysisSettings,
    prefix: str,
    progress: bool,
) -> dict[str, pd.DataFrame]:
    """Patch the pool's units on the localisation half, choose the two sets, evaluate them and their matched random sets on the evaluation half."""
    effects = localise(model, localisation, pool, exact_candidates)
    choice = choose_sets(effects, set_size, min_restoration)
    recall_set, reasoning_set = chosen_sites(choice, "recall"), chosen_sites(choice, "reasoning")
    conditions, names, info = _conditions(model, pool, recall_set, reasoning_set, settings)
    rows, item_rows, verdict_rows = [], [], []
    masks = _subset_masks(evaluation, settings.min_subset_items)
    for method in settings.methods:
        scores = {
            task: evaluate_conditions(
                model,
                evaluation[task],
                refs[task],
                conditions,
                method,
                seed=settings.seed,
                memory_budget=settings.memory_budget,
                progress=progress,
            )
            for task in TASKS
        }
        for task in TASKS:
            s = scores[task]
            acc = s[:, :, 0].mean(1)
            n = s.shape[1]
            rows.append(
                names.assign(
                    method=method,
                    task=task,
                    n_items=n,
                    accuracy=acc,
                    accuracy_se=np.sqrt(acc * (1 - acc) / n),
                    accuracy_first_token=s[:, :, 1].mean(1),
                    drop=acc[0] - acc,
                    mean_answer_logprob=s[:, :, 2].mean(1),
                )
            )
            items = evaluation[task].items
            for c, ablated in enumerate(("none", "recall_set", "reasoning_set")):
                item_rows.append(
                    pd.DataFrame(
                        dict(
                            method=method,
                            task=task,
                            ablated=ablated,
                            item=np.arange(n),
                            entity=items["entity"].to_numpy(),
                            family=items["family"].to_numpy(),
                            correct=s[c, :, 0].astype(bool),
                            answer_logprob=s[c, :, 2],
                        )
                    )
                )
        correct = {task: scores[task][:, :, 0] for task in TASKS}
        for subset, mask in masks.items():
            verdict = held_out_verdict(
                correct,
                info["n_random"],
                alpha=settings.p_threshold,
                n_boot=settings.n_bootstrap,
                seed=settings.seed,
                masks=mask,
            )
            verdict_rows.append(
                dict(
                    method=method,
                    items=subset,
                    recall_set_size=len(recall_set),
                    reasoning_set_size=len(reasoning_set),
                    recall_set_composition=composition(recall_set),
                    reasoning_set_composition=composition(reasoning_set),
                    recall_set_band=info["bands"]["recall_set"],
                    reasoning_set_band=info["bands"]["reasoning_set"],
                    **verdict,
                )
            )
    table = pd.concat(rows, ignore_index=True)
    verdicts = pd.DataFrame(verdict_rows)
    out = {}
    if (
        settings.template_reference
        and settings.reference_check
        and settings.verdict_method != "zero"
        and settings.verdict_method in settings.methods
        and min(map(len, refs["recall"].values())) >= 2
    ):
        out[f"{prefix}reference_check"] = reference_check(model, evaluation, refs, conditions[:3], table, settings)
    for column in (
        "recall_set_composition",
        "reasoning_set_composition",
        "recall_set_band",
        "reasoning_set_band",
        "interaction_ci95",
    ):
        verdicts[column] = verdicts[column].map(
            lambda v: (
                None if v is None else (list(v) if not isinstance(v, dict) else [f"{k}={n}" for k, n in v.items()])
            )
        )
    return {
        f"{prefix}unit_patching": effects,
        f"{prefix}sets": choice,
        f"{prefix}dissociation": table,
        f"{prefix}verdicts": verdicts,
        f"{prefix}item_ablation": pd.concat(item_rows, ignore_index=True),
        **out,
    }
