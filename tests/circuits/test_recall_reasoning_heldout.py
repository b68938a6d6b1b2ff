"""Recall vs reasoning, the held-out test: batched exact ablation, the entity split, matched random sets, the statistic, the controls, --model.

Each check compares against an independent computation (one forward per ablation through
interp.interventions, hand loops over items and sets) on small seeded models.
"""

import numpy as np
import pytest
import torch

from circuits.recall_reasoning.controls import (
    PlantedSettings,
    control_metrics,
    plant_facts,
    run_control,
    train_reasoner,
)
from circuits.recall_reasoning.dissociation import composition, evaluate_conditions, layer_band, matched_random_sets
from circuits.recall_reasoning.verdicts import empirical_p, held_out_verdict
from circuits.recall_reasoning.localisation import units
from circuits.recall_reasoning.synthetic import (
    KnowledgeBase,
    SyntheticTraining,
    build_model,
    prompt_sets,
    reasoning_batch,
    recall_batch,
)
from circuits.recall_reasoning.tasks import (
    FAMILIES,
    NO_COPY_FAMILIES,
    answer_in_prompt,
    build_prompts,
    references,
    shuffle_labels,
    split_by_entity,
)
from interp.errors import InterpError
from interp.interventions import Ablation, run_ablated
from interp.patching.ablate import ablated_last_logits
from interp.sites import Site

KB = KnowledgeBase(n_entities=12, n_relations=2, n_values=6, n_fresh=12, seed=3)


@pytest.fixture(scope="module")
def small_model():
    return build_model(KB, SyntheticTraining(n_layers=3, d_model=32, n_heads=2, d_mlp=64, seed=4)).eval()


@pytest.fixture(scope="module")
def small_prompts():
    return prompt_sets(KB, 24, seed=5)


# --- batched exact ablation ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_batched_ablation_equals_one_forward_per_ablation(small_model, small_prompts, method):
    tokens = torch.stack(small_prompts["reasoning"].tokens)
    reference = torch.stack(small_prompts["recall"].tokens)
    sets = [
        [Site(2, "z", head=1)],
        [Site(0, "mlp_out"), Site(1, "z", head=0)],
        [Site(1, "mlp_post", neuron=5), Site(2, "mlp_out")],
        [Site(0, "z", head=1)],
    ]
    ablations = [
        Ablation(tuple(s), method=method, reference=None if method == "zero" else reference, seed=11 + i)
        for i, s in enumerate(sets)
    ]
    batched = ablated_last_logits(
        small_model, tokens, ablations, memory_budget=1 << 16
    )  # a tiny budget: several chunks
    for i, ablation in enumerate(ablations):
        expected = run_ablated(small_model, tokens, ablation)[:, -1]
        assert batched[i] == pytest.approx(expected, abs=1e-4)


def test_evaluate_conditions_equals_the_per_set_loop(small_model, small_prompts):
    prompts = small_prompts["reasoning"]
    reference = {10: torch.stack(small_prompts["recall"].corrupted)}
    conditions = [[], [Site(1, "z", head=1), Site(2, "mlp_out")], [Site(0, "mlp_out")]]
    scores = evaluate_conditions(small_model, prompts, reference, conditions, "mean", seed=0)
    assert scores.shape == (3, len(prompts), 3)
    for i, sites in enumerate(conditions):
        if not sites:
            logits = small_model(torch.stack(prompts.tokens))[:, -1]
            expected = logits.log_softmax(-1).gather(1, prompts.answer_ids[:, None])[:, 0].detach().numpy()
        else:
            expected = run_ablated(
                small_model, torch.stack(prompts.tokens), Ablation(tuple(sites), "mean", reference=reference[10])
            )[:, -1]
            expected = expected.log_softmax(-1).gather(1, prompts.answer_ids[:, None])[:, 0].numpy()
        assert scores[i, :, 2] == pytest.approx(expected, abs=1e-4)
    with pytest.raises(InterpError, match="no reference prompts of 10 tokens"):
        evaluate_conditions(small_model, prompts, {}, conditions, "mean")


