"""The analysis every model gets: keep correct items, split them by entity, localise on one half, test on the other.

The steps are DESIGN below (the dashboard shows the same text).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.dissociation import (
    composition,
    evaluate_conditions,
    held_out_verdict,
    matched_random_sets,
    mean_ci95,
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
from circuits.recall_reasoning.tasks import (
    NO_COPY_FAMILIES,
    TASKS,
    PromptSet,
    ReferencePool,
    answer_in_prompt,
    keep_correct,
    references,
    shuffle_labels,
    split_by_entity,
)
from interp.errors import InterpError

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
5. The verdict per ablation method (dissociation.held_out_verdict): selectivity = own-task drop - cross-task
   drop; a double dissociation needs, for both sets, empirical p < p_threshold for the own-task drop and for
   the selectivity, and the item-bootstrap 95% CI of the interaction (the sum of both selectivities) above 0.
   settings.verdict_method (mean) is the headline.
"""  # plain text: the module documentation and the dashboard both show it

SUBSETS = (
    "all",
    "no_copy",
    "copy",
)  # evaluated reasoning items: all; families whose answer is not in the prompt; the others


@dataclass(frozen=True)
class AnalysisSettings:
    set_size: int = 9
    min_restoration: float = 0.02
    unit_kinds: tuple[str, ...] = ("head", "mlp")
    neuron_set_size: int = 20  # MLP neurons (mlp.hook_post) get their own sets by the same rule; 0 skips them
    neuron_candidates: int = 48  # per task, the neurons with the largest |AtP restoration| patched exactly
    neuron_min_restoration: float = 0.005  # one neuron moves the logit difference far less than a head
    neuron_methods: tuple[str, ...] | None = None  # ablation methods for the neuron sets; None: the same as methods
    methods: tuple[str, ...] = ("zero", "mean", "resample")
    n_random: int = 200  # random sets per chosen set (matched composition and layer band)
    band_factor: int = (
        2  # the band widens until it holds band_factor x as many units of each kind outside the set as the set holds
    )
    p_threshold: float = 0.05  # the verdict's level for every empirical p
    n_bootstrap: int = 2000  # item-bootstrap draws of the interaction
    verdict_method: str = "mean"
    position_layers: tuple[int, ...] | None = None  # layers of the layer x position sweep; None: all; () skips it
    screen: bool = True
    control_length: bool = True
    alpha: float = 0.01  # the screen's FDR level
    min_d: float = 0.8
    exact_candidates: int | None = (
        None  # None: patch every unit exactly; else AtP first, then this many per task exactly
    )
    single_length: bool = False  # keep only each task's most common token length: one batch per forward (quick runs)
    max_items: int | None = (
        None  # per task, half and stratum (reasoning: answer in the prompt or not), a seeded sample of the kept items
    )
    min_subset_items: int = 8  # the verdict on a subset of the reasoning items (no-copy families, the others) needs this many evaluated items
    shuffle_labels: bool = False  # the negative control: pool both tasks' items and deal the labels at random
    template_reference: bool = True  # each item's reference: non-evaluated prompts of its own template and length (label-blind, on-distribution)
    min_reference_prompts: int = (
        8  # template references: an evaluated item whose (template, length) cell holds fewer is dropped (counted)
    )
    max_reference_prompts: int | None = (
        32  # template references: a larger cell is a seeded sample of this many (each prompt is a forward per method)
    )
    reference_check: bool = True  # template references: re-evaluate the chosen sets with each half of every cell (the pool's sampling error, reported)
    shared_reference: bool = (
        True  # without template references: both tasks' held-out prompts of a token length where both have that length
    )
    memory_budget: int = 1 << 29  # bytes of transient activations per batch of ablated forwards
    seed: int = 0

    def __post_init__(self):
        for name, methods in (("methods", self.methods), ("neuron_methods", self.neuron_methods or self.methods)):
            if self.verdict_method not in methods:
                raise InterpError(
                    f"AnalysisSettings(verdict_method={self.verdict_method!r}) is not among {name}={methods}; add it there or pick one of them."
                )
        if self.n_random < 1:
            raise InterpError(
                f"AnalysisSettings(n_random={self.n_random}): at least one random set is needed (the held-out test uses 200 or more)."
            )
        if not 0 < self.p_threshold < 1:
            raise InterpError(f"AnalysisSettings(p_threshold={self.p_threshold}) must lie in (0, 1).")
        if self.min_reference_prompts < 1 or (
            self.max_reference_prompts is not None and self.max_reference_prompts < self.min_reference_prompts
        ):
            raise InterpError(
                f"AnalysisSettings(min_reference_prompts={self.min_reference_prompts}, max_reference_prompts={self.max_reference_prompts}): "
                "need 1 <= min_reference_prompts <= max_reference_prompts."
            )


