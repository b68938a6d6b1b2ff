"""The dissociation module against hand computations, for the mutants its other tests let live (issue 22, point 4).

The table rule at its boundaries (a drop exactly at the 97.5th percentile, equal own and cross drops, sets of
one unit, empty sets, missing rows), every column of `verdicts` and of the table `dissociation` writes against
numpy / scipy / an independent `ablated_scores` call per condition, the layer band's widening rule on hand-made
pools (each stopping condition alone), the matched random sets' fallback, and the held-out statistic's edge
cases (one random set, an empty set, conditions after the random sets, the defaults it documents).
"""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from circuits.recall_reasoning.dissociation import (
    ablated_scores,
    composition,
    dissociation,
    evaluate_conditions,
    layer_band,
    matched_random_sets,
    random_sets,
)

from circuits.recall_reasoning.verdicts import (
    bootstrap_interaction,
    empirical_p,
    held_out_verdict,
    mean_ci95,
    verdict_text,
    verdicts,
)
from circuits.recall_reasoning.localisation import units
from interp.errors import InterpError
from interp.sites import Site

# ---- the table rule ---------------------------------------------------------------------------------


def table(sizes, set_drops, random_drops, methods=("zero",)):
    """A dissociation table by hand. set_drops[(set, task)]; random_drops[(task, size)]: a list of drops."""
    rows = []
    for method in methods:
        rows += [dict(method=method, ablated="none", set_index=-1, task=t, drop=0.0) for t in ("recall", "reasoning")]
        rows += [dict(method=method, ablated=s, set_index=-1, task=t, drop=d) for (s, t), d in set_drops.items()]
        for (task, size), drops in random_drops.items():
            rows += [
                dict(method=method, ablated=f"random_{size}", set_index=i, task=task, drop=d)
                for i, d in enumerate(drops)
            ]
    return pd.DataFrame(rows)


def spread(low, n=20, step=0.01):
    return [low + step * i for i in range(n)]


BASE_RANDOM = {
    ("recall", 1): spread(0.10),
    ("reasoning", 1): spread(0.20),
    ("recall", 2): spread(0.30),
    ("reasoning", 2): spread(0.05),
}
GOOD = {
    ("recall_set", "recall"): 0.9,
    ("recall_set", "reasoning"): 0.0,
    ("reasoning_set", "reasoning"): 0.8,
    ("reasoning_set", "recall"): 0.0,
}


def test_every_column_of_the_verdict_against_numpy_and_scipy():
    t = table((1, 2), GOOD, BASE_RANDOM, methods=("zero", "mean"))
    out = verdicts(t, 1, 2)
    assert out["method"].tolist() == ["zero", "mean"]  # the table's order, not sorted
    row = out.iloc[0]
    assert (row["recall_set_size"], row["reasoning_set_size"]) == (1, 2)
    for (s, task), d in GOOD.items():
        assert row[f"{task}_drop_{s}"] == d
    for task, size in (("recall", 1), ("reasoning", 2)):
        drops = np.array(BASE_RANDOM[task, size])
        half = stats.t.ppf(0.975, len(drops) - 1) * drops.std(ddof=1) / np.sqrt(len(drops))
        assert row[f"random_{task}_drop_mean"] == pytest.approx(drops.mean())
        assert row[f"random_{task}_drop_ci95"] == pytest.approx([drops.mean() - half, drops.mean() + half])
        assert row[f"random_{task}_drop_q975"] == pytest.approx(np.quantile(drops, 0.975))
        assert row[f"random_{task}_drop_n_sets"] == 20
    assert row["p_recall_set"] == pytest.approx(1 / 21) and row["p_reasoning_set"] == pytest.approx(1 / 21)
    assert row["recall_set_specific"] and row["reasoning_set_specific"] and row["no_cross_effect"]
    assert row["double_dissociation"]
    # p values from each set's own task and size: half the reasoning-size-2 random sets drop reasoning more
    mid = {**GOOD, ("reasoning_set", "reasoning"): 0.145}
    row = verdicts(table((1, 2), mid, BASE_RANDOM), 1, 2).iloc[0]
    assert row["p_reasoning_set"] == pytest.approx((1 + 10) / 21)
    mid = {**GOOD, ("recall_set", "recall"): 0.195}
    row = verdicts(table((1, 2), mid, BASE_RANDOM), 1, 2).iloc[0]
    assert row["p_recall_set"] == pytest.approx((1 + 10) / 21)


