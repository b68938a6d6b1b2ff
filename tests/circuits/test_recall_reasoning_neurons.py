"""Recall vs reasoning at the level of MLP neurons: the unit pool, exact patching, the set rule, ablation, the pipeline's neuron sets."""

import pandas as pd
import pytest
import torch

from circuits.recall_reasoning.dissociation import ablated_scores
from circuits.recall_reasoning.localisation import choose_sets, chosen_sites, localise, patch_units, unit_name, units
from circuits.recall_reasoning.synthetic import KnowledgeBase, SyntheticTraining, build_model, prompt_sets
from interp.sites import Site

KB = KnowledgeBase(n_entities=8, n_relations=2, n_values=6, n_fresh=12, seed=3)


@pytest.fixture(scope="module")
def small_model():
    return build_model(KB, SyntheticTraining(n_layers=2, d_model=32, n_heads=2, d_mlp=16, seed=2)).eval()


@pytest.fixture(scope="module")
def small_prompts():
    return prompt_sets(KB, 10, seed=5)


def logit_diff(model, tokens, prompts, hooks):
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1]
    return float((logits.gather(1, prompts.answer_ids[:, None]) - logits.gather(1, prompts.wrong_ids[:, None])).mean())


def test_neuron_pool_and_names(small_model):
    pool = units(small_model, ("neuron",))
    assert len(pool) == 2 * 16 and pool[17] == Site(1, "mlp_post", neuron=1)
    assert unit_name(pool[17]) == "L1N1"
    assert len(units(small_model, ("head", "mlp", "neuron"))) == 2 * 2 + 2 + 2 * 16


def test_neuron_patching_matches_a_hand_patch(small_model, small_prompts):
    prompts = small_prompts["recall"]
    clean, corrupted = torch.stack(prompts.tokens), torch.stack(prompts.corrupted)
    _, cache = small_model.run_with_cache(clean, names_filter="blocks.0.mlp.hook_post")

    def patch_neuron(act, hook):
        act[:, :, 5] = cache[hook.name][:, :, 5]
        return act

    with torch.no_grad():
        clean_diff, corrupted_diff = (
            logit_diff(small_model, clean, prompts, []),
            logit_diff(small_model, corrupted, prompts, []),
        )
        patched = logit_diff(small_model, corrupted, prompts, [("blocks.0.mlp.hook_post", patch_neuron)])
    df = patch_units(small_model, prompts, [Site(0, "mlp_post", neuron=5)])
    assert df["restoration"].iloc[0] == pytest.approx(
        (patched - corrupted_diff) / (clean_diff - corrupted_diff), abs=1e-4
    )
    assert df["kind"].tolist() == ["neuron"] and df["unit"].tolist() == ["L0N5"]


def test_neuron_localisation_patches_the_top_atp_neurons_and_the_rule_returns_neuron_sites(small_model, small_prompts):
    pool = units(small_model, ("neuron",))
    effects = localise(small_model, small_prompts, pool, exact_candidates=3)
    exact = effects.dropna(subset=["restoration"])
    assert 3 <= exact["unit"].nunique() <= 6 and set(exact["kind"]) == {"neuron"}
    reference = patch_units(small_model, small_prompts["reasoning"], pool).set_index("unit")["restoration"]
    for row in exact[exact["task"] == "reasoning"].itertuples():
        assert row.restoration == pytest.approx(reference[row.unit], abs=1e-5)
    choice = choose_sets(effects, set_size=2, min_restoration=-10.0)
    chosen = chosen_sites(choice, "recall") + chosen_sites(choice, "reasoning")
    assert chosen and all(s.component == "mlp_post" and s.neuron is not None for s in chosen)
    for site in chosen:
        row = choice[choice["unit"] == unit_name(site)].iloc[0]
        assert (row["layer"], row["neuron"]) == (site.layer, site.neuron) and pd.isna(row["head"])


def test_neuron_mean_ablation_matches_a_hand_hook_and_the_reference_cache_grows(small_model, small_prompts):
    prompts = small_prompts["reasoning"]
    sites = [Site(1, "mlp_post", neuron=3), Site(1, "mlp_post", neuron=9)]
    reference_cache = {}
    scores = ablated_scores(small_model, prompts, sites, "mean", reference_cache=reference_cache)
    reference = torch.cat([torch.stack(prompts.tokens), torch.stack(prompts.corrupted)])
    _, cache = small_model.run_with_cache(reference, names_filter="blocks.1.mlp.hook_post")
    mean = cache["blocks.1.mlp.hook_post"][:, :, [3, 9]].mean(0)  # [pos, 2]

    def hook(act, hook):
        act[:, :, [3, 9]] = mean
        return act

    with torch.no_grad():
        logits = small_model.run_with_hooks(torch.stack(prompts.tokens), fwd_hooks=[("blocks.1.mlp.hook_post", hook)])[
            :, -1
        ]
    assert scores["answer_logprob"].to_numpy() == pytest.approx(
        logits.log_softmax(-1).gather(1, prompts.answer_ids[:, None])[:, 0].numpy(), abs=1e-5
    )
    (group,) = reference_cache.values()
    assert set(group) == {
        "blocks.0.mlp.hook_post",
        "blocks.1.mlp.hook_post",
    }  # every layer of the kind asked for, at once
    ablated_scores(small_model, prompts, [Site(0, "z", head=1)], "mean", reference_cache=reference_cache)
    assert set(group) == {
        "blocks.0.mlp.hook_post",
        "blocks.1.mlp.hook_post",
        "blocks.0.attn.hook_z",
        "blocks.1.attn.hook_z",
    }  # a new kind is added, the old kept


def test_the_pipeline_reports_neuron_sets_beside_the_unit_sets(small_model):
    from circuits.recall_reasoning.pipeline import AnalysisSettings, analyse

    prompts = prompt_sets(KB, 60, seed=7)
    settings = AnalysisSettings(
        set_size=1,
        min_restoration=-1.0,
        neuron_set_size=2,
        neuron_candidates=4,
        neuron_min_restoration=-1.0,
        n_random=20,
        methods=("zero", "mean"),
        neuron_methods=("mean",),
        screen=False,
        position_layers=(),
        template_reference=False,
    )  # few kept items: one reference per length
    tables, metrics = analyse(small_model, prompts, settings, model_name="tiny")
    assert {"neuron_unit_patching", "neuron_sets", "neuron_dissociation", "neuron_verdicts"} <= set(tables)
    neurons = metrics["neurons"]
    assert (
        set(neurons["by_method"]) == {"mean"}
        and set(metrics["by_method"]) == {"zero", "mean"}
        and isinstance(neurons["double_dissociation"], bool)
    )
    assert len(neurons["recall_set"]) <= 2 and all(
        name.startswith("L") and "N" in name for name in neurons["recall_set"] + neurons["reasoning_set"]
    )
    randoms = tables["neuron_dissociation"]
    randoms = randoms[randoms["ablated"].str.startswith("random")]
    assert set(randoms["set_size"]) <= {len(neurons["recall_set"]), len(neurons["reasoning_set"])}


def test_the_verdict_method_must_be_ablated():
    from circuits.recall_reasoning.pipeline import AnalysisSettings
    from interp.errors import InterpError

    with pytest.raises(InterpError, match=r"verdict_method='mean'.*neuron_methods=\('zero',\)"):
        AnalysisSettings(neuron_methods=("zero",))
    with pytest.raises(InterpError, match=r"verdict_method='zero'.*methods=\('mean',\)"):
        AnalysisSettings(methods=("mean",), verdict_method="zero")