def _single_length(prompts: PromptSet) -> PromptSet:
    return prompts.subset(max(prompts.length_groups().values(), key=len))


def _sample(prompts: PromptSet, n: int | None, seed: int) -> PromptSet:
    if n is None or len(prompts) <= n:
        return prompts
    generator = torch.Generator().manual_seed(seed)
    return prompts.subset(sorted(torch.randperm(len(prompts), generator=generator)[:n].tolist()))


def _stratified(prompts: PromptSet, n: int | None, seed: int) -> PromptSet:
    """max_items per stratum: reasoning items whose answer is in the prompt and those whose answer is not (no-copy families) are sampled separately."""
    if n is None:
        return prompts
    no_copy = prompts.items["family"].isin(NO_COPY_FAMILIES).to_numpy()
    parts = [np.flatnonzero(mask) for mask in (~no_copy, no_copy) if mask.any()]
    keep = []
    for offset, part in enumerate(parts):
        chosen = (
            part
            if len(part) <= n
            else part[
                torch.randperm(len(part), generator=torch.Generator().manual_seed(seed + 101 * offset))[:n].numpy()
            ]
        )
        keep += chosen.tolist()
    return prompts.subset(sorted(keep))


def _template_references(
    sources: list[tuple[pd.DataFrame, list[torch.Tensor]]],
    excluded_entities: set[str],
    evaluated: set[str],
    settings: AnalysisSettings,
) -> dict[tuple[str, int], torch.Tensor]:
    """(template, token length) -> clean prompts of that template and length whose entity is not excluded and which are not evaluated
    (both tasks: a template belongs to one task, so the key is blind to the task label); cells below settings.min_reference_prompts
    are left out, larger ones than settings.max_reference_prompts are a seeded sample (in text order, so it does not depend on the sources' order)."""
    rows: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for items, tokens in sources:
        for i, (template, entity, prompt) in enumerate(zip(items["template"], items["entity"], items["prompt"])):
            if entity not in excluded_entities and prompt not in evaluated:
                rows.setdefault((template, len(tokens[i])), {})[prompt] = tokens[i]
    out = {}
    for n_cell, (key, by_text) in enumerate(sorted(rows.items())):
        if len(by_text) < settings.min_reference_prompts:
            continue
        texts = sorted(by_text)
        if settings.max_reference_prompts is not None and len(texts) > settings.max_reference_prompts:
            order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(settings.seed + 31 * n_cell))[
                : settings.max_reference_prompts
            ]
            texts = [texts[i] for i in sorted(order.tolist())]
        out[key] = torch.stack([by_text[t] for t in texts])
    return out


def reference_halves(refs: dict, seed: int) -> tuple[dict, dict]:
    """Each reference cell split at random into two halves (seeded): evaluating with either half shows how much the ablation's
    outcome depends on which prompts the cell holds (a half's mean lies as far from the whole cell's, in expectation, as the whole
    cell's from its template's population mean: var(1/(n/2) - 1/n) = var/n)."""
    first, second = {}, {}
    for n_cell, (key, tokens) in enumerate(sorted(refs.items(), key=lambda kv: str(kv[0]))):
        order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(seed + 17 * n_cell))
        half = len(tokens) // 2
        first[key], second[key] = tokens[order[:half]], tokens[order[half:]]
    return first, second