def flat(value, n=20):
    return [value] * n


def test_boundaries_are_strict_where_the_rule_says_above():
    # every random drop 0.25: the 97.5th percentile is exactly 0.25
    randoms = {(task, size): flat(0.25) for task in ("recall", "reasoning") for size in (1, 2)}
    at_q = {**GOOD, ("recall_set", "recall"): 0.25}
    row = verdicts(table((1, 2), at_q, randoms), 1, 2).iloc[0]
    assert not row["recall_set_specific"] and row["reasoning_set_specific"]  # a drop at q is not above it
    at_q = {**GOOD, ("reasoning_set", "reasoning"): 0.25}
    row = verdicts(table((1, 2), at_q, randoms), 1, 2).iloc[0]
    assert row["recall_set_specific"] and not row["reasoning_set_specific"]
    # own drop equal to the cross drop (both above q, cross at most q elsewhere): not specific
    tie = {**GOOD, ("recall_set", "recall"): 0.6, ("recall_set", "reasoning"): 0.6}
    row = verdicts(table((1, 2), tie, {k: flat(0.0) for k in randoms}), 1, 2).iloc[0]
    assert not row["recall_set_specific"] and row["reasoning_set_specific"]
    tie = {**GOOD, ("reasoning_set", "reasoning"): 0.6, ("reasoning_set", "recall"): 0.6}
    row = verdicts(table((1, 2), tie, {k: flat(0.0) for k in randoms}), 1, 2).iloc[0]
    assert row["recall_set_specific"] and not row["reasoning_set_specific"]
    # a cross drop exactly at q is "at most q": no cross effect
    for cross in (("recall_set", "reasoning"), ("reasoning_set", "recall")):
        row = verdicts(table((1, 2), {**GOOD, cross: 0.25}, randoms), 1, 2).iloc[0]
        assert row["no_cross_effect"] and row["double_dissociation"], cross


@pytest.mark.parametrize("sizes", [(1, 2), (2, 1)])
def test_a_set_of_one_unit_can_be_specific(sizes):
    randoms = {(task, size): spread(0.0) for task in ("recall", "reasoning") for size in (1, 2)}
    row = verdicts(table(sizes, GOOD, randoms), *sizes).iloc[0]
    assert row["recall_set_specific"] and row["reasoning_set_specific"] and row["double_dissociation"]


def test_an_empty_set_is_never_specific_whatever_the_table_says():
    # a table that claims drops for an empty set, with size-0 random rows below them: the size rule alone decides
    randoms = {(task, size): flat(0.0) for task in ("recall", "reasoning") for size in (0, 2)}
    row = verdicts(table((0, 2), GOOD, randoms), 0, 2).iloc[0]
    assert not row["recall_set_specific"] and row["reasoning_set_specific"]
    row = verdicts(table((2, 0), GOOD, randoms), 2, 0).iloc[0]
    assert row["recall_set_specific"] and not row["reasoning_set_specific"]


def test_missing_rows_and_missing_random_sets_give_nan_not_numbers():
    only_recall = {k: v for k, v in GOOD.items() if k[0] == "recall_set"}
    row = verdicts(table((1, 2), only_recall, BASE_RANDOM), 1, 2).iloc[0]
    assert np.isnan(row["reasoning_drop_reasoning_set"]) and np.isnan(row["recall_drop_reasoning_set"])
    assert np.isnan(row["p_reasoning_set"]) and not row["reasoning_set_specific"]
    assert row["recall_set_specific"]
    no_random = {k: v for k, v in BASE_RANDOM.items() if k != ("reasoning", 2)}
    row = verdicts(table((1, 2), GOOD, no_random), 1, 2).iloc[0]
    assert np.isnan(row["p_reasoning_set"]) and np.isnan(row["random_reasoning_drop_q975"])
    assert np.isnan(row["random_reasoning_drop_mean"]) and row["random_reasoning_drop_n_sets"] == 0
    assert not row["reasoning_set_specific"]