# --- the held-out split --------------------------------------------------------------------------


def test_entity_split_keeps_evaluated_prompts_out_of_localisation(model):
    prompts = {
        task: build_prompts(model, task, ["capital", "continent"], max_entities=12)[0]
        for task in ("recall", "reasoning")
    }
    localisation, evaluation = split_by_entity(prompts, seed=2)
    loc_entities = {e for p in localisation.values() for e in p.items["entity"]}
    eval_entities = {e for p in evaluation.values() for e in p.items["entity"]}
    assert loc_entities and eval_entities and not loc_entities & eval_entities
    evaluated = {prompt for p in evaluation.values() for prompt in p.items["prompt"]}
    for task, p in localisation.items():
        assert not set(p.items["corrupted_prompt"]) & evaluated  # patching never runs an evaluated prompt
        for i, row in p.items.iterrows():
            assert len(p.corrupted[i]) == len(p.tokens[i]) and int(p.wrong_ids[i]) != int(p.answer_ids[i])
            assert torch.equal(p.corrupted[i], model.to_tokens(row["corrupted_prompt"])[0])
        refs = references(p, evaluated)
        assert sum(len(r) for r in refs.values()) > 0
        for length, tokens in refs.items():
            texts = {
                model.to_string(row[1:]) if model.cfg.default_prepend_bos else model.to_string(row) for row in tokens
            }
            assert not texts & evaluated and all(tokens.shape[1] == length for _ in [0])
    assert split_by_entity(prompts, seed=2)[1]["recall"].items.equals(evaluation["recall"].items)  # seeded


def test_shuffled_labels_deal_the_same_items_at_random(small_prompts):
    shuffled = shuffle_labels(small_prompts, seed=3)
    assert {t: len(p) for t, p in shuffled.items()} == {t: len(p) for t, p in small_prompts.items()}
    pooled = sorted(p for q in small_prompts.values() for p in q.items["prompt"])
    assert sorted(p for q in shuffled.values() for p in q.items["prompt"]) == pooled
    mixed = shuffled["recall"].items["true_task"]
    assert set(mixed) == {"recall", "reasoning"} and (shuffled["recall"].items["task"] == "recall").all()


def test_construct_validity_families(model):
    prompts, _ = build_prompts(model, "reasoning", None, max_entities=10)
    in_prompt = answer_in_prompt(prompts)
    assert in_prompt.tolist() == [
        f" {row.answer} " in " " + row.prompt.replace(".", " ").replace(",", " ").replace("'", " ") + " "
        for row in prompts.items.itertuples()
    ]
    no_copy = prompts.items["family"].isin(NO_COPY_FAMILIES).to_numpy()
    assert no_copy.any() and not in_prompt[no_copy].any()  # these families never show the answer
    assert in_prompt[~no_copy].all()  # the paper's template always does
    assert set(NO_COPY_FAMILIES) <= set(FAMILIES)


# --- matched random sets and the statistic -------------------------------------------------------


def test_matched_random_sets_have_the_sets_composition_and_band():
    model = build_model(KB, SyntheticTraining(n_layers=6, d_model=32, n_heads=4, d_mlp=16))
    pool = units(model, ("head", "mlp", "neuron"))
    chosen = [Site(2, "z", head=1), Site(3, "z", head=0), Site(3, "mlp_out"), Site(2, "mlp_post", neuron=4)]
    # MLP layers in 2..3 outside the set: only L2 (1 < 2 x 1), so the band widens once to 1..4 (L1, L2, L4: 3 >= 2)
    assert layer_band(chosen, pool, 6) == (1, 4)
    sets, band = matched_random_sets(pool, chosen, 300, seed=0, n_layers=6)
    assert band == (1, 4) and len(sets) == 300
    for s in sets:
        assert composition(s) == composition(chosen) == {"head": 2, "mlp": 1, "neuron": 1}
        assert all(1 <= u.layer <= 4 for u in s) and not set(s) & set(chosen) and len(set(s)) == 4
    drawn_mlps = {u.layer for s in sets for u in s if u.component == "mlp_out"}
    assert drawn_mlps == {1, 2, 4}  # every eligible MLP layer is drawn
    assert matched_random_sets(pool, chosen, 300, seed=0, n_layers=6)[0] == sets
    with pytest.raises(InterpError, match="n_sets=0"):
        matched_random_sets(pool, chosen, 0, seed=0, n_layers=6)