def held_out_halves(
    kept: dict[str, PromptSet], settings: AnalysisSettings, pool: ReferencePool | None = None
) -> tuple[dict[str, PromptSet], dict[str, PromptSet], dict[str, dict], dict[str, int]]:
    """Split, sample, and pair each evaluation half with its reference prompts; evaluation items without a reference are dropped (counted).

    Template references (the default) draw on every kept item whose entity is not in the evaluation half (both tasks; the
    localisation half before max_items sampling) and on `pool` (tasks.reference_pool: every fill of every template), with the
    same entity rule; so no evaluated prompt, nor any prompt about an evaluated entity, is a reference.
    """
    split_localisation, split_evaluation = split_by_entity(kept, settings.seed)
    localisation = {t: _stratified(p, settings.max_items, settings.seed) for t, p in split_localisation.items()}
    evaluation = {t: _stratified(p, settings.max_items, settings.seed + 1) for t, p in split_evaluation.items()}
    evaluated = {prompt for p in evaluation.values() for prompt in p.items["prompt"]}
    refs, dropped = {}, {}
    own = {task: references(localisation[task], evaluated) for task in TASKS}
    if settings.template_reference:
        evaluation_entities = {e for p in split_evaluation.values() for e in p.items["entity"]}
        sources = [(p.items, p.tokens) for p in kept.values()] + (
            [(pool.items, pool.tokens)] if pool is not None else []
        )
        template_refs = _template_references(sources, evaluation_entities, evaluated, settings)
    for task in TASKS:
        refs[task] = own[task]
        if settings.shared_reference:  # lengths both tasks have: one reference of both tasks' prompts, so the replacement values do not depend on the task label
            refs[task] = {
                length: torch.cat([own[t][length] for t in TASKS if length in own[t]]) for length in own[task]
            }
        if settings.template_reference:
            refs[task] = template_refs
            key = lambda i, row: (evaluation[task].items["template"].iloc[i], len(row))  # noqa: E731
        else:
            key = lambda i, row: len(row)  # noqa: E731
        has_reference = [i for i, row in enumerate(evaluation[task].tokens) if key(i, row) in refs[task]]
        dropped[task] = len(evaluation[task]) - len(has_reference)
        evaluation[task] = evaluation[task].subset(has_reference)
        for name, half in (("localisation", localisation), ("evaluation", evaluation)):
            if len(half[task]) == 0:
                hint = (
                    f" or lower AnalysisSettings.min_reference_prompts ({settings.min_reference_prompts}: {dropped[task]} evaluated items lacked a reference cell that large)"
                    if settings.template_reference and name == "evaluation" and dropped[task]
                    else ""
                )
                raise InterpError(
                    f"analyse: the {name} half has no {task} items; use more entities (max_entities) or families{hint}."
                )
    return localisation, evaluation, refs, dropped


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
        **_reference_stats(refs, evaluation, settings),
        reasoning_answer_in_prompt_fraction_all=float(answer_in_prompt(prompts["reasoning"]).mean()),
        reasoning_answer_in_prompt_fraction=float(answer_in_prompt(evaluation["reasoning"]).mean()),
        n_reasoning_no_copy_evaluation=int((~answer_in_prompt(evaluation["reasoning"])).sum()),
        **_family_accuracy(tables["items"]),
        shuffled_labels=settings.shuffle_labels,
    )
    return tables, metrics


