"""Recall vs reasoning: tasks, scoring, the set rule, ablation, the verdict, the screen, the synthetic setting.

Fast checks run on a random synthetic-vocabulary model; the bundled SmolLM2 checks the real prompts.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from circuits.recall_reasoning.dissociation import ablated_scores, dissociation, random_sets

from circuits.recall_reasoning.verdicts import mean_ci95, verdicts
from circuits.recall_reasoning.localisation import choose_sets, chosen_sites, localise, patch_units, units
from circuits.recall_reasoning.screen import cohens_d, compare, last_token_features, length_matched, unit_labels
from circuits.recall_reasoning.synthetic import (
    ANSWER_POSITIONS,
    LOOKUP,
    QUERY,
    SEQ_LEN,
    KnowledgeBase,
    SyntheticTraining,
    build_model,
    prompt_sets,
    reasoning_batch,
    recall_batch,
    training_batch,
)
from circuits.recall_reasoning.tasks import (
    build_prompts,
    correct_by_distractors,
    correct_by_first_token,
    families,
    first_token,
    keep_correct,
)
from interp.errors import InterpError
from interp.sites import Site
from tests.circuits.conftest import KB

# --- tasks and scoring ---------------------------------------------------------------------------


def test_scoring_matches_hand_loops():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 30, generator=generator)
    answers = torch.randint(30, (12,), generator=generator)
    candidates = torch.rand(12, 30, generator=generator) < 0.3
    candidates[torch.arange(12), answers] = True
    by_distractor = correct_by_distractors(logits, answers, candidates)
    for i in range(12):
        others = [logits[i, j] for j in range(30) if candidates[i, j] and j != answers[i]]
        assert bool(by_distractor[i]) == all(logits[i, answers[i]] > o for o in others)
        assert bool(correct_by_first_token(logits, answers)[i]) == (int(torch.argmax(logits[i])) == int(answers[i]))


def test_real_prompts_pair_same_length_with_a_different_answer(model):
    prompts, unpaired = build_prompts(model, "reasoning", ["continent", "opposite"], max_entities=8)
    assert len(prompts) + unpaired == 8 * 2 * 2  # 8 entities x 2 templates x 2 families
    for i, row in prompts.items.iterrows():
        assert len(prompts.tokens[i]) == len(prompts.corrupted[i]) == row["n_tokens"]
        assert torch.equal(prompts.tokens[i], model.to_tokens(row["prompt"])[0])
        assert int(prompts.answer_ids[i]) == int(model.to_tokens(" " + row["answer"], prepend_bos=False)[0, 0])
        assert int(prompts.answer_ids[i]) != int(prompts.wrong_ids[i])
        assert prompts.candidate_ids[i, prompts.answer_ids[i]] and prompts.candidate_ids[i, prompts.wrong_ids[i]]
        assert row["answer"] in row["prompt"]  # reasoning gives the facts in context


def test_keep_correct_drops_and_counts_wrong_items(model):
    prompts, _ = build_prompts(model, "recall", ["capital"], max_entities=10)
    kept, scores = keep_correct(model, prompts)
    assert len(kept) == int(scores["correct_distractor"].sum()) and len(scores) == len(prompts)
    logits = model(model.to_tokens("The capital of France is"))[0, -1]
    assert int(logits.argmax()) == first_token(model, "Paris")  # the model knows it, so the item must be kept
    assert "The capital of France is" in kept.items["prompt"].tolist()


def test_length_matched_recall_prompts_take_the_reasoning_lengths(model):
    recall, _ = build_prompts(model, "recall", ["opposite"], max_entities=6)
    reasoning, _ = build_prompts(model, "reasoning", ["opposite"], max_entities=6)
    matched = length_matched(model, recall, reasoning)
    assert sorted(len(t) for t in matched.tokens) == sorted(
        np.array(sorted(len(t) for t in reasoning.tokens))[
            np.linspace(0, len(reasoning) - 1, len(recall)).round().astype(int)
        ]
    )
    for original, padded in zip(recall.tokens, matched.tokens):
        assert torch.equal(padded[-len(original) :], original)  # the recall prompt itself ends the padded prompt


def test_bad_task_inputs_are_named(model):
    with pytest.raises(InterpError, match="capitol.*capital"):
        families(["capitol"])
    with pytest.raises(InterpError, match="task='recal'"):
        build_prompts(model, "recal")


# --- the synthetic setting ---------------------------------------------------------------------


def test_synthetic_answers_compose_the_facts_in_context():
    generator = torch.Generator().manual_seed(0)
    tokens, answers = reasoning_batch(KB, 50, generator)
    for row, answer in zip(tokens.tolist(), answers.tolist()):
        facts = dict(zip(row[0:8:2], row[1:8:2]))  # head -> tail, every head appears once
        assert len(facts) == 4 and row[8] == QUERY
        assert facts[facts[row[9]]] == answer  # x -> y -> v
        assert KB.value0 <= answer < KB.value0 + KB.n_values
    lookups, tails = reasoning_batch(KB, 50, generator, hops=1)
    for row, tail in zip(lookups.tolist(), tails.tolist()):
        assert row[8] == LOOKUP and dict(zip(row[0:8:2], row[1:8:2]))[row[9]] == tail
    recall_tokens, recall_answers = recall_batch(KB, torch.tensor([3, 5]), torch.tensor([1, 0]))
    assert recall_tokens.shape == (2, SEQ_LEN) and recall_answers.tolist() == [
        int(KB.facts()[3, 1]),
        int(KB.facts()[5, 0]),
    ]
    assert recall_tokens[0, -3:].tolist() == [KB.relation0 + 1, QUERY, KB.entity0 + 3]


def test_training_sequences_answer_every_query_by_a_hand_lookup():
    tokens, answers, two_hop = training_batch(KB, 40, torch.Generator().manual_seed(2))
    assert tokens.shape == (40, 8 + 2 * 6) and two_hop.sum(1).tolist() == [2] * 40
    for row, row_answers, row_two_hop in zip(tokens.tolist(), answers.tolist(), two_hop.tolist()):
        facts = dict(zip(row[0:8:2], row[1:8:2]))
        for q, position in enumerate(ANSWER_POSITIONS.tolist()):
            name, query = row[position], row[position - 1]
            expected = facts[facts[name]] if query == QUERY else facts[name]
            assert row_answers[q] == expected and row_two_hop[q] == (query == QUERY)
        assert set(row[9::2]) == set(facts)  # every fact's head is asked about (x and w twice: 2-hop and lookup)


def test_synthetic_prompt_sets_have_distinct_corrupted_answers(synthetic_prompts):
    for task, prompts in synthetic_prompts.items():
        assert (prompts.answer_ids != prompts.wrong_ids).all()
        assert all(len(c) == SEQ_LEN for c in prompts.corrupted)
    assert len(synthetic_prompts["recall"]) == KB.n_entities * KB.n_relations
    with pytest.raises(InterpError, match="KnowledgeBase"):
        KnowledgeBase(n_values=1)


# --- localisation ------------------------------------------------------------------------------


def test_patch_units_matches_a_hand_patch(synthetic_model, synthetic_prompts):
    prompts = synthetic_prompts["reasoning"]
    df = patch_units(synthetic_model, prompts, [Site(1, "z", head=1), Site(0, "mlp_out")])
    clean, corrupted = torch.stack(prompts.tokens), torch.stack(prompts.corrupted)
    _, cache = synthetic_model.run_with_cache(clean)

    def logit_diff(hooks):
        logits = synthetic_model.run_with_hooks(corrupted, fwd_hooks=hooks)[:, -1]
        return (
            (logits.gather(1, prompts.answer_ids[:, None]) - logits.gather(1, prompts.wrong_ids[:, None]))
            .mean()
            .detach()
        )

    def patch_head(act, hook):
        act[:, :, 1] = cache[hook.name][:, :, 1]
        return act

    clean_logits = synthetic_model(clean)[:, -1]
    clean_diff = (
        (clean_logits.gather(1, prompts.answer_ids[:, None]) - clean_logits.gather(1, prompts.wrong_ids[:, None]))
        .mean()
        .detach()
    )
    corrupted_diff = logit_diff([])
    head = (logit_diff([("blocks.1.attn.hook_z", patch_head)]) - corrupted_diff) / (clean_diff - corrupted_diff)
    mlp = (logit_diff([("blocks.0.hook_mlp_out", lambda act, hook: cache[hook.name])]) - corrupted_diff) / (
        clean_diff - corrupted_diff
    )
    assert df["restoration"].tolist() == pytest.approx([float(head), float(mlp)], abs=1e-4)
    assert df["unit"].tolist() == ["L1H1", "L0MLP"]


def test_choose_sets_follows_the_documented_rule():
    effects = pd.DataFrame(
        dict(
            unit=["a", "b", "c", "d", "e"] * 2,
            kind="head",
            layer=[0, 0, 1, 1, 2] * 2,
            head=[0, 1, 0, 1, 0] * 2,
            task=["recall"] * 5 + ["reasoning"] * 5,
            restoration=[0.50, 0.30, 0.01, 0.20, 0.40] + [0.10, 0.00, 0.30, 0.25, 0.40],
        )
    )
    choice = choose_sets(effects, set_size=2, min_restoration=0.05).set_index("unit")
    # specificity_recall: a .40, b .30, c -.29, d -.05, e 0 -> recall {a, b}; reasoning: c (.29), d (.05); e is tied, so in neither
    assert choice["chosen_for"].to_dict() == {"a": "recall", "b": "recall", "c": "reasoning", "d": "reasoning", "e": ""}
    stricter = choose_sets(effects, set_size=2, min_restoration=0.26).set_index("unit")
    assert stricter["chosen_for"].to_dict() == {"a": "recall", "b": "recall", "c": "reasoning", "d": "", "e": ""}
    assert chosen_sites(stricter.reset_index(), "reasoning") == [Site(1, "z", head=0)]
    with pytest.raises(InterpError, match="set_size=0"):
        choose_sets(effects, set_size=0, min_restoration=0.0)


# --- dissociation ------------------------------------------------------------------------------


def test_zero_ablation_scores_match_a_hand_hook(synthetic_model, synthetic_prompts):
    prompts = synthetic_prompts["recall"]
    sites = [Site(0, "z", head=1), Site(1, "mlp_out")]
    scores = ablated_scores(synthetic_model, prompts, sites, "zero")

    def zero_head(act, hook):
        act[:, :, 1] = 0.0
        return act

    logits = synthetic_model.run_with_hooks(
        torch.stack(prompts.tokens),
        fwd_hooks=[
            ("blocks.0.attn.hook_z", zero_head),
            ("blocks.1.hook_mlp_out", lambda act, hook: torch.zeros_like(act)),
        ],
    )[:, -1]
    assert scores["correct_first_token"].tolist() == (logits.argmax(-1) == prompts.answer_ids).tolist()
    assert scores["answer_logprob"].to_numpy() == pytest.approx(
        logits.log_softmax(-1).gather(1, prompts.answer_ids[:, None])[:, 0].detach().numpy(), abs=1e-5
    )


def test_mean_ablation_uses_the_groups_own_prompts(synthetic_model, synthetic_prompts):
    prompts = synthetic_prompts["reasoning"]
    scores = ablated_scores(synthetic_model, prompts, [Site(1, "mlp_out")], "mean")
    reference = torch.cat([torch.stack(prompts.tokens), torch.stack(prompts.corrupted)])
    _, cache = synthetic_model.run_with_cache(reference, names_filter="blocks.1.hook_mlp_out")
    mean = cache["blocks.1.hook_mlp_out"].mean(0, keepdim=True)
    logits = synthetic_model.run_with_hooks(
        torch.stack(prompts.tokens), fwd_hooks=[("blocks.1.hook_mlp_out", lambda act, hook: mean.expand_as(act))]
    )[:, -1]
    assert scores["answer_logprob"].to_numpy() == pytest.approx(
        logits.log_softmax(-1).gather(1, prompts.answer_ids[:, None])[:, 0].detach().numpy(), abs=1e-5
    )


def test_random_sets_and_the_confidence_interval():
    pool = units(build_model(KB, SyntheticTraining(n_layers=2, d_model=32, n_heads=2, d_mlp=64)))
    assert len(pool) == 2 * 2 + 2
    sets = random_sets(pool, 3, 20, seed=4)
    assert len(sets) == 20 and all(len(set(s)) == 3 for s in sets) and sets == random_sets(pool, 3, 20, seed=4)
    values = np.random.default_rng(0).normal(size=25)
    mean, low, high = mean_ci95(values)
    assert (low, high) == pytest.approx(stats.t.interval(0.95, 24, loc=values.mean(), scale=stats.sem(values)))
    with pytest.raises(InterpError, match="size=9"):
        random_sets(pool, 9, 1, seed=0)


def test_verdict_rule_on_constructed_tables():
    def table(recall_set_drops, reasoning_set_drops):
        rows = [dict(method="zero", ablated="none", set_size=0, task=t, drop=0.0) for t in ("recall", "reasoning")]
        rows += [
            dict(method="zero", ablated="recall_set", set_size=2, task=t, drop=d)
            for t, d in zip(("recall", "reasoning"), recall_set_drops)
        ]
        rows += [
            dict(method="zero", ablated="reasoning_set", set_size=2, task=t, drop=d)
            for t, d in zip(("recall", "reasoning"), reasoning_set_drops)
        ]
        rows += [
            dict(method="zero", ablated="random_2", set_size=2, task=t, drop=0.01 * (i % 5))
            for i in range(20)
            for t in ("recall", "reasoning")
        ]
        return pd.DataFrame(rows)

    double = verdicts(table((0.5, 0.02), (0.0, 0.6)), 2, 2).iloc[0]
    assert double["double_dissociation"] and double["p_recall_set"] == pytest.approx(1 / 21)
    assert double["random_recall_drop_q975"] == pytest.approx(np.quantile([0.01 * (i % 5) for i in range(20)], 0.975))
    crossed = verdicts(table((0.5, 0.3), (0.0, 0.6)), 2, 2).iloc[0]  # the recall set also breaks reasoning
    assert crossed["recall_set_specific"] and not crossed["no_cross_effect"] and not crossed["double_dissociation"]
    empty = verdicts(table((0.5, 0.02), (0.0, 0.6)), 2, 0).iloc[0]
    assert not empty["reasoning_set_specific"] and not empty["double_dissociation"]


def test_dissociation_table_and_errors(synthetic_model, synthetic_prompts):
    recall_set, reasoning_set = [Site(0, "z", head=0)], [Site(1, "z", head=1)]
    pool = units(synthetic_model)
    table = dissociation(
        synthetic_model, synthetic_prompts, recall_set, reasoning_set, pool, methods=("zero", "resample"), n_random=3
    )
    assert set(table["ablated"]) == {"none", "recall_set", "reasoning_set", "random_1"}
    assert len(table) == 2 * 2 * (1 + 2 + 3)  # methods x tasks x (none, two sets, three random sets)
    base = table[table["ablated"] == "none"].set_index(["method", "task"])["accuracy"]
    for row in table.itertuples():
        assert row.drop == pytest.approx(base[(row.method, row.task)] - row.accuracy)
    with pytest.raises(InterpError, match="'ramdom'"):
        dissociation(synthetic_model, synthetic_prompts, recall_set, reasoning_set, pool, methods=("ramdom",))
    with pytest.raises(InterpError, match="n_random=0"):
        dissociation(synthetic_model, synthetic_prompts, recall_set, reasoning_set, pool, n_random=0)


# --- the screen ---------------------------------------------------------------------------------


def test_screen_statistics_match_scipy_and_hand_formulas():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(15, 6)), rng.normal(loc=[0, 0, 0, 2, 2, 2], size=(12, 6))
    d = cohens_d(a, b)
    for j in range(6):
        pooled = np.sqrt(((14 * a[:, j].var(ddof=1)) + 11 * b[:, j].var(ddof=1)) / 25)
        assert d[j] == pytest.approx((b[:, j].mean() - a[:, j].mean()) / pooled)

    class Cfg:  # unit_labels reads only the layer / head counts
        n_layers, n_heads, d_mlp = 6, 1, 1

    class Model:
        cfg = Cfg

    df = compare(Model, {"resid_norm": torch.tensor(a)}, {"resid_norm": torch.tensor(b)}, alpha=0.05, min_d=0.8)
    p = np.array([stats.mannwhitneyu(a[:, j], b[:, j]).pvalue for j in range(6)])
    order = np.argsort(p)
    q_hand = np.minimum.accumulate((p[order] * 6 / np.arange(1, 7))[::-1])[::-1]
    q = np.empty(6)
    q[order] = np.minimum(q_hand, 1)
    assert df["p"].to_numpy() == pytest.approx(p) and df["q"].to_numpy() == pytest.approx(q)
    assert df["specialised"].tolist() == list((q < 0.05) & (np.abs(d) >= 0.8))
    assert df["specialised"].iloc[3:].all()


def test_last_token_features_match_the_cache(synthetic_model, synthetic_prompts):
    prompts = synthetic_prompts["reasoning"]
    features = last_token_features(synthetic_model, prompts)
    _, cache = synthetic_model.run_with_cache(torch.stack(prompts.tokens))
    pattern = cache["pattern", 1][:, 0, -1]  # layer 1, head 0, last query row
    assert features["attn_entropy"][:, 1 * 2 + 0] == pytest.approx(
        (-(pattern * pattern.log()).sum(-1)).detach(), abs=1e-5
    )
    assert features["attn_max"][:, 2] == pytest.approx(pattern.max(-1).values.detach(), abs=1e-6)
    assert features["resid_norm"][:, 0] == pytest.approx(cache["resid_post", 0][:, -1].norm(dim=-1).detach(), abs=1e-4)
    assert features["mlp_abs"][:, 64 + 7] == pytest.approx(cache["post", 1][:, -1, 7].abs().detach(), abs=1e-6)
    assert unit_labels(synthetic_model, "mlp_abs").iloc[64 + 7][["layer", "neuron"]].tolist() == [1, 7]


def test_localise_with_candidates_patches_the_top_atp_units_exactly(synthetic_model, synthetic_prompts):
    pool = units(synthetic_model)
    effects = localise(synthetic_model, synthetic_prompts, pool, exact_candidates=2)
    exact = effects.dropna(subset=["restoration"])
    candidates = set()
    for task in ("recall", "reasoning"):
        rows = effects[effects["task"] == task]
        candidates |= set(rows.loc[rows["restoration_atp"].abs().nlargest(2).index, "unit"])
    assert set(exact["unit"]) == candidates and len(exact) == 2 * len(candidates)
    reference = patch_units(synthetic_model, synthetic_prompts["recall"], pool).set_index("unit")["restoration"]
    for row in exact[exact["task"] == "recall"].itertuples():
        assert row.restoration == pytest.approx(reference[row.unit], abs=1e-5)


@pytest.mark.slow
def test_quick_run_writes_the_headline_metrics(tmp_path):
    from dataclasses import replace

    from experiments.recall_reasoning import RecallReasoningConfig, run
    from interp.results import ResultsDir

    config = replace(RecallReasoningConfig.quick(), png=False)
    metrics = ResultsDir.open(run(config, tmp_path / "run")).metrics()
    keys = [
        "n_recall_items",
        "n_reasoning_items",
        "recall_acc_base",
        "reasoning_acc_base",
        "recall_acc_after_recall_ablation",
        "reasoning_acc_after_recall_ablation",
        "recall_acc_after_reasoning_ablation",
        "reasoning_acc_after_reasoning_ablation",
        "random_recall_drop_mean",
        "random_recall_drop_ci95",
        "random_reasoning_drop_mean",
        "random_reasoning_drop_ci95",
        "double_dissociation",
    ]
    for scope in (metrics, metrics["synthetic"]):
        assert all(key in scope for key in keys)
        assert scope["recall_acc_base"] == 1.0 and scope["reasoning_acc_base"] == 1.0  # only correct items are kept
        assert isinstance(scope["double_dissociation"], bool)
        n_random = min(scope["recall_set_n_random"], scope["reasoning_set_n_random"])
        assert n_random >= 20 and scope["p_resolution"] == pytest.approx(
            1 / (1 + n_random)
        )  # quick: at least 20 random sets per chosen set
        assert len(scope["interaction_ci95"]) == 2
        assert set(scope["by_method"]) == {"zero", "mean", "resample"}
    assert metrics["control_seeds"] == 2
    for key in ("planted_detection_rate", "shuffled_detection_rate"):  # shares of the 2 control seeds: 0, 1/2 or 1
        assert metrics[key] in (0.0, 0.5, 1.0), key
    assert (tmp_path / "run" / "dashboard.html").is_file()


@pytest.mark.parametrize("method", ["mean", "resample"])
def test_cached_reference_ablation_equals_interp_interventions(synthetic_model, synthetic_prompts, method):
    prompts = synthetic_prompts["reasoning"]
    sites = [Site(0, "z", head=1), Site(1, "mlp_out")]
    cache = {}
    cached = ablated_scores(synthetic_model, prompts, sites, method, seed=3, reference_cache=cache)
    again = ablated_scores(
        synthetic_model, prompts, sites, method, seed=3, reference_cache=cache
    )  # reads the filled cache
    plain = ablated_scores(synthetic_model, prompts, sites, method, seed=3)  # interp.interventions.ablation_hooks
    assert len(cache) == 1
    assert cached["answer_logprob"].to_numpy() == pytest.approx(plain["answer_logprob"].to_numpy(), abs=1e-5)
    assert again["answer_logprob"].to_numpy() == pytest.approx(plain["answer_logprob"].to_numpy(), abs=1e-5)


def test_analyse_runs_the_whole_pipeline_on_a_small_model():
    from circuits.recall_reasoning.pipeline import AnalysisSettings, analyse

    kb = KnowledgeBase(
        n_entities=32, n_relations=2, n_values=6, n_fresh=12, seed=3
    )  # an untrained model gets about one in six right; the screen needs two per task
    synthetic_model = build_model(kb, SyntheticTraining(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seed=1)).eval()
    synthetic_prompts = prompt_sets(kb, 60, seed=7)
    settings = AnalysisSettings(
        set_size=1,
        min_restoration=-1.0,
        n_random=20,
        control_length=False,
        position_layers=(0, 1),
        neuron_set_size=0,
        min_reference_prompts=2,
    )  # an untrained model keeps few items: small reference cells
    tables, metrics = analyse(synthetic_model, synthetic_prompts, settings, model_name="tiny")
    items = tables["items"]
    assert metrics["n_recall_correct"] == int(items[items["task"] == "recall"]["correct_distractor"].sum())
    split = tables["split"]  # held out: the evaluated items are n_recall_items, none of their entities chose the sets
    assert (
        metrics["n_recall_items"]
        == metrics["n_recall_evaluation"]
        == int(((split["half"] == "evaluation") & (split["task"] == "recall")).sum())
    )
    assert (
        metrics["n_recall_localisation"] + metrics["n_recall_evaluation"] + metrics["n_recall_no_reference"]
        <= metrics["n_recall_correct"]
    )
    assert not set(split[split["half"] == "evaluation"]["entity"]) & set(
        split[split["half"] == "localisation"]["entity"]
    )
    assert metrics["recall_acc_base"] == 1.0 and metrics["reasoning_acc_base"] == 1.0
    assert set(metrics["by_method"]) == {"zero", "mean", "resample"} and isinstance(
        metrics["double_dissociation"], bool
    )
    assert (
        metrics["random_recall_drop_ci95"][0]
        <= metrics["random_recall_drop_mean"]
        <= metrics["random_recall_drop_ci95"][1]
    )
    assert metrics["verdict"].startswith("tiny ")
    assert {
        "unit_patching",
        "sets",
        "position_patching",
        "dissociation",
        "verdicts",
        "screen",
        "screen_summary",
    } <= set(tables)


def test_learning_rate_schedule_warms_up_holds_then_decays():
    from circuits.recall_reasoning.synthetic import warmup_stable_decay

    factors = [warmup_stable_decay(step, 100) for step in range(100)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert set(factors[5:80]) == {1.0}
    assert factors[80:] == pytest.approx([1.0 - 0.9 * k / 20 for k in range(20)])


@pytest.mark.slow
def test_the_synthetic_model_learns_recall_and_two_hop_reasoning():
    from circuits.recall_reasoning.synthetic import evaluate, train

    model, curve = train(KnowledgeBase(), SyntheticTraining(steps=1000))  # the quick run's setting
    held_out = evaluate(model, KnowledgeBase())
    assert held_out["recall_acc"] >= 0.9 and held_out["reasoning_acc"] >= 0.9 and held_out["lookup_acc"] >= 0.9
    assert curve["reasoning_acc"].iloc[0] < 0.5  # it starts at chance


def test_synthetic_reasoning_partner_asks_the_other_chain_of_the_same_facts(synthetic_prompts):
    prompts = synthetic_prompts["reasoning"]
    for clean, corrupted, answer, wrong in zip(
        prompts.tokens, prompts.corrupted, prompts.answer_ids.tolist(), prompts.wrong_ids.tolist()
    ):
        assert (
            torch.equal(clean[:-1], corrupted[:-1]) and clean[-1] != corrupted[-1]
        )  # same facts and query token, another name
        facts = dict(zip(clean[0:8:2].tolist(), clean[1:8:2].tolist()))
        assert facts[facts[int(clean[-1])]] == answer and facts[facts[int(corrupted[-1])]] == wrong
