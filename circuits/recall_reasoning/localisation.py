"""Causal localisation: patch each unit (attention head, MLP layer, MLP neuron) clean -> corrupted per task, then pick the sets.

A unit is a query head's input to W_O (`attn.hook_z`, head h), a whole MLP layer's output
(`hook_mlp_out`) or one MLP neuron's activation (`mlp.hook_post`, neuron n), each at every position.
Its effect on a task is the restoration of the logit difference (answer minus the corrupted
partner's answer) when only that unit is patched. Heads and MLP layers form one pool; neurons form
their own pool with their own sets (too many to patch each exactly: always AtP first, see below).

The rule choosing the sets is SET_RULE below (the dashboard shows the same text).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.tasks import TASKS, PromptSet
from interp.attribution import attribute_sites
from interp.errors import InterpError
from interp.patching import PatchingTask, patch_layer_positions, patch_sites
from interp.sites import Site

SET_RULE = """\
specificity_recall(u)    = restoration_recall(u) - restoration_reasoning(u)
recall set    = the `set_size` units with the largest specificity_recall among units with
                restoration_recall(u) >= min_restoration and specificity_recall(u) > 0
reasoning set = the same with the tasks swapped.
The sets are disjoint (a unit cannot be more specific to both) and may be smaller than set_size
when too few units pass; the random baseline sets then take the chosen set's size.
With `exact_candidates` (quick runs, and always for neurons), every unit is first estimated by
attribution patching (AtP), the top candidates of each task by |AtP restoration| are patched exactly
on both tasks, and the rule runs on the exact effects of those candidates only.
Neuron sets follow the same rule over the neuron pool, with their own size and threshold
(AnalysisSettings.neuron_set_size, neuron_min_restoration: one neuron restores far less than a head).
"""  # plain text: the module documentation and the dashboard both show it

UNIT_KINDS = ("head", "mlp", "neuron")
_KIND_OF_COMPONENT = {"z": "head", "mlp_out": "mlp", "mlp_post": "neuron"}


def patching_task(model: HookedTransformer, prompts: PromptSet, indices: Sequence[int] | None = None) -> PatchingTask:
    """The PatchingTask of a prompt set (or of some of its items): logit difference against the corrupted answer.

    Items of one token length go as token tensors; mixed lengths go as the prompt strings, left-padded (align=True).
    """
    indices = list(range(len(prompts)) if indices is None else indices)
    clean = [prompts.tokens[i] for i in indices]
    answers, wrong = prompts.answer_ids[indices], prompts.wrong_ids[indices]
    if len({len(row) for row in clean}) == 1:
        return PatchingTask(
            model, torch.stack(clean), torch.stack([prompts.corrupted[i] for i in indices]), answers, wrong
        )
    rows = prompts.items.iloc[indices]
    return PatchingTask(model, rows["prompt"].tolist(), rows["corrupted_prompt"].tolist(), answers, wrong, align=True)


def units(model: HookedTransformer, kinds: Sequence[str] = ("head", "mlp")) -> list[Site]:
    """Every unit of the model of the given kinds: z Sites per (layer, query head), mlp_out Sites per layer, mlp_post Sites per (layer, neuron)."""
    for kind in kinds:
        if kind not in UNIT_KINDS:
            raise InterpError(f"units(kinds=...): {kind!r} is not a unit kind; choose from {', '.join(UNIT_KINDS)}.")
    cfg = model.cfg
    heads = (
        [Site(layer, "z", head=h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
        if "head" in kinds
        else []
    )
    mlps = [Site(layer, "mlp_out") for layer in range(cfg.n_layers)] if "mlp" in kinds else []
    neurons = (
        [Site(layer, "mlp_post", neuron=n) for layer in range(cfg.n_layers) for n in range(cfg.d_mlp)]
        if "neuron" in kinds
        else []
    )
    return heads + mlps + neurons


def unit_name(site: Site) -> str:
    return {
        "z": f"L{site.layer}H{site.head}",
        "mlp_out": f"L{site.layer}MLP",
        "mlp_post": f"L{site.layer}N{site.neuron}",
    }[site.component]


def patch_units(model: HookedTransformer, prompts: PromptSet, unit_sites: Sequence[Site]) -> pd.DataFrame:
    """Restoration of each unit on one task: one row per unit (unit, kind, layer, head, restoration, metric)."""
    df = patch_sites(patching_task(model, prompts), list(unit_sites))
    kind = df["component"].map(_KIND_OF_COMPONENT)
    return df.assign(task=prompts.task, unit=[unit_name(s) for s in unit_sites], kind=kind)


def localise(
    model: HookedTransformer, prompts: dict[str, PromptSet], pool: Sequence[Site], exact_candidates: int | None = None
) -> pd.DataFrame:
    """Per (task, unit): exact restoration (NaN for units not patched exactly) and, with exact_candidates, the AtP estimate."""
    if exact_candidates is None:
        return pd.concat([patch_units(model, prompts[task], pool) for task in TASKS], ignore_index=True)
    estimates = {
        task: attribute_sites(patching_task(model, prompts[task]), list(pool))["restoration"].to_numpy()
        for task in TASKS
    }
    candidates: set[int] = set()
    for values in estimates.values():
        candidates |= set(pd.Series(values).abs().nlargest(exact_candidates).index)
    chosen = [pool[i] for i in sorted(candidates)]
    frames = []
    for task in TASKS:
        exact = patch_units(model, prompts[task], chosen).set_index("unit")["restoration"]
        frames.append(
            pd.DataFrame(
                dict(
                    task=task,
                    unit=[unit_name(s) for s in pool],
                    kind=[_KIND_OF_COMPONENT[s.component] for s in pool],
                    layer=[s.layer for s in pool],
                    head=pd.array([s.head for s in pool], dtype="Int64"),
                    neuron=pd.array([s.neuron for s in pool], dtype="Int64"),
                    restoration_atp=estimates[task],
                )
            ).assign(restoration=lambda d: d["unit"].map(exact))
        )
    return pd.concat(frames, ignore_index=True)


def patch_positions(
    model: HookedTransformer, prompts: PromptSet, component: str = "resid_pre", layers: Sequence[int] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Layer x position patching on the task's most common token length (so positions mean the same tokens); also that group's first prompt's tokens."""
    groups = prompts.length_groups()
    indices = max(groups.values(), key=len)
    df = patch_layer_positions(patching_task(model, prompts, indices), component, layers=layers)
    tokens = (
        [model.tokenizer.decode(t) for t in prompts.tokens[indices[0]]]
        if model.tokenizer is not None
        else [str(int(t)) for t in prompts.tokens[indices[0]]]
    )
    return df.assign(task=prompts.task, n_prompts=len(indices)), tokens