def test_the_sentence_prints_each_number_in_its_place():
    row = pd.Series(
        dict(
            double_dissociation=False,
            method="mean",
            recall_drop_recall_set=0.1,
            reasoning_drop_recall_set=0.2,
            reasoning_drop_reasoning_set=0.3,
            recall_drop_reasoning_set=0.4,
            random_recall_drop_mean=0.05,
            random_recall_drop_ci95=[0.01, 0.09],
            random_recall_drop_q975=0.11,
            random_reasoning_drop_mean=0.06,
            random_reasoning_drop_ci95=[0.02, 0.08],
            random_reasoning_drop_q975=0.12,
            p_recall_set=0.5,
            p_reasoning_set=0.25,
        )
    )
    assert verdict_text(row, "M") == (
        "M does NOT show a double dissociation under mean ablation: the recall set drops recall accuracy by 0.100 "
        "and reasoning by 0.200; the reasoning set drops reasoning by 0.300 and recall by 0.400; random sets of the "
        "same size drop recall by 0.050 (95% CI 0.010..0.090, 97.5th pct 0.110) and reasoning by 0.060 "
        "(95% CI 0.020..0.080, 97.5th pct 0.120); empirical p of the recall set 0.500, of the reasoning set 0.250."
    )


# ---- the table itself, on the synthetic model ----------------------------------------------------------


def test_each_row_of_the_table_is_its_own_ablation(synthetic_model, synthetic_prompts, capsys):
    recall_set, reasoning_set = [Site(0, "z", head=0)], [Site(1, "z", head=1), Site(0, "mlp_out")]
    pool = units(synthetic_model)
    seed = 7
    table = dissociation(
        synthetic_model,
        synthetic_prompts,
        recall_set,
        reasoning_set,
        pool,
        methods=("resample",),
        n_random=2,
        seed=seed,
    )
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    sets = {"recall_set": (-1, recall_set), "reasoning_set": (-1, reasoning_set)}
    for size in (1, 2):
        for i, s in enumerate(random_sets(pool, size, 2, seed + size)):
            sets[f"random_{size}", i] = (i, s)
    assert len(table) == 2 * (1 + len(sets))
    for row in table.itertuples():
        prompts = synthetic_prompts[row.task]
        base = ablated_scores(synthetic_model, prompts, [], "zero")
        if row.ablated == "none":
            index, sites = -1, []
        else:
            index, sites = sets[row.ablated] if row.ablated in sets else sets[row.ablated, row.set_index]
        scores = ablated_scores(synthetic_model, prompts, sites, "resample", seed=seed + max(index, 0))
        acc = scores["correct_distractor"].mean()
        n = len(scores)
        assert (row.method, row.set_index, row.set_size, row.n_items) == ("resample", index, len(sites), n)
        assert row.accuracy == pytest.approx(acc) and row.drop == pytest.approx(base["correct_distractor"].mean() - acc)
        assert row.accuracy_se == pytest.approx(np.sqrt(acc * (1 - acc) / n))
        assert row.accuracy_first_token == pytest.approx(scores["correct_first_token"].mean())
        assert row.mean_answer_logprob == pytest.approx(scores["answer_logprob"].mean(), abs=1e-6)
    assert table["accuracy_se"].gt(0).any()  # the SE formula is seen on an accuracy strictly between 0 and 1
    # one random set is enough; with progress the bar names the method
    dissociation(synthetic_model, synthetic_prompts, recall_set, reasoning_set, pool, n_random=1, progress=True)
    err = capsys.readouterr().err
    assert all(f"ablation ({m})" in err for m in ("zero", "mean", "resample"))
    with pytest.raises(InterpError, match=r"not an ablation method; choose from zero, mean, resample\.$"):
        dissociation(synthetic_model, synthetic_prompts, recall_set, reasoning_set, pool, methods=("ramdom",))


def test_the_default_table_has_twenty_random_sets_per_size(synthetic_model, synthetic_prompts):
    table = dissociation(
        synthetic_model, synthetic_prompts, [Site(0, "z", head=0)], [], units(synthetic_model), methods=("zero",)
    )
    assert (table["ablated"] == "random_1").sum() == 20 * 2 and set(table["ablated"]) == {
        "none",
        "recall_set",
        "reasoning_set",
        "random_1",
    }
    seeded = dissociation(
        synthetic_model,
        synthetic_prompts,
        [Site(0, "z", head=0)],
        [],
        units(synthetic_model),
        methods=("zero",),
        seed=0,
    )
    pd.testing.assert_frame_equal(table, seeded)


