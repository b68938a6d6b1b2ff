"""The analysis every model gets: filter to correct items, patch units, choose the sets, ablate, decide; plus the screen."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.dissociation import dissociation, verdict_text, verdicts
from circuits.recall_reasoning.localisation import chosen_sites, choose_sets, localise, patch_positions, units
from circuits.recall_reasoning.screen import screen, screen_summary
from circuits.recall_reasoning.tasks import TASKS, PromptSet, keep_correct
from interp.errors import InterpError


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
    n_random: int = 20
    verdict_method: str = "mean"
    position_layers: tuple[int, ...] | None = None  # layers of the layer x position sweep; None: all; () skips it
    screen: bool = True
    control_length: bool = True
    alpha: float = 0.01
    min_d: float = 0.8
    exact_candidates: int | None = None  # None: patch every unit exactly; else AtP first, then this many per task exactly
    single_length: bool = False  # keep only each task's most common token length: one batch per forward (quick runs)
    max_items: int | None = None  # per task, a seeded sample of the kept items (quick runs)
    seed: int = 0

    def __post_init__(self):
        for name, methods in (("methods", self.methods), ("neuron_methods", self.neuron_methods or self.methods)):
            if self.verdict_method not in methods:
                raise InterpError(f"AnalysisSettings(verdict_method={self.verdict_method!r}) is not among {name}={methods}; add it there or pick one of them.")


def _restrict(prompts: PromptSet, settings: AnalysisSettings) -> PromptSet:
    if settings.single_length:
        prompts = prompts.subset(max(prompts.length_groups().values(), key=len))
    if settings.max_items is not None and len(prompts) > settings.max_items:
        generator = torch.Generator().manual_seed(settings.seed)
        prompts = prompts.subset(sorted(torch.randperm(len(prompts), generator=generator)[: settings.max_items].tolist()))
    return prompts


def analyse(model: HookedTransformer, prompts: dict[str, PromptSet], settings: AnalysisSettings, *, model_name: str, progress: bool = False) -> tuple[dict[str, pd.DataFrame], dict]:
    """Run the whole pipeline on prompt sets of both tasks; returns tidy tables and the headline metrics."""
    tables: dict[str, pd.DataFrame] = {}
    kept, item_scores = {}, []
    for task in TASKS:
        correct, scores = keep_correct(model, prompts[task])
        kept[task] = _restrict(correct, settings)
        item_scores.append(scores)
    tables["items"] = pd.concat(item_scores, ignore_index=True)
    tables.update(_localise_and_ablate(model, kept, units(model, settings.unit_kinds), settings.set_size, settings.min_restoration, settings.exact_candidates, settings, "", progress))
    if settings.neuron_set_size > 0:
        neuron_pool = units(model, ("neuron",))
        tables.update(_localise_and_ablate(model, kept, neuron_pool, settings.neuron_set_size, settings.neuron_min_restoration, settings.neuron_candidates,
                                           replace(settings, methods=settings.neuron_methods or settings.methods), "neuron_", progress))
    if settings.position_layers != ():
        layers = None if settings.position_layers is None else list(settings.position_layers)
        frames = []
        for task in TASKS:
            df, tokens = patch_positions(model, kept[task], layers=layers)
            frames.append(df.assign(token=[tokens[p] for p in df["position"]]))
        tables["position_patching"] = pd.concat(frames, ignore_index=True)
    if settings.screen:
        screened = screen(model, kept["recall"], kept["reasoning"], control_length=settings.control_length, alpha=settings.alpha, min_d=settings.min_d)
        tables["screen"] = screened
        tables["screen_summary"] = screen_summary(screened)
    return tables, headline_metrics(tables, kept, settings, model_name)


def _localise_and_ablate(model: HookedTransformer, kept: dict[str, PromptSet], pool: list, set_size: int, min_restoration: float, exact_candidates: int | None,
                         settings: AnalysisSettings, prefix: str, progress: bool) -> dict[str, pd.DataFrame]:
    """Patch the pool's units, choose the two sets by the localisation rule, ablate them and random sets; tables named with prefix."""
    effects = localise(model, kept, pool, exact_candidates)
    choice = choose_sets(effects, set_size, min_restoration)
    recall_set, reasoning_set = chosen_sites(choice, "recall"), chosen_sites(choice, "reasoning")
    table = dissociation(model, kept, recall_set, reasoning_set, pool, methods=settings.methods, n_random=settings.n_random, seed=settings.seed, progress=progress)
    return {f"{prefix}unit_patching": effects, f"{prefix}sets": choice, f"{prefix}dissociation": table,
            f"{prefix}verdicts": verdicts(table, len(recall_set), len(reasoning_set))}