def choose_sets(effects: pd.DataFrame, set_size: int, min_restoration: float) -> pd.DataFrame:
    """Apply the module's rule to per-unit effects of both tasks (rows: task, unit, restoration, ...).

    Returns one row per unit: unit, kind, layer, head, neuron, restoration_recall, restoration_reasoning,
    specificity_recall, specificity_reasoning, and `chosen_for` ("recall", "reasoning" or "").
    """
    if set_size < 1:
        raise InterpError(f"choose_sets(set_size={set_size}): the sets need at least one unit.")
    missing = {"recall", "reasoning"} - set(effects["task"])
    if missing:
        raise InterpError(f"choose_sets: effects lack task(s) {sorted(missing)}; patch both tasks first.")
    effects = effects.dropna(subset=["restoration"])  # units estimated but not patched exactly take no part
    neuron = effects["neuron"] if "neuron" in effects else pd.Series(-1, index=effects.index)
    keyed = effects.assign(
        head=effects["head"].fillna(-1).astype(int), neuron=neuron.fillna(-1).astype(int)
    )  # NaN keys would be dropped
    wide = keyed.pivot(
        index=["unit", "kind", "layer", "head", "neuron"], columns="task", values="restoration"
    ).reset_index()
    wide = wide.rename(columns={"recall": "restoration_recall", "reasoning": "restoration_reasoning"}).fillna(
        {"restoration_recall": 0.0, "restoration_reasoning": 0.0}
    )
    wide["specificity_recall"] = wide["restoration_recall"] - wide["restoration_reasoning"]
    wide["specificity_reasoning"] = -wide["specificity_recall"]
    wide["chosen_for"] = ""
    for task in ("recall", "reasoning"):
        eligible = wide[(wide[f"restoration_{task}"] >= min_restoration) & (wide[f"specificity_{task}"] > 0)]
        chosen = eligible.nlargest(set_size, f"specificity_{task}").index
        wide.loc[chosen, "chosen_for"] = task
    wide.columns.name = None
    wide["head"] = wide["head"].where(wide["head"] >= 0)
    wide["neuron"] = wide["neuron"].where(wide["neuron"] >= 0)
    return wide.sort_values(["layer", "kind", "head", "neuron"], na_position="last").reset_index(drop=True)


def chosen_sites(choice: pd.DataFrame, task: str) -> list[Site]:
    rows = choice[choice["chosen_for"] == task]
    return [_site_of_row(r) for r in rows.itertuples()]


def _site_of_row(row) -> Site:
    if row.kind == "head":
        return Site(int(row.layer), "z", head=int(row.head))
    if row.kind == "neuron":
        return Site(int(row.layer), "mlp_post", neuron=int(row.neuron))
    return Site(int(row.layer), "mlp_out")
