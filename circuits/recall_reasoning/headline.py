"""The headline of the recall-vs-reasoning analysis: the metrics.json keys (at the verdict method, per method, per item
subset, for the neuron sets), the verdict in one plain sentence, and the unablated accuracy by family kind."""

from __future__ import annotations

import numpy as np
import pandas as pd

from circuits.recall_reasoning.verdicts import mean_ci95
from circuits.recall_reasoning.settings import SUBSETS, AnalysisSettings
from circuits.recall_reasoning.families import NO_COPY_FAMILIES
from circuits.recall_reasoning.tasks import PromptSet


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


def family_accuracy(items: pd.DataFrame) -> dict:
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