def test_a_filled_reference_cache_is_read_and_the_seed_is_used(synthetic_model, synthetic_prompts):
    prompts = synthetic_prompts["recall"]
    sites = [Site(1, "mlp_out")]
    cache = {}
    ablated_scores(synthetic_model, prompts, sites, "mean", reference_cache=cache)
    assert cache and all("blocks.1.hook_mlp_out" in v for v in cache.values())
    # the cached activations replaced by zeros: a mean ablation that reads them is a zero ablation
    for value in cache.values():
        for name in value:
            value[name] = torch.zeros_like(value[name])
    from_cache = ablated_scores(synthetic_model, prompts, sites, "mean", reference_cache=cache)
    zero = ablated_scores(synthetic_model, prompts, sites, "zero")
    assert from_cache["answer_logprob"].to_numpy() == pytest.approx(zero["answer_logprob"].to_numpy(), abs=1e-5)
    # resample draws with the seed it is given (0 by default)
    sites = [Site(0, "z", head=0), Site(1, "z", head=1), Site(0, "mlp_out"), Site(1, "mlp_out")]
    draws = {s: ablated_scores(synthetic_model, prompts, sites, "resample", seed=s)["answer_logprob"] for s in (0, 3)}
    assert not np.allclose(draws[0], draws[3])
    default = ablated_scores(synthetic_model, prompts, sites, "resample")["answer_logprob"]
    assert np.array_equal(default, draws[0])


def test_random_sets_may_take_the_whole_pool():
    pool = [Site(0, "z", head=h) for h in range(4)]
    sets = random_sets(pool, 4, 5, seed=1)
    assert all(sorted(s) == pool for s in sets) and len({tuple(s) for s in sets}) > 1
    with pytest.raises(InterpError, match="size=5"):
        random_sets(pool, 5, 1, seed=1)


# ---- the layer band and matched random sets ------------------------------------------------------------


def heads(layers, per_layer=4):
    return [Site(layer, "z", head=h) for layer in layers for h in range(per_layer)]


def test_the_band_stops_when_each_kind_has_min_factor_times_k_others():
    pool = heads(range(6), per_layer=3)  # 3 heads a layer
    # one head at layer 2: exactly 2 others there = 2 x 1, so no widening
    assert layer_band([Site(2, "z", head=0)], pool, 6) == (2, 2)
    # two heads at layer 2: 1 other < 4, widen to 1..3 (1 + 3 + 3 = 7 >= 4)
    assert layer_band([Site(2, "z", head=0), Site(2, "z", head=1)], pool, 6) == (1, 3)
    # min_factor 3 for one head: 2 < 3 at layer 2, widen to 1..3
    assert layer_band([Site(2, "z", head=0)], pool, 6, min_factor=3) == (1, 3)
    # counted units sit at the band's edges: a set spanning 1..3 with others only at layers 1 and 3
    edge_pool = [Site(1, "z", head=0), Site(1, "z", head=1), Site(3, "z", head=0), Site(3, "z", head=1)]
    edge_pool += [Site(2, "z", head=0), Site(0, "z", head=0), Site(4, "z", head=0)]
    chosen = [Site(1, "z", head=0), Site(3, "z", head=0)]  # others in 1..3: L1 h1, L3 h1, L2 h0 = 3
    assert layer_band(chosen, edge_pool, 5, min_factor=1) == (1, 3)  # 3 >= 2
    chosen = [Site(1, "z", head=0), Site(2, "z", head=0)]  # others in 1..2: L1 h1 only... and L3 is outside
    assert layer_band(chosen, edge_pool, 5, min_factor=1) == (0, 3)  # 1 < 2, widen: L0, L1 h1, L3 x2 = 4
    with pytest.raises(InterpError, match=r"^layer_band: the set is empty"):
        layer_band([], pool, 6)


def test_the_band_widens_on_the_side_that_can_until_the_whole_model():
    pool = heads(range(6), per_layer=2)
    # at layer 0 it can only grow upwards: 1 other at L0, 3 at L0..1, then 5 >= 4 at L0..2
    assert layer_band([Site(0, "z", head=0), Site(0, "z", head=1)], pool, 6, min_factor=2) == (0, 2)
    # at the last layer only downwards, and never past it
    assert layer_band([Site(5, "z", head=0), Site(5, "z", head=1)], pool, 6, min_factor=2) == (3, 5)
    # a set spanning 1..5 that needs more than the model has: the band stops at the whole model
    chosen = [Site(1, "z", head=0), Site(5, "z", head=0)]
    assert layer_band(chosen, pool, 6, min_factor=50) == (0, 5)
    # a set spanning 0..4 in a 6-layer model: the band reaches the last layer
    chosen = [Site(0, "z", head=0), Site(4, "z", head=0)]
    assert layer_band(chosen, pool, 6, min_factor=50) == (0, 5)
    # lo already at 1 with the top reached: one more step down to 0
    chosen = [Site(1, "z", head=0), Site(5, "z", head=0)]
    assert layer_band(chosen, pool, 6, min_factor=5) == (0, 5)  # 1..5: 8 others < 10; 0..5: 10