def _reference_stats(refs: dict[str, dict], evaluation: dict[str, PromptSet], settings: AnalysisSettings) -> dict:
    """Which reference rule ran and, for template references, how many prompts each evaluated item's cell holds."""
    out = dict(
        reference="template"
        if settings.template_reference
        else "shared_length"
        if settings.shared_reference
        else "task_length"
    )
    if not settings.template_reference:
        return out
    sizes = {
        task: [
            len(refs[task][(template, len(row))])
            for template, row in zip(evaluation[task].items["template"], evaluation[task].tokens)
        ]
        for task in TASKS
    }
    every = sizes["recall"] + sizes["reasoning"]
    used = {key for task in TASKS for key in zip(evaluation[task].items["template"], map(len, evaluation[task].tokens))}
    out.update(
        reference_cell_min=int(min(every)),
        reference_cell_median=float(np.median(every)),
        reference_cell_max=int(max(every)),
        reference_cells=len(used),
        n_reference_prompts=int(sum(len(refs["recall"][key]) for key in used)),
        reference_cell_sizes={task: sorted(int(n) for n in sizes[task]) for task in TASKS},
        min_reference_prompts=settings.min_reference_prompts,
        max_reference_prompts=settings.max_reference_prompts,
    )
    return out


def _family_accuracy(items: pd.DataFrame) -> dict:
    """Unablated accuracy (vs distractors) of all built reasoning items whose answer is / is not in the prompt."""
    reasoning = items[items["task"] == "reasoning"]
    no_copy = reasoning["family"].isin(NO_COPY_FAMILIES)
    return dict(
        reasoning_acc_all_items_no_copy=float(reasoning[no_copy]["correct_distractor"].mean())
        if no_copy.any()
        else float("nan"),
        reasoning_acc_all_items_copy=float(reasoning[~no_copy]["correct_distractor"].mean())
        if (~no_copy).any()
        else float("nan"),
        n_reasoning_no_copy_items=int(no_copy.sum()),
    )


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
        out[f"{prefix}reference_check"] = _reference_check(model, evaluation, refs, conditions[:3], table, settings)
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


def _reference_check(
    model: HookedTransformer,
    evaluation: dict[str, PromptSet],
    refs: dict[str, dict],
    conditions: list,
    table: pd.DataFrame,
    settings: AnalysisSettings,
) -> pd.DataFrame:
    """The chosen sets' drops (verdict method) with each random half of every reference cell instead of the whole cell; one row per half, set and task."""
    method, rows = settings.verdict_method, []
    for half, half_refs in enumerate(reference_halves(refs["recall"], settings.seed)):
        for task in TASKS:
            correct = evaluate_conditions(
                model,
                evaluation[task],
                half_refs,
                conditions,
                method,
                seed=settings.seed,
                memory_budget=settings.memory_budget,
            )[:, :, 0]
            acc = correct.mean(1)
            for c, ablated in ((1, "recall_set"), (2, "reasoning_set")):
                full = float(
                    table[(table["method"] == method) & (table["ablated"] == ablated) & (table["task"] == task)][
                        "drop"
                    ].iloc[0]
                )
                rows.append(
                    dict(
                        method=method,
                        half=half,
                        ablated=ablated,
                        task=task,
                        drop_half=float(acc[0] - acc[c]),
                        drop_full=full,
                        change=float(acc[0] - acc[c]) - full,
                    )
                )
    return pd.DataFrame(rows)


def _accuracy(table: pd.DataFrame, method: str, ablated: str, task: str, column: str = "accuracy") -> float:
    rows = table[(table["method"] == method) & (table["ablated"] == ablated) & (table["task"] == task)]
    return float(rows[column].iloc[0])


def _random(table: pd.DataFrame, method: str, chosen: str, task: str) -> np.ndarray:
    return table[(table["method"] == method) & (table["ablated"] == f"random_{chosen}") & (table["task"] == task)][
        "drop"
    ].to_numpy()