def test_held_out_verdict_matches_hand_loops():
    rng = np.random.default_rng(0)
    n_random = {"recall_set": 30, "reasoning_set": 25}
    n_conditions = 3 + 30 + 25
    correct = {task: rng.random((n_conditions, n)) < 0.7 for task, n in (("recall", 20), ("reasoning", 16))}
    for c in correct.values():
        c[0] = True  # unablated: every evaluated item correct
    correct["recall"][1], correct["reasoning"][2] = True, True
    correct["recall"][1, :14] = False  # the recall set breaks recall
    correct["reasoning"][2, :12] = False  # the reasoning set breaks reasoning
    correct["reasoning"][1], correct["recall"][2] = True, True  # and nothing else
    out = held_out_verdict(correct, n_random, alpha=0.05, n_boot=500, seed=1)

    def acc(task, i):
        return sum(correct[task][i]) / len(correct[task][i])

    def drop(task, i):
        return acc(task, 0) - acc(task, i)

    random_recall = range(3, 33)
    own = [drop("recall", i) for i in random_recall]
    sel = [drop("recall", i) - drop("reasoning", i) for i in random_recall]
    assert out["recall_set_own_drop"] == pytest.approx(14 / 20) and out["recall_set_cross_drop"] == 0.0
    assert out["recall_set_p_own"] == pytest.approx((1 + sum(d >= 14 / 20 for d in own)) / 31)
    assert out["recall_set_p_selectivity"] == pytest.approx((1 + sum(s >= 14 / 20 for s in sel)) / 31)
    assert out["interaction"] == pytest.approx(14 / 20 + 12 / 16)
    assert out["p_resolution"] == pytest.approx(1 / 26)
    low, high = out["interaction_ci95"]
    # the item bootstrap against its normal approximation: interaction = mean over recall items of (c_reasoning_set - c_recall_set)
    # + mean over reasoning items of (c_recall_set - c_reasoning_set), so its SE is that of two independent means
    u_recall = correct["recall"][2].astype(float) - correct["recall"][1]
    u_reasoning = correct["reasoning"][1].astype(float) - correct["reasoning"][2]
    se = np.sqrt(u_recall.var() / 20 + u_reasoning.var() / 16)
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.2) and low > 0
    assert out["double_dissociation"] == (
        out["recall_set_p_own"] < 0.05
        and out["recall_set_p_selectivity"] < 0.05
        and out["reasoning_set_p_own"] < 0.05
        and out["reasoning_set_p_selectivity"] < 0.05
    )
    # the same drops without selectivity: the recall set breaks both tasks
    crossed = {task: c.copy() for task, c in correct.items()}
    crossed["reasoning"][1, :12] = False
    assert not held_out_verdict(crossed, n_random, n_boot=500, seed=1)["recall_set_specific"]
    masked = held_out_verdict(
        correct, n_random, n_boot=200, seed=1, masks={"recall": np.ones(20, bool), "reasoning": np.arange(16) >= 8}
    )
    assert masked["n_reasoning_eval"] == 8 and masked["reasoning_set_own_drop"] == pytest.approx(4 / 8)
    assert empirical_p(0.5, np.array([0.1, 0.5, 0.7])) == pytest.approx(3 / 4) and np.isnan(
        empirical_p(0.5, np.array([]))
    )


