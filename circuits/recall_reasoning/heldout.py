"""The held-out design of the recall-vs-reasoning analysis: the kept items split by entity into a localisation and an
evaluation half (each sampled per stratum), and every evaluated item's reference prompts for mean / resample ablation
(prompts of its own template and token length about entities outside the evaluation half, never an evaluated prompt);
how large those reference cells are, and how much the chosen sets' drops move with each random half of every cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.dissociation import evaluate_conditions
from circuits.recall_reasoning.settings import AnalysisSettings
from circuits.recall_reasoning.families import NO_COPY_FAMILIES
from circuits.recall_reasoning.tasks import (
    TASKS,
    PromptSet,
    ReferencePool,
    references,
    split_by_entity,
)
from interp.errors import InterpError


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


def reference_stats(refs: dict[str, dict], evaluation: dict[str, PromptSet], settings: AnalysisSettings) -> dict:
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


def reference_check(
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
