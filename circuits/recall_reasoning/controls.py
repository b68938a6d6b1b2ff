"""Controls of the dissociation test on the synthetic setting, where the answer is known by construction.

Positive control (planted): a small transformer is trained on the in-context problems only (2-hop and
1-hop lookups over fresh names) with its MLP layers held at zero (attention only: the 2-hop task is two
induction steps), so nothing in the model reads an MLP; the MLPs stay at zero afterwards. The facts of a knowledge base (one relation) are then written
into that MLP by hand: each KB entity gets a fresh embedding direction, one neuron of the fact MLP fires
on it (its input weights fitted by least squares to fire on that entity at the last position and on
nothing else, in-context problems included), and writes the answer value's unembedding direction.
Recall then runs through the fact MLP alone and the 2-hop task never touches it: a true double
dissociation. The pipeline must declare it in (nearly) every seed.

Negative control (shuffled): the same models and items with the task labels dealt at random
(tasks.shuffle_labels): both pseudo-tasks mix recall and reasoning items, so no set can be selective;
the pipeline must (nearly) never declare a dissociation.

Each seed draws its own knowledge base (facts), entity embeddings, items, entity split and random
sets; the reasoner is trained once (the expensive part) and shared by the seeds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.pipeline import AnalysisSettings, analyse
from circuits.recall_reasoning.synthetic import (
    KnowledgeBase,
    SyntheticTraining,
    prompt_sets,
    reasoning_batch,
    recall_batch,
    train,
)
from circuits.recall_reasoning.tasks import correct_by_distractors
from interp.errors import InterpError


@dataclass(frozen=True)
class PlantedSettings:
    training: SyntheticTraining = field(
        default_factory=lambda: SyntheticTraining(n_layers=3, d_model=64, n_heads=8, d_mlp=48, steps=800)
    )  # d_mlp >= n_entities: one fact neuron each
    fact_layer: int = -1  # the MLP layer that holds the facts (zero during training)
    n_entities: int = 32
    n_values: int = 8
    n_fresh: int = 16
    embed_scale: float = (
        4.0  # entity embeddings' norm, in units of the residual stream's typical norm at the fact layer
    )
    out_scale: float = 8.0  # the fact neuron's write, in the same units
    margin: float = 3.0  # fact neurons' pre-activation: +margin on their entity, -margin elsewhere
    n_reasoning_items: int = 64
    analysis: AnalysisSettings = field(
        default_factory=lambda: AnalysisSettings(
            set_size=3,
            neuron_set_size=0,
            methods=("mean",),
            screen=False,
            position_layers=(),
            n_random=200,
            n_bootstrap=1000,
        )
    )

    def kb(self, seed: int) -> KnowledgeBase:
        return KnowledgeBase(
            n_entities=self.n_entities, n_relations=1, n_values=self.n_values, n_fresh=self.n_fresh, seed=seed
        )


def train_reasoner(settings: PlantedSettings, *, progress: bool = False) -> tuple[HookedTransformer, pd.DataFrame]:
    """The in-context reasoner: trained on 2-hop problems and lookups only, every MLP held at zero (attention only)."""
    reasoner, curve = train(
        settings.kb(0),
        settings.training,
        progress=progress,
        recall=False,
        mlp_off=tuple(range(settings.training.n_layers)),
    )
    with torch.no_grad():
        for block in reasoner.blocks:  # the MLPs stay off: the model computes what it was trained to
            block.mlp.W_out.zero_(), block.mlp.b_out.zero_()
    return reasoner, curve


def _mlp_input(model: HookedTransformer, layer: int, tokens: torch.Tensor) -> torch.Tensor:
    """The fact MLP's input (ln2 output) at the last position."""
    captured = {}
    handle = model.blocks[layer].ln2.register_forward_hook(
        lambda module, args, output: captured.__setitem__("x", output[:, -1].detach().clone())
    )
    try:
        with torch.no_grad():
            model(tokens, return_type=None)
    finally:
        handle.remove()
    return captured["x"]