def test_matched_sets_use_the_default_factor_and_never_the_chosen_units_while_others_suffice():
    pool = heads(range(4), per_layer=3)
    chosen = [Site(1, "z", head=0)]
    sets, band = matched_random_sets(pool, chosen, 40, seed=2, n_layers=4)
    assert band == layer_band(chosen, pool, 4, min_factor=2) == (1, 1)  # 2 others at layer 1 = 2 x 1
    assert {u for s in sets for u in s} == {Site(1, "z", head=1), Site(1, "z", head=2)}
    pool = heads(range(4), per_layer=4)
    sets, _ = matched_random_sets(pool, [Site(1, "z", head=0), Site(1, "z", head=1)], 40, seed=3, n_layers=4)
    assert all(s == sorted(s) for s in sets) and any(s[0].layer == s[1].layer for s in sets)
    pool = heads(range(4), per_layer=3)
    sets, band = matched_random_sets(pool, chosen, 40, seed=2, n_layers=4, min_factor=1)
    assert band == (1, 1)
    sets, band = matched_random_sets(pool, chosen, 1, seed=2, n_layers=4, min_factor=3)
    assert band == (0, 2) and len(sets) == 1
    # exactly k others in the whole model: drawn from them only, the chosen units never
    pool = [Site(0, "z", head=0), Site(0, "z", head=1), Site(1, "z", head=0), Site(1, "z", head=1)]
    chosen = [Site(0, "z", head=0), Site(0, "z", head=1)]
    sets, band = matched_random_sets(pool, chosen, 30, seed=0, n_layers=2)
    assert band == (0, 1) and all(sorted(s) == [Site(1, "z", head=0), Site(1, "z", head=1)] for s in sets)


def test_matched_sets_fall_back_to_every_unit_of_the_kind_in_the_band():
    # three neurons chosen, one other neuron in the whole model: drawn from all four, chosen ones included
    pool = [Site(0, "mlp_post", neuron=0), Site(1, "mlp_post", neuron=1), Site(1, "mlp_post", neuron=2)]
    pool += [Site(2, "mlp_post", neuron=3), Site(1, "z", head=0), Site(1, "mlp_out")]
    chosen = [Site(1, "mlp_post", neuron=1), Site(1, "mlp_post", neuron=2), Site(2, "mlp_post", neuron=3)]
    sets, band = matched_random_sets(pool, chosen, 60, seed=0, n_layers=3)
    assert band == (0, 2)
    assert all(composition(s) == {"head": 0, "mlp": 0, "neuron": 3} and len(set(s)) == 3 for s in sets)
    assert {u for s in sets for u in s} == {u for u in pool if u.component == "mlp_post"}
    assert all(s == sorted(s) for s in sets)  # each set in Site order, so equal sets compare equal
    neurons = [Site(1, "mlp_post", neuron=n) for n in range(4)] + [Site(0, "mlp_post", neuron=n) for n in range(4)]
    sets, _ = matched_random_sets(neurons, neurons[6:], 40, seed=0, n_layers=2, min_factor=1)  # neurons 0 and 1 of L0
    assert all(s == [neurons[4], neurons[5]] for s in sets)
    sets, _ = matched_random_sets(neurons, neurons[:2], 40, seed=0, n_layers=2, min_factor=1)
    assert all(s == sorted(s) for s in sets) and {tuple(s) for s in sets} >= {(neurons[2], neurons[3])}
    with pytest.raises(
        InterpError, match=r"^matched_random_sets: the set holds 5 neuron unit\(s\) but the pool has only 4"
    ):
        matched_random_sets(pool, chosen + [Site(0, "mlp_post", neuron=8), Site(2, "mlp_post", neuron=9)], 1, 0, 3)


# ---- the held-out statistic ----------------------------------------------------------------------------