VERDICT_KEYS = (
    "recall_set_own_drop",
    "recall_set_cross_drop",
    "recall_set_selectivity",
    "recall_set_p_own",
    "recall_set_p_selectivity",
    "reasoning_set_own_drop",
    "reasoning_set_cross_drop",
    "reasoning_set_selectivity",
    "reasoning_set_p_own",
    "reasoning_set_p_selectivity",
    "recall_set_random_own_drop_mean",
    "recall_set_random_cross_drop_mean",
    "recall_set_random_selectivity_mean",
    "reasoning_set_random_own_drop_mean",
    "reasoning_set_random_cross_drop_mean",
    "reasoning_set_random_selectivity_mean",
    "recall_set_n_random",
    "reasoning_set_n_random",
    "interaction",
    "interaction_ci95",
    "p_resolution",
    "alpha",
    "n_bootstrap",
    "n_recall_eval",
    "n_reasoning_eval",
    "recall_set_specific",
    "reasoning_set_specific",
    "double_dissociation",
)


def _clean(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in value]
    return value


def verdict_text(m: dict, model_name: str, method: str, items: str = "all") -> str:
    """The verdict in one plain sentence with its numbers."""
    head = "shows a double dissociation" if m["double_dissociation"] else "does NOT show a double dissociation"
    scope = "" if items == "all" else f" (reasoning items: {items.replace('_', '-')} families only)"
    low, high = m["interaction_ci95"]
    return (
        f"{model_name} {head} under {method} ablation on held-out items{scope}: the recall set drops recall by {m['recall_set_own_drop']:.3f} and reasoning by "
        f"{m['recall_set_cross_drop']:.3f} (selectivity {m['recall_set_selectivity']:.3f}; p own {m['recall_set_p_own']:.3f}, p selectivity {m['recall_set_p_selectivity']:.3f}); "
        f"the reasoning set drops reasoning by {m['reasoning_set_own_drop']:.3f} and recall by {m['reasoning_set_cross_drop']:.3f} (selectivity "
        f"{m['reasoning_set_selectivity']:.3f}; p own {m['reasoning_set_p_own']:.3f}, p selectivity {m['reasoning_set_p_selectivity']:.3f}); interaction "
        f"{m['interaction']:.3f} (95% item-bootstrap CI {low:.3f}..{high:.3f}); p values against {m['recall_set_n_random']} / {m['reasoning_set_n_random']} "
        f"matched random sets (resolution {m['p_resolution']:.4f}), level {m['alpha']}."
    )