def plant_facts(
    reasoner: HookedTransformer, kb: KnowledgeBase, settings: PlantedSettings, seed: int
) -> HookedTransformer:
    """A copy of the reasoner with kb's facts written into the fact layer's MLP (see the module doc); checks that recall is then perfect."""
    if kb.n_relations != 1:
        raise InterpError(
            f"plant_facts(kb.n_relations={kb.n_relations}): the planted facts are keyed on the entity alone; use one relation."
        )
    model = copy.deepcopy(reasoner)
    cfg = model.cfg
    layer = settings.fact_layer % cfg.n_layers
    if cfg.d_mlp < kb.n_entities:
        raise InterpError(
            f"plant_facts: the fact MLP has {cfg.d_mlp} neurons but the KB {kb.n_entities} entities; one neuron per entity is needed."
        )
    generator = torch.Generator().manual_seed(seed)
    problems, _ = reasoning_batch(kb, 256, generator)
    lookups, _ = reasoning_batch(kb, 256, generator, hops=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(problems, names_filter=f"blocks.{layer}.hook_resid_mid")
        typical = float(cache[f"blocks.{layer}.hook_resid_mid"][:, -1].norm(dim=-1).median())
        embedding = torch.randn(kb.n_entities, cfg.d_model, generator=generator)
        model.W_E[kb.entity0 : kb.entity0 + kb.n_entities] = (
            settings.embed_scale * typical * embedding / embedding.norm(dim=-1, keepdim=True)
        )
        entity = torch.arange(kb.n_entities)
        recall_tokens, answers = recall_batch(kb, entity, torch.zeros_like(entity))
        x_recall = _mlp_input(model, layer, recall_tokens)
        x_other = torch.cat([_mlp_input(model, layer, problems), _mlp_input(model, layer, lookups)])
        # Neuron e reads the direction of its entity's input (centred on the mean input) and is scaled so that
        # its entity gives +margin and the highest of every other input (other entities, in-context problems) -margin.
        centre = torch.cat([x_recall, x_other]).mean(0)
        directions = x_recall - centre
        directions = directions / directions.norm(dim=-1, keepdim=True)
        own = (directions * (x_recall - centre)).sum(-1)  # [n_entities]
        others = torch.cat([x_recall, x_other]) - centre
        scores = others @ directions.T  # [rows, n_entities]
        scores[entity, entity] = float("-inf")
        highest_other = scores.max(0).values
        if (own <= highest_other).any():
            raise InterpError(
                f"plant_facts: entity inputs are not separable at the fact layer (seed {seed}); raise PlantedSettings.embed_scale."
            )
        gain = 2 * settings.margin / (own - highest_other)
        mlp = model.blocks[layer].mlp
        mlp.W_in.zero_(), mlp.b_in.fill_(-10.0), mlp.W_out.zero_(), mlp.b_out.zero_()
        mlp.W_in[:, : kb.n_entities] = (directions * gain[:, None]).T
        mlp.b_in[: kb.n_entities] = settings.margin - gain * (own + (directions * centre).sum(-1))
        values = torch.arange(kb.value0, kb.value0 + kb.n_values)
        w_u = model.W_U
        if cfg.normalization_type == "LN" and hasattr(model.ln_final, "w"):
            w_u = model.ln_final.w[:, None] * w_u
        value_directions = w_u[:, values] - w_u[:, values].mean(1, keepdim=True)  # [d_model, n_values]
        write = value_directions[:, answers - kb.value0].T  # [n_entities, d_model]
        mlp.W_out[: kb.n_entities] = settings.out_scale * typical * write / write.norm(dim=-1, keepdim=True)
        logits = model(recall_tokens)[:, -1]
    candidates = torch.zeros(len(answers), cfg.d_vocab, dtype=torch.bool)
    candidates[:, values] = True
    accuracy = float(correct_by_distractors(logits, answers, candidates).float().mean())
    if accuracy < 1.0:
        raise InterpError(
            f"plant_facts: the planted model recalls only {accuracy:.2f} of the facts; raise PlantedSettings.out_scale or margin."
        )
    return model


def run_control(
    reasoner: HookedTransformer, settings: PlantedSettings, seeds: list[int], *, shuffled: bool, progress: bool = False
) -> pd.DataFrame:
    """One row per seed: the planted model's held-out verdict (headline method) with task labels true (positive control) or shuffled (negative)."""
    rows = []
    iterator = seeds
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(seeds, desc="shuffled control" if shuffled else "planted control")
    for seed in iterator:
        kb = settings.kb(seed)
        model = plant_facts(reasoner, kb, settings, seed)
        prompts = prompt_sets(kb, settings.n_reasoning_items, seed=seed + 1000)
        analysis = replace(settings.analysis, seed=seed, shuffle_labels=shuffled)
        tables, metrics = analyse(model, prompts, analysis, model_name=f"planted model (seed {seed})")
        rows.append(
            dict(
                seed=seed,
                shuffled=shuffled,
                double_dissociation=metrics["double_dissociation"],
                recall_set=", ".join(metrics["recall_set"]),
                reasoning_set=", ".join(metrics["reasoning_set"]),
                **{
                    k: metrics[k]
                    for k in (
                        "recall_set_own_drop",
                        "recall_set_cross_drop",
                        "recall_set_p_own",
                        "recall_set_p_selectivity",
                        "reasoning_set_own_drop",
                        "reasoning_set_cross_drop",
                        "reasoning_set_p_own",
                        "reasoning_set_p_selectivity",
                        "interaction",
                        "p_resolution",
                        "n_recall_items",
                        "n_reasoning_items",
                    )
                },
                interaction_ci95_low=metrics["interaction_ci95"][0],
                interaction_ci95_high=metrics["interaction_ci95"][1],
            )
        )
    return pd.DataFrame(rows)


def detection_rate(rows: pd.DataFrame) -> tuple[float, list[float]]:
    """Share of seeds declaring the dissociation and its 95% Clopper-Pearson interval."""
    from scipy import stats

    k, n = int(rows["double_dissociation"].sum()), len(rows)
    interval = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return k / n, [float(interval.low), float(interval.high)]


def control_metrics(planted: pd.DataFrame, shuffled: pd.DataFrame) -> dict:
    p_rate, p_ci = detection_rate(planted)
    s_rate, s_ci = detection_rate(shuffled)
    return dict(
        planted_detection_rate=p_rate,
        planted_detection_ci95=p_ci,
        planted_n_seeds=len(planted),
        planted_detections=int(planted["double_dissociation"].sum()),
        shuffled_detection_rate=s_rate,
        shuffled_detection_ci95=s_ci,
        shuffled_n_seeds=len(shuffled),
        shuffled_detections=int(shuffled["double_dissociation"].sum()),
        planted_median_p_own=[
            float(np.median(planted["recall_set_p_own"])),
            float(np.median(planted["reasoning_set_p_own"])),
        ],
    )