def test_bootstrap_interval_matches_a_numpy_loop():
    from circuits.recall_reasoning.verdicts import bootstrap_interaction

    rng = np.random.default_rng(3)
    correct = {"recall": rng.random((3, 15)) < 0.6, "reasoning": rng.random((3, 11)) < 0.6}
    draws = bootstrap_interaction(correct, 50, seed=9)
    loop_rng = np.random.default_rng(9)
    idx = {task: loop_rng.integers(0, c.shape[1], size=(50, c.shape[1])) for task, c in correct.items()}
    for b in range(50):
        r, q = correct["recall"][:, idx["recall"][b]].mean(1), correct["reasoning"][:, idx["reasoning"][b]].mean(1)
        expected = ((r[0] - r[1]) - (q[0] - q[1])) + ((q[0] - q[2]) - (r[0] - r[2]))
        assert draws[b] == pytest.approx(expected)


# --- the planted model and the controls ----------------------------------------------------------

PLANTED_SMALL = PlantedSettings(
    training=SyntheticTraining(n_layers=3, d_model=32, n_heads=4, d_mlp=64, steps=1), n_entities=16, n_fresh=12
)


def test_planting_stores_every_fact_in_one_mlp_and_leaves_problems_alone():
    reasoner, _ = train_reasoner(PLANTED_SMALL)  # one step: the property holds for any reasoner
    kb = PLANTED_SMALL.kb(5)
    planted = plant_facts(reasoner, kb, PLANTED_SMALL, seed=5)
    entity = torch.arange(kb.n_entities)
    tokens, answers = recall_batch(kb, entity, torch.zeros_like(entity))
    values = slice(kb.value0, kb.value0 + kb.n_values)
    with torch.no_grad():
        assert (planted(tokens)[:, -1, values].argmax(-1) + kb.value0 == answers).all()
    problems, _ = reasoning_batch(kb, 64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert planted(problems)[:, -1].numpy() == pytest.approx(
            reasoner(problems)[:, -1].numpy(), abs=1e-3
        )  # the fact neurons stay silent on in-context problems
    with torch.no_grad():
        zeroed = planted.run_with_hooks(
            tokens, fwd_hooks=[("blocks.2.hook_mlp_out", lambda act, hook: torch.zeros_like(act))]
        )[:, -1, values]
    assert (zeroed.argmax(-1) + kb.value0 != answers).float().mean() > 0.5  # without the fact MLP recall is at chance


@pytest.mark.slow  # ~5 min on the shared machine: trains the reasoner (~90 s), then 20 seeds of each control
def test_planted_circuit_is_detected_and_shuffled_labels_are_not():
    settings = PlantedSettings()
    reasoner, curve = train_reasoner(settings)
    assert curve["reasoning_acc"].iloc[-1] >= 0.95
    planted = run_control(reasoner, settings, list(range(20)), shuffled=False)
    shuffled = run_control(reasoner, settings, list(range(20)), shuffled=True)
    metrics = control_metrics(planted, shuffled)
    assert metrics["shuffled_detections"] <= 1, shuffled
    assert (planted["recall_set"] == "L2MLP").all()  # the planted MLP is what localisation finds for recall
    assert metrics["planted_detections"] >= 19, (
        planted
    )  # the bar: >= 19 of 20 seeds (template references; the shared reference gave 18/20)


def test_template_reference_cells_respect_the_minimum_and_the_cap(small_prompts):
    from circuits.recall_reasoning.pipeline import AnalysisSettings, held_out_halves, reference_halves

    full = held_out_halves(
        small_prompts, AnalysisSettings(seed=1, min_reference_prompts=2, max_reference_prompts=None)
    )[2]["recall"]
    capped_evaluation, capped = (lambda h: (h[1], h[2]["recall"]))(
        held_out_halves(small_prompts, AnalysisSettings(seed=1, min_reference_prompts=2, max_reference_prompts=4))
    )
    for key, tokens in full.items():
        rows = {tuple(r.tolist()) for r in capped[key]}
        assert len(rows) == min(4, len(tokens)) and rows <= {tuple(r.tolist()) for r in tokens}  # a sample of the cell
    sizes = {key: len(tokens) for key, tokens in full.items()}
    strict = held_out_halves(small_prompts, AnalysisSettings(seed=1, min_reference_prompts=7))
    assert set(strict[2]["recall"]) == {key for key, n in sizes.items() if n >= 7}
    for task, p in strict[1].items():  # every evaluated item keeps a cell of >= 7 prompts
        assert all((tpl, len(t)) in strict[2][task] for tpl, t in zip(p.items["template"], p.tokens))
    first, second = reference_halves(full, seed=0)
    for key, tokens in full.items():  # two disjoint halves that together are the cell
        a, b = ({tuple(r.tolist()) for r in half[key]} for half in (first, second))
        assert not a & b and a | b == {tuple(r.tolist()) for r in tokens} and abs(len(a) - len(b)) <= 1
    with pytest.raises(InterpError, match="min_reference_prompts"):
        AnalysisSettings(min_reference_prompts=8, max_reference_prompts=4)


def test_reference_pool_fills_every_bridge_and_keeps_evaluated_entities_out(model):
    from circuits.recall_reasoning.pipeline import AnalysisSettings, held_out_halves
    from circuits.recall_reasoning.tasks import free_bridges, keep_correct, reference_pool

    families = ["capital", "continent"]
    pool = reference_pool(model, families, max_entities=8)
    capital = FAMILIES["capital"]
    for template in capital.reasoning_templates:  # people are fresh names: every entity with every person
        rows = pool.items[pool.items["template"] == template]
        assert len(rows) == 8 * len(free_bridges(capital)) == 8 * 8
        expected = {
            template.format(entity=e, bridge=b, answer=a)
            for e, _, a in capital.facts[:8]
            for b in free_bridges(capital)
        }
        assert set(rows["prompt"]) == expected
    assert free_bridges(FAMILIES["continent"]) == ()  # a capital is its country's own bridge
    assert (
        pool.items[pool.items["template"] == FAMILIES["continent"].reasoning_templates[0]]["entity"].value_counts() == 1
    ).all()
    assert all(torch.equal(t, model.to_tokens(text)[0]) for t, text in zip(pool.tokens[:20], pool.items["prompt"][:20]))
    prompts = {task: build_prompts(model, task, families, max_entities=8)[0] for task in ("recall", "reasoning")}
    kept = {task: keep_correct(model, p)[0] for task, p in prompts.items()}
    settings = AnalysisSettings(seed=2, min_reference_prompts=2)
    _, evaluation, refs, _ = held_out_halves(kept, settings, pool)
    without = held_out_halves(kept, settings)[2]["recall"]
    evaluation_entities = {e for p in split_by_entity(kept, 2)[1].values() for e in p.items["entity"]}
    allowed = {tuple(t.tolist()) for t, e in zip(pool.tokens, pool.items["entity"]) if e not in evaluation_entities}
    allowed |= {
        tuple(t.tolist())
        for p in kept.values()
        for t, e in zip(p.tokens, p.items["entity"])
        if e not in evaluation_entities
    }
    evaluated = {tuple(t.tolist()) for p in evaluation.values() for t in p.tokens}
    used = {tuple(r.tolist()) for tokens in refs["recall"].values() for r in tokens}
    assert used <= allowed and not used & evaluated  # no evaluated prompt, no prompt about an evaluated entity
    assert sum(map(len, refs["recall"].values())) > sum(map(len, without.values()))  # the pool enlarges the cells


# --- any model ------------------------------------------------------------------------------------


def test_the_experiment_runs_on_a_tiny_random_model(tmp_path):
    from dataclasses import replace

    from circuits.recall_reasoning.pipeline import AnalysisSettings
    from experiments.recall_reasoning import RecallReasoningConfig, run
    from interp.results import ResultsDir

    spec = dict(
        n_layers=2,
        d_model=32,
        n_heads=2,
        d_head=16,
        d_mlp=64,
        d_vocab=49152,
        n_ctx=64,
        act_fn="gelu",
        normalization_type="LN",
        model_name="tiny-random",
    )
    settings = AnalysisSettings(
        set_size=2,
        min_restoration=-1.0,
        n_random=30,
        methods=("zero", "mean"),
        neuron_set_size=2,
        neuron_candidates=4,
        neuron_methods=("mean",),
        position_layers=(),
        screen=False,
        n_bootstrap=200,
    )
    config = replace(
        RecallReasoningConfig(),
        model=spec,
        families=("continent", "continent_no_copy"),
        max_entities=None,
        analysis_settings=settings,
        synthetic=False,
        controls=False,
        png=False,
    )
    metrics = ResultsDir.open(run(config, tmp_path / "tiny")).metrics()
    assert metrics["model"] == "tiny-random" and metrics["n_random"] == 30
    for key in (
        "recall_set_p_own",
        "recall_set_p_selectivity",
        "reasoning_set_p_own",
        "reasoning_set_p_selectivity",
        "p_resolution",
        "interaction_ci95",
        "double_dissociation",
        "reasoning_answer_in_prompt_fraction",
    ):
        assert (
            key in metrics and key in metrics["by_method"]["zero"]
            if key != "reasoning_answer_in_prompt_fraction"
            else key in metrics
        )
    assert metrics["p_resolution"] == pytest.approx(1 / 31)
    assert (tmp_path / "tiny" / "dashboard.html").is_file()


def test_both_tasks_share_one_reference_where_their_lengths_agree(small_prompts):
    from circuits.recall_reasoning.pipeline import AnalysisSettings, held_out_halves

    localisation, evaluation, refs, _ = held_out_halves(
        small_prompts, AnalysisSettings(seed=1, template_reference=False)
    )
    assert torch.equal(
        refs["recall"][10], refs["reasoning"][10]
    )  # every prompt has 10 tokens: the replacement values ignore the task label
    evaluated = {tuple(t.tolist()) for p in evaluation.values() for t in p.tokens}
    assert not {tuple(row.tolist()) for row in refs["recall"][10]} & evaluated
    own = held_out_halves(small_prompts, AnalysisSettings(seed=1, template_reference=False, shared_reference=False))[2]
    assert len(own["recall"][10]) + len(own["reasoning"][10]) == len(refs["recall"][10])
    recall_rows = {tuple(row.tolist()) for row in own["recall"][10]}
    assert recall_rows == {tuple(t.tolist()) for t in localisation["recall"].tokens} | {
        tuple(t.tolist()) for t in localisation["recall"].corrupted
    }


def test_template_references_take_each_items_own_template(small_model, small_prompts):
    from circuits.recall_reasoning.pipeline import AnalysisSettings, held_out_halves

    localisation, evaluation, refs, _ = held_out_halves(
        small_prompts, AnalysisSettings(seed=1, min_reference_prompts=2)
    )  # template references: the default
    assert set(refs["recall"]) == set(refs["reasoning"]) and all(isinstance(key, tuple) for key in refs["recall"])
    evaluation_entities = {e for p in split_by_entity(small_prompts, 1)[1].values() for e in p.items["entity"]}
    for (template, length), tokens in refs[
        "recall"
    ].items():  # every kept item of the template about a non-evaluated entity (the localisation side before sampling)
        expected = {
            tuple(t.tolist())
            for p in small_prompts.values()
            for t, tpl, e in zip(p.tokens, p.items["template"], p.items["entity"])
            if tpl == template and e not in evaluation_entities
        }
        assert {tuple(row.tolist()) for row in tokens} == expected and tokens.shape[1] == length
    prompts = evaluation["recall"]
    conditions = [[Site(1, "mlp_out")]]
    scores = evaluate_conditions(small_model, prompts, refs["recall"], conditions, "mean")
    for i, template in enumerate(prompts.items["template"]):  # one item at a time, its own template's mean
        expected = run_ablated(
            small_model,
            prompts.tokens[i][None],
            Ablation((Site(1, "mlp_out"),), "mean", reference=refs["recall"][(template, 10)]),
        )[0, -1]
        assert scores[0, i, 2] == pytest.approx(float(expected.log_softmax(-1)[prompts.answer_ids[i]]), abs=1e-4)