def correctness(n_random, seed=0, trailing=0):
    rng = np.random.default_rng(seed)
    n_conditions = 3 + n_random["recall_set"] + n_random["reasoning_set"] + trailing
    correct = {task: rng.random((n_conditions, n)) < 0.7 for task, n in (("recall", 20), ("reasoning", 16))}
    for c in correct.values():
        c[0] = True
    correct["recall"][1], correct["reasoning"][2] = True, True
    correct["recall"][1, :14] = False
    correct["reasoning"][2, :12] = False
    correct["reasoning"][1], correct["recall"][2] = True, True
    return correct


def test_conditions_after_the_random_sets_are_not_read():
    n_random = {"recall_set": 10, "reasoning_set": 8}
    correct = correctness(n_random, trailing=3)
    for c in correct.values():
        c[-3:] = False  # another analysis's conditions: every item wrong
    trimmed = {task: c[:-3] for task, c in correct.items()}
    assert held_out_verdict(correct, n_random, n_boot=100) == held_out_verdict(trimmed, n_random, n_boot=100)
    own = correct["reasoning"][0].mean() - correct["reasoning"][13:21].mean(1)
    out = held_out_verdict(correct, n_random, n_boot=100)
    assert out["reasoning_set_random_own_drop_mean"] == pytest.approx(own.mean())


def test_one_random_set_is_a_baseline_and_an_empty_set_has_none():
    n_random = {"recall_set": 1, "reasoning_set": 0}
    correct = correctness(n_random)
    out = held_out_verdict(correct, n_random, n_boot=200, seed=4)
    own = correct["recall"][0].mean() - correct["recall"][3].mean()
    assert out["recall_set_random_own_drop_mean"] == pytest.approx(own)
    assert out["recall_set_p_own"] == pytest.approx((1 + (own >= 14 / 20)) / 2)
    for key in ("p_own", "p_selectivity", "random_own_drop_mean", "random_cross_drop_mean", "random_selectivity_q975"):
        assert np.isnan(out[f"reasoning_set_{key}"]), key
    assert not out["reasoning_set_specific"] and not out["double_dissociation"]
    assert np.isnan(out["p_resolution"]) and out["reasoning_set_n_random"] == 0


def test_the_documented_defaults_and_the_bookkeeping_fields():
    n_random = {"recall_set": 12, "reasoning_set": 9}
    correct = correctness(n_random, seed=2)
    out = held_out_verdict(correct, n_random)
    assert out == held_out_verdict(correct, n_random, alpha=0.05, n_boot=2000, seed=0)
    draws = bootstrap_interaction({task: c[:3] for task, c in correct.items()}, 2000, 0)
    assert out["interaction_ci95"] == pytest.approx(list(np.quantile(draws, [0.025, 0.975])))
    assert (out["n_bootstrap"], out["alpha"], out["n_recall_eval"], out["n_reasoning_eval"]) == (2000, 0.05, 20, 16)
    assert out["p_resolution"] == pytest.approx(1 / 10)
    with pytest.raises(InterpError, match=r"^held_out_verdict: a task has no evaluated items"):
        held_out_verdict(correct, n_random, masks={"recall": np.zeros(20, bool), "reasoning": np.ones(16, bool)})


def test_empirical_p_ties_count_and_non_finite_nulls_give_nan():
    assert empirical_p(0.5, [0.5, 0.5, 0.1]) == pytest.approx(3 / 4)  # ties count as at least as large
    assert empirical_p(0.5, [0.1, 0.2]) == pytest.approx(1 / 3)
    assert np.isnan(empirical_p(0.5, [0.1, np.nan])) and np.isnan(empirical_p(np.nan, [0.1]))
    assert np.isnan(empirical_p(0.5, []))


# ---- the batched evaluation, the CI and the bootstrap --------------------------------------------------------


def test_mean_ci95_at_two_values_one_value_and_unit_spread():
    for values in ([0.1, 0.4], [-1.0, 0.0, 1.0]):  # two values; a sample standard deviation of exactly 1
        mean, low, high = mean_ci95(values)
        want = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
        assert (low, high) == pytest.approx(want) and mean == pytest.approx(np.mean(values))
    assert mean_ci95([0.3]) == (0.3, 0.3, 0.3)
    assert mean_ci95([0.2, 0.2, 0.2]) == pytest.approx((0.2, 0.2, 0.2))