def _accuracy(table: pd.DataFrame, method: str, ablated: str, task: str, column: str = "accuracy") -> float:
    rows = table[(table["method"] == method) & (table["ablated"] == ablated) & (table["task"] == task)]
    return float(rows[column].iloc[0])


def headline_metrics(tables: dict[str, pd.DataFrame], kept: dict[str, PromptSet], settings: AnalysisSettings, model_name: str) -> dict:
    """The issue's metrics.json keys (at settings.verdict_method) and the same per method under by_method."""
    items = tables["items"]

    def at(method: str, prefix: str = "") -> dict:
        table, decided = tables[f"{prefix}dissociation"], tables[f"{prefix}verdicts"].set_index("method", drop=False)
        row = decided.loc[method]
        return dict(
            recall_acc_after_recall_ablation=_accuracy(table, method, "recall_set", "recall"),
            reasoning_acc_after_recall_ablation=_accuracy(table, method, "recall_set", "reasoning"),
            recall_acc_after_reasoning_ablation=_accuracy(table, method, "reasoning_set", "recall"),
            reasoning_acc_after_reasoning_ablation=_accuracy(table, method, "reasoning_set", "reasoning"),
            random_recall_drop_mean=float(row["random_recall_drop_mean"]), random_recall_drop_ci95=list(row["random_recall_drop_ci95"]),
            random_reasoning_drop_mean=float(row["random_reasoning_drop_mean"]), random_reasoning_drop_ci95=list(row["random_reasoning_drop_ci95"]),
            random_recall_drop_q975=float(row["random_recall_drop_q975"]), random_reasoning_drop_q975=float(row["random_reasoning_drop_q975"]),
            p_recall_set=float(row["p_recall_set"]), p_reasoning_set=float(row["p_reasoning_set"]),
            double_dissociation=bool(row["double_dissociation"]), verdict=verdict_text(row, model_name),
        )

    metrics = dict(
        model=model_name, verdict_method=settings.verdict_method,
        n_recall_items=len(kept["recall"]), n_reasoning_items=len(kept["reasoning"]),
        n_recall_correct=int(items[items["task"] == "recall"]["kept"].sum()), n_reasoning_correct=int(items[items["task"] == "reasoning"]["kept"].sum()),
        n_recall_dropped=int((~items[items["task"] == "recall"]["kept"]).sum()), n_reasoning_dropped=int((~items[items["task"] == "reasoning"]["kept"]).sum()),
        recall_acc_base=_accuracy(tables["dissociation"], settings.verdict_method, "none", "recall"),
        reasoning_acc_base=_accuracy(tables["dissociation"], settings.verdict_method, "none", "reasoning"),
        recall_acc_first_token_base=_accuracy(tables["dissociation"], settings.verdict_method, "none", "recall", "accuracy_first_token"),
        reasoning_acc_first_token_base=_accuracy(tables["dissociation"], settings.verdict_method, "none", "reasoning", "accuracy_first_token"),
        recall_acc_all_items_first_token=float(items[items["task"] == "recall"]["correct_first_token"].mean()),
        recall_acc_all_items_distractor=float(items[items["task"] == "recall"]["correct_distractor"].mean()),
        reasoning_acc_all_items_first_token=float(items[items["task"] == "reasoning"]["correct_first_token"].mean()),
        reasoning_acc_all_items_distractor=float(items[items["task"] == "reasoning"]["correct_distractor"].mean()),
        recall_set=_names(tables["sets"], "recall"), reasoning_set=_names(tables["sets"], "reasoning"),
        **at(settings.verdict_method),
        by_method={method: at(method) for method in settings.methods},
    )
    if "neuron_verdicts" in tables:
        metrics["neurons"] = dict(recall_set=_names(tables["neuron_sets"], "recall"), reasoning_set=_names(tables["neuron_sets"], "reasoning"),
                                  **at(settings.verdict_method, "neuron_"), by_method={method: at(method, "neuron_") for method in settings.neuron_methods or settings.methods})
    if "screen_summary" in tables:
        summary = tables["screen_summary"]
        metrics["screen_specialised"] = {f"{r.comparison}.{r.feature}": int(r.specialised) for r in summary.itertuples()}
    return metrics


def _names(choice: pd.DataFrame, task: str) -> list[str]:
    return choice[choice["chosen_for"] == task]["unit"].tolist()