def headline_metrics(
    tables: dict[str, pd.DataFrame],
    kept: dict[str, PromptSet],
    evaluation: dict[str, PromptSet],
    settings: AnalysisSettings,
    model_name: str,
) -> dict:
    """The metrics.json keys (at settings.verdict_method) and the same per method under by_method (and per item subset under no_copy / copy)."""
    items = tables["items"]

    def at(method: str, prefix: str = "", subset: str = "all") -> dict:
        table, decided = tables[f"{prefix}dissociation"], tables[f"{prefix}verdicts"]
        row = decided[(decided["method"] == method) & (decided["items"] == subset)].iloc[0]
        m = {key: _clean(row[key]) for key in VERDICT_KEYS}
        out = dict(m, verdict=verdict_text(m, model_name, method, subset))
        if subset != "all":
            return out
        recall_random, reasoning_random = (
            _random(table, method, "recall_set", "recall"),
            _random(table, method, "reasoning_set", "reasoning"),
        )

        def summary(drops):
            if not len(drops):
                return float("nan"), [float("nan"), float("nan")], float("nan")
            mean, low, high = mean_ci95(drops)
            return mean, [low, high], float(np.quantile(drops, 0.975))

        (rm, rci, rq), (qm, qci, qq) = summary(recall_random), summary(reasoning_random)
        out.update(
            recall_acc_after_recall_ablation=_accuracy(table, method, "recall_set", "recall"),
            reasoning_acc_after_recall_ablation=_accuracy(table, method, "recall_set", "reasoning"),
            recall_acc_after_reasoning_ablation=_accuracy(table, method, "reasoning_set", "recall"),
            reasoning_acc_after_reasoning_ablation=_accuracy(table, method, "reasoning_set", "reasoning"),
            random_recall_drop_mean=rm,
            random_recall_drop_ci95=rci,
            random_recall_drop_q975=rq,
            random_reasoning_drop_mean=qm,
            random_reasoning_drop_ci95=qci,
            random_reasoning_drop_q975=qq,
            p_recall_set=m["recall_set_p_own"],
            p_reasoning_set=m["reasoning_set_p_own"],
            recall_set_band=_clean(row["recall_set_band"]),
            reasoning_set_band=_clean(row["reasoning_set_band"]),
            recall_set_composition=_clean(row["recall_set_composition"]),
            reasoning_set_composition=_clean(row["reasoning_set_composition"]),
        )
        return out

    def subsets(prefix: str, methods) -> dict:
        present = set(tables[f"{prefix}verdicts"]["items"])
        return {
            subset: dict(
                at(settings.verdict_method, prefix, subset),
                by_method={method: at(method, prefix, subset) for method in methods},
            )
            for subset in SUBSETS[1:]
            if subset in present
        }

    metrics = dict(
        model=model_name,
        verdict_method=settings.verdict_method,
        n_random=settings.n_random,
        n_recall_items=len(evaluation["recall"]),
        n_reasoning_items=len(evaluation["reasoning"]),
        n_recall_correct=int(items[items["task"] == "recall"]["kept"].sum()),
        n_reasoning_correct=int(items[items["task"] == "reasoning"]["kept"].sum()),
        n_recall_dropped=int((~items[items["task"] == "recall"]["kept"]).sum()),
        n_reasoning_dropped=int((~items[items["task"] == "reasoning"]["kept"]).sum()),
        recall_acc_base=_accuracy(tables["dissociation"], settings.verdict_method, "none", "recall"),
        reasoning_acc_base=_accuracy(tables["dissociation"], settings.verdict_method, "none", "reasoning"),
        recall_acc_first_token_base=_accuracy(
            tables["dissociation"], settings.verdict_method, "none", "recall", "accuracy_first_token"
        ),
        reasoning_acc_first_token_base=_accuracy(
            tables["dissociation"], settings.verdict_method, "none", "reasoning", "accuracy_first_token"
        ),
        recall_acc_all_items_first_token=float(items[items["task"] == "recall"]["correct_first_token"].mean()),
        recall_acc_all_items_distractor=float(items[items["task"] == "recall"]["correct_distractor"].mean()),
        reasoning_acc_all_items_first_token=float(items[items["task"] == "reasoning"]["correct_first_token"].mean()),
        reasoning_acc_all_items_distractor=float(items[items["task"] == "reasoning"]["correct_distractor"].mean()),
        recall_set=_names(tables["sets"], "recall"),
        reasoning_set=_names(tables["sets"], "reasoning"),
        **at(settings.verdict_method),
        by_method={method: at(method) for method in settings.methods},
        **subsets("", settings.methods),
    )
    if "neuron_verdicts" in tables:
        neuron_methods = settings.neuron_methods or settings.methods
        metrics["neurons"] = dict(
            recall_set=_names(tables["neuron_sets"], "recall"),
            reasoning_set=_names(tables["neuron_sets"], "reasoning"),
            **at(settings.verdict_method, "neuron_"),
            by_method={method: at(method, "neuron_") for method in neuron_methods},
            **subsets("neuron_", neuron_methods),
        )
    if "reference_check" in tables:
        check = tables["reference_check"]
        metrics.update(
            reference_half_max_abs_drop_change=float(check["change"].abs().max()),
            reference_half_mean_abs_drop_change=float(check["change"].abs().mean()),
        )
    if "screen_summary" in tables:
        summary = tables["screen_summary"]
        metrics["screen_specialised"] = {
            f"{r.comparison}.{r.feature}": int(r.specialised) for r in summary.itertuples()
        }
    return metrics


def _names(choice: pd.DataFrame, task: str) -> list[str]:
    return choice[choice["chosen_for"] == task]["unit"].tolist()
