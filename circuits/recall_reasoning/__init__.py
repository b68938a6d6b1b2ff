"""Recall vs reasoning circuits (arXiv 2510.03366): tasks, causal localisation, ablation dissociation, the screen, a synthetic control."""

from circuits.recall_reasoning.dissociation import (
    ablated_scores,
    dissociation,
    evaluate_conditions,
    matched_random_sets,
    random_sets,
)

from circuits.recall_reasoning.verdicts import held_out_verdict, mean_ci95, verdict_text, verdicts
from circuits.recall_reasoning.localisation import (
    choose_sets,
    chosen_sites,
    localise,
    patch_positions,
    patch_units,
    units,
)
from circuits.recall_reasoning.pipeline import AnalysisSettings, analyse
from circuits.recall_reasoning.screen import compare, last_token_features, length_matched, screen, screen_summary
from circuits.recall_reasoning.synthetic import KnowledgeBase, SyntheticTraining, evaluate, prompt_sets, train
from circuits.recall_reasoning.tasks import FAMILIES, TASKS, Family, PromptSet, build_prompts, keep_correct, score

__all__ = [
    "FAMILIES",
    "TASKS",
    "AnalysisSettings",
    "Family",
    "KnowledgeBase",
    "PromptSet",
    "SyntheticTraining",
    "ablated_scores",
    "analyse",
    "build_prompts",
    "choose_sets",
    "chosen_sites",
    "compare",
    "dissociation",
    "evaluate",
    "evaluate_conditions",
    "held_out_verdict",
    "matched_random_sets",
    "keep_correct",
    "last_token_features",
    "length_matched",
    "localise",
    "mean_ci95",
    "patch_positions",
    "patch_units",
    "prompt_sets",
    "random_sets",
    "score",
    "screen",
    "screen_summary",
    "train",
    "units",
    "verdict_text",
    "verdicts",
]