def test_evaluation_defaults_zero_without_references_and_named_errors(synthetic_model, synthetic_prompts, capsys):
    prompts = synthetic_prompts["recall"]
    conditions = [[], [Site(0, "z", head=1)], [Site(1, "mlp_out")]]
    # zero ablation needs no reference prompts
    zero = evaluate_conditions(synthetic_model, prompts, {}, conditions, "zero")
    assert zero.dtype == np.float32 and zero.shape == (3, len(prompts), 3)
    by_hand = ablated_scores(synthetic_model, prompts, conditions[2], "zero")
    assert zero[2, :, 2] == pytest.approx(by_hand["answer_logprob"].to_numpy(), abs=1e-5)
    assert capsys.readouterr().err == ""  # no progress bar unless asked
    length = len(prompts.tokens[0])
    references = {length: torch.stack(synthetic_prompts["reasoning"].corrupted)}
    heavy = [[Site(0, "z", head=0), Site(0, "z", head=1), Site(1, "z", head=0), Site(1, "mlp_out")]] * 2
    default = evaluate_conditions(synthetic_model, prompts, references, heavy, "resample")
    seeded = evaluate_conditions(synthetic_model, prompts, references, heavy, "resample", seed=0)
    other = evaluate_conditions(synthetic_model, prompts, references, heavy, "resample", seed=5)
    assert np.array_equal(default, seeded) and not np.array_equal(default, other)
    # condition i draws with seed + i: the same set twice draws differently, each as it would alone
    assert not np.array_equal(default[0], default[1])
    alone = evaluate_conditions(synthetic_model, prompts, references, heavy[:1], "resample", seed=1)
    assert np.array_equal(default[1], alone[0])
    with pytest.raises(InterpError) as error:
        evaluate_conditions(synthetic_model, prompts, references, conditions, "ramdom")
    assert str(error.value) == (
        "evaluate_conditions(method='ramdom') is not an ablation method; choose from zero, mean, resample."
    )
    # references keyed by (template, length): a template without its own names the length
    template = prompts.items["template"].iloc[0]
    with pytest.raises(
        InterpError, match=rf"no reference prompts of {length} tokens for recall; pass references\[{length}\]"
    ):
        evaluate_conditions(
            synthetic_model, prompts, {("another template", length): references[length]}, conditions, "mean"
        )
    assert template != "another template"


def test_the_bootstrap_centres_on_the_interaction_and_reads_the_masks():
    rng = np.random.default_rng(7)
    correct = {
        "recall": rng.random((3, 40)) < [[0.9], [0.3], [0.8]],
        "reasoning": rng.random((3, 30)) < [[0.9], [0.85], [0.4]],
    }
    acc = {t: c.mean(1) for t, c in correct.items()}
    interaction = (acc["recall"][0] - acc["recall"][1]) - (acc["reasoning"][0] - acc["reasoning"][1])
    interaction += (acc["reasoning"][0] - acc["reasoning"][2]) - (acc["recall"][0] - acc["recall"][2])
    draws = bootstrap_interaction(correct, 4000, seed=0)
    assert draws.mean() == pytest.approx(interaction, abs=0.02) and draws.std() > 0.02
    masks = {"recall": np.arange(40) % 2 == 0, "reasoning": np.arange(30) < 20}
    masked = bootstrap_interaction(correct, 500, seed=1, masks=masks)
    pre_masked = bootstrap_interaction({t: c[:, masks[t]] for t, c in correct.items()}, 500, seed=1)
    assert np.array_equal(masked, pre_masked)
    assert not np.array_equal(masked, bootstrap_interaction(correct, 500, seed=1))


def test_an_interaction_interval_touching_zero_is_not_a_double_dissociation():
    # both sets beat every random set on their own drop and selectivity (random sets raise accuracy), but the
    # sets drop nothing: the interaction is exactly 0 in every bootstrap draw
    n_random = {"recall_set": 20, "reasoning_set": 20}
    half = {"recall": np.arange(20) < 10, "reasoning": np.arange(16) < 8}
    correct = {task: np.tile(row, (43, 1)) for task, row in half.items()}
    correct["recall"][3:23] = np.arange(20) < 12  # random sets matched to the recall set: recall up by 0.1
    correct["reasoning"][23:43] = np.arange(16) < 10  # matched to the reasoning set: reasoning up by 0.125
    out = held_out_verdict(correct, n_random, n_boot=300)
    assert out["recall_set_specific"] and out["reasoning_set_specific"]
    assert out["interaction"] == 0 and out["interaction_ci95"] == [0.0, 0.0]
    assert not out["double_dissociation"]
