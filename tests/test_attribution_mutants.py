"""Checks that pin down the attribution helpers' bookkeeping, written against mutmut's survivors (issue 22).

`check_estimates` is run on hand-built estimate tables whose distance to the exact restoration is set by
hand (equal to the tolerance, sign-flipped, largest by magnitude but negative), so each clause of its
rule fails alone. `false_negative_bound` is checked against an independent computation: every subset it
reports is patched again through `interp.graph.circuit_metric` (the edge-level patch, not the node
engine), and each bound must be the minimum over the subsets holding the node.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interp.attribution import (
    attribute_heads,
    attribute_layer_positions,
    attribute_neurons,
    attribute_sites,
    attribution_sweep,
    check_estimates,
)
from interp.attribution.graddrop import attribute_nodes, false_negative_bound
from interp.errors import InterpError
from interp.graph import ComputationGraph, circuit_metric
from interp.patching import patch_sites
from interp.sites import Site
from tests.test_attribution import tiny_task_of
from tests.test_graph import make_task


@pytest.fixture(scope="module")
def heads_task(tiny_model):
    return tiny_task_of(tiny_model)


@pytest.fixture(scope="module")
def exact_heads(heads_task):
    return patch_sites(
        heads_task,
        [Site(layer, "z", head=h) for layer in range(heads_task.model.cfg.n_layers) for h in range(4)],
    )


def hand_estimates(exact: pd.DataFrame, restoration: np.ndarray, reliable=None) -> pd.DataFrame:
    """The exact table with `restoration` replaced and a reversed, non-default index (labels, not positions)."""
    out = exact.copy()
    out["restoration"] = restoration
    if reliable is not None:
        out["reliable"] = pd.array(reliable, dtype="boolean")
    out.index = np.arange(100, 100 + 2 * len(out), 2)[::-1]
    out.attrs = {"method": "hand", "origin": "test"}
    return out


def planted(exact: np.ndarray) -> tuple[np.ndarray, float, dict[str, int]]:
    """Estimates with five verified sites of known outcome, and the tolerance that puts one exactly on it.

    n: the largest |estimate|, negative (picked by magnitude), far off; j: the largest exact value sign-flipped
    (|est - exact| = 2a > tolerance while |est + exact| = 0); k: off by exactly the tolerance; m, o: exact.
    Every other estimate is tiny, so these five are the top five.
    """
    order = np.argsort(-np.abs(exact))
    j, k, m, o, n = (int(i) for i in order[:5])
    a = float(abs(exact[j]))
    assert abs(exact[o]) > 1e-3 and a > 1e-2  # the seeded tiny task has effects of this size
    est = 1e-6 * np.arange(1, len(exact) + 1)
    est[n] = -10.0 * a
    est[j] = -exact[j]
    est[k] = exact[k] + np.sign(exact[k]) * a / 2
    est[m], est[o] = exact[m], exact[o]
    tolerance = float(np.abs(est[k] - exact[k]))
    return est, tolerance, dict(j=j, k=k, m=m, o=o, n=n)


def test_each_clause_of_the_reliability_rule(heads_task, exact_heads):
    exact = exact_heads["restoration"].to_numpy()
    est, tolerance, at = planted(exact)
    estimates = hand_estimates(exact_heads, est)
    label = {name: estimates.index[i] for name, i in at.items()}
    checked = check_estimates(heads_task, estimates, top_k=5, tolerance=tolerance)
    assert set(checked.index[checked["exact_restoration"].notna()]) == set(label.values())
    np.testing.assert_allclose(
        checked.loc[list(label.values()), "exact_restoration"], exact[list(at.values())], atol=1e-6
    )
    want = dict(n=False, j=False, k=True, m=True, o=True)
    assert {name: checked.at[label[name], "reliable"] for name in want} == want
    assert checked["reliable"].isna().sum() == len(exact) - 5
    assert checked["reliable"].dtype == "boolean" and checked["exact_restoration"].dtype == np.float64
    assert list(checked.columns) == [*estimates.columns, "exact_restoration", "reliable"]
    assert checked.attrs == {"method": "hand", "origin": "test", "verified": 5, "tolerance": tolerance}
    below = check_estimates(heads_task, estimates, top_k=5, tolerance=float(np.nextafter(tolerance, 0)))
    assert not below.at[label["k"], "reliable"] and below.at[label["m"], "reliable"]


def test_an_earlier_reliable_flag_is_anded_and_kept_where_not_verified(heads_task, exact_heads):
    exact = exact_heads["restoration"].to_numpy()
    est, tolerance, at = planted(exact)
    earlier = [pd.NA] * len(exact)
    # verified now: k, m, o reliable; j, n not. Earlier flags: every combination of (earlier, now)
    for name, flag in dict(k=False, m=pd.NA, o=True, j=True, n=pd.NA).items():
        earlier[at[name]] = flag
    rest = [i for i in range(len(exact)) if i not in at.values()]
    earlier[rest[0]], earlier[rest[1]] = False, True  # not verified: kept as they were
    checked = check_estimates(heads_task, hand_estimates(exact_heads, est, earlier), top_k=5, tolerance=tolerance)
    got = checked["reliable"].to_numpy(dtype=object, na_value=None)
    assert {name: got[i] for name, i in at.items()} == dict(k=False, m=True, o=True, j=False, n=False)
    assert got[rest[0]] is False or got[rest[0]] == False  # noqa: E712
    assert got[rest[1]] == True  # noqa: E712
    assert all(got[i] is None for i in rest[2:])


def test_defaults_are_the_documented_ones(heads_task):
    estimates = attribute_sites(
        heads_task,
        [Site(layer, "z", head=h, position=p) for layer in range(2) for h in range(4) for p in range(6)],
    )
    assert len(estimates) > 20
    checked = check_estimates(heads_task, estimates)
    assert checked.attrs["verified"] == 20 and checked.attrs["tolerance"] == 0.05
    assert checked["exact_restoration"].notna().sum() == 20
    one = check_estimates(heads_task, estimates, top_k=1)
    assert one["exact_restoration"].notna().sum() == 1
    with pytest.raises(InterpError, match="memory_budget=0"):  # engine options reach the engine
        check_estimates(heads_task, estimates, top_k=2, memory_budget=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda task: attribute_neurons(task, layers=[1], neurons=[0, 3, 5]),
        lambda task: attribute_layer_positions(task, "resid_pre", layers=[1]),
        lambda task: attribute_heads(task, by_position=True, layers=[0]),
    ],
    ids=["neurons", "layer_positions", "heads_by_position"],
)
def test_check_estimates_patches_the_row_it_names(heads_task, make):
    """Each verified row is patched at its own neuron / position (not the whole layer or every position)."""
    estimates = make(heads_task)
    checked = check_estimates(heads_task, estimates, top_k=len(estimates), tolerance=10.0)
    sites = [
        Site(
            int(r.layer),
            r.component,
            head=None if pd.isna(r.head) else int(r.head),
            neuron=None if pd.isna(r.neuron) else int(r.neuron),
            position=None if pd.isna(r.position) else int(r.position),
        )
        for r in estimates.itertuples()
    ]
    np.testing.assert_allclose(checked["exact_restoration"], patch_sites(heads_task, sites)["restoration"], atol=1e-6)
    assert checked["exact_restoration"].nunique() == len(checked)  # distinct sites, distinct numbers


def test_wrappers_pass_method_selection_and_tolerance_through(heads_task):
    task = heads_task
    neurons = attribute_neurons(task, method="atp*", layers=[0], neurons=[1, 2])
    assert (neurons["method"] == "atp*").all() and neurons.attrs["method"] == "atp*"
    positions = attribute_layer_positions(task, "resid_pre", method="atp*", layers=[1], positions=[2, 4])
    assert list(positions["layer"]) == [1, 1] and list(positions["position"]) == [2, 4]
    assert (positions["method"] == "atp*").all()
    with pytest.raises(InterpError, match=r"^attribute_layer_positions\(component='z'\)"):
        attribute_layer_positions(task, "z")
    with pytest.raises(InterpError, match=r"^attribute_neurons\(component='z'\)"):
        attribute_neurons(task, component="z")
    sweep = attribution_sweep(task, ["heads", "resid_pre"], layers=[1], method="atp*", tolerance=0.123)
    for name, frame in sweep.items():
        assert set(frame["layer"]) == {1}, name
        assert frame.attrs["tolerance"] == 0.123 and frame.attrs["method"] == "atp*"


# false_negative_bound


@pytest.fixture(scope="module")
def node_task(tiny_model):
    return make_task(tiny_model)


@pytest.fixture(scope="module")
def node_graph(node_task):
    return ComputationGraph(node_task.model)


@pytest.fixture(scope="module")
def node_scores(node_task, node_graph):
    return attribute_nodes(node_task, node_graph, method="atp")


def metric_without(task, graph, nodes) -> float:
    """The metric with every edge out of `nodes` carrying the corrupted run: the edge-level patch of interp.graph."""
    keep = graph.edges.index[~graph.edges["upstream"].isin(list(nodes))].tolist()
    return float(circuit_metric(task, graph, [keep])[0])


def test_every_bound_is_the_least_change_over_its_subsets(node_task, node_graph, node_scores):
    scores = node_scores.copy()
    scores.attrs = {"from": "atp"}
    out = false_negative_bound(node_task, scores, node_graph, verify_top=3, n_subsets=4, include_probability=0.5)
    subsets = out.attrs["subsets"]
    assert out.attrs["n_patches"] == 3 + len(subsets) and out.attrs["verify_top"] == 3
    assert out.attrs["from"] == "atp"
    change = [abs(metric_without(node_task, node_graph, s) - node_task.clean_metric) for s in subsets]
    nodes = out.set_index("node")
    unverified = nodes.index[~nodes["verified"]]
    for node in unverified:
        holding = [c for s, c in zip(subsets, change) if node in s]
        assert holding, node
        assert nodes.at[node, "bound"] == pytest.approx(min(holding), abs=1e-5)
    assert out.attrs["max_bound"] == pytest.approx(nodes.loc[unverified, "bound"].max())
    for node in nodes.index[nodes["verified"]]:
        assert not any(node in s for s in subsets)
        effect = metric_without(node_task, node_graph, [node]) - node_task.clean_metric
        assert nodes.at[node, "exact_effect"] == pytest.approx(effect, abs=1e-5)
    # each subset stays within one part: one sign of the AtP estimate, one kind, one layer
    senders = {s.name: s for s in node_graph.senders}
    for subset in subsets:
        keys = {(np.sign(nodes.at[n, "effect"]) or 1.0, senders[n].component, senders[n].layer) for n in subset}
        assert len(keys) == 1, subset
    assert len(set(map(tuple, subsets))) > 1  # the draw is not degenerate


def test_top_nodes_by_score_with_ties_in_table_order(node_task, node_graph, node_scores):
    scores = node_scores.copy()
    scores["score"] = 1.0  # all tied: the first rows are verified (a stable sort)
    out = false_negative_bound(node_task, scores, node_graph, verify_top=2, n_subsets=1)
    assert list(out.index[out["verified"]]) == list(scores.index[:2])


def test_zero_estimates_join_the_positive_part(node_task, node_graph, node_scores):
    scores = node_scores.copy()
    senders = {s.name: s for s in node_graph.senders}
    layer0 = [n for n in scores["node"] if senders[n].layer == 0]
    same = [n for n in layer0 if senders[n].component == senders[layer0[0]].component][:3]
    scores.loc[scores["node"].isin(same), "effect"] = [0.0, 1.0, 2.0][: len(same)]
    out = false_negative_bound(node_task, scores, node_graph, verify_top=0, n_subsets=2, include_probability=1.0)
    # with every node drawn, each part is one subset (twice): the zero-estimate node sits with the positive ones
    holding = [s for s in out.attrs["subsets"] if same[0] in s]
    assert holding and all(set(same) <= set(s) for s in holding)
    assert "exact_effect" in out.columns and out["exact_effect"].isna().all() and not out["verified"].any()


def test_defaults_and_the_seed(node_task, node_graph, node_scores):
    default = false_negative_bound(node_task, node_scores, node_graph)
    explicit = false_negative_bound(
        node_task, node_scores, node_graph, verify_top=10, n_subsets=32, include_probability=0.25, seed=0
    )
    assert default.attrs["subsets"] == explicit.attrs["subsets"] and default["verified"].sum() == 10
    other = false_negative_bound(node_task, node_scores, node_graph, seed=1)
    assert other.attrs["subsets"] != default.attrs["subsets"]
    none = false_negative_bound(node_task, node_scores, node_graph, n_subsets=0)
    assert all(len(s) == 1 for s in none.attrs["subsets"])  # no draws: one subset per unverified node
    assert none["bound"].dtype == np.float64


def test_bound_input_errors_name_the_argument(node_task, node_graph, node_scores):
    bound = false_negative_bound
    for name in ("verify_top", "n_subsets"):
        for bad in (-1, True, 1.5):
            with pytest.raises(InterpError, match=f"{name}={bad!r}: must be a whole number >= 0"):
                bound(node_task, node_scores, node_graph, **{name: bad})
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(InterpError, match="include_probability"):
            bound(node_task, node_scores, node_graph, include_probability=bad)
    full = bound(node_task, node_scores, node_graph, verify_top=len(node_scores), include_probability=1.0)
    assert full["bound"].isna().all()
    with pytest.raises(InterpError, match="^scores: needs columns node, score, effect"):
        bound(node_task, node_scores[["node", "score"]], node_graph)
    bare = bound(node_task, node_scores[["node", "score", "effect"]], node_graph, verify_top=1, n_subsets=1)
    assert bare["verified"].sum() == 1
    with pytest.raises(InterpError, match="graph: expected a ComputationGraph"):
        bound(node_task, node_scores, "graph")
    with pytest.raises(InterpError, match="memory_budget=0"):
        bound(node_task, node_scores, node_graph, memory_budget=0)


# node tables, and padded prompts through the node paths


def test_node_tables_follow_their_format(node_task, node_graph):
    from interp.attribution.graddrop import patch_nodes

    task = node_task
    tables = {
        "exact": patch_nodes(task, node_graph),
        "atp": attribute_nodes(task, node_graph, method="atp"),
        "atp+graddrop": attribute_nodes(task, node_graph),
    }
    for method, frame in tables.items():
        assert list(frame.columns[:8]) == [
            "node", "component", "layer", "head", "metric", "effect", "restoration", "method"
        ], method  # fmt: skip
        assert frame.index.name == "node_id" and list(frame.index) == list(range(len(node_graph.senders)))
        assert str(frame["layer"].dtype) == "Int64" and str(frame["head"].dtype) == "Int64"
        assert frame["effect"].dtype == np.float64 and (frame["method"] == method).all()
        assert list(frame["node"]) == [s.name for s in node_graph.senders]
        assert frame["layer"].isna().sum() == 1 and frame["head"].notna().sum() == sum(
            s.head is not None for s in node_graph.senders
        )
        np.testing.assert_allclose(frame["metric"], task.clean_metric + frame["effect"])
        gap = task.clean_metric - task.corrupted_metric
        np.testing.assert_allclose(frame["restoration"], (frame["metric"] - task.corrupted_metric) / gap, rtol=1e-5)
        assert frame.attrs == {
            "metric": task.metric_name,
            "clean_metric": task.clean_metric,
            "corrupted_metric": task.corrupted_metric,
            "method": method,
        }
    graddrop = tables["atp+graddrop"]
    layers = [c for c in graddrop.columns if c.startswith("graddrop_l")]
    # AtP* GradDrop: the sum of |AtP_l| over the L dropped layers over L - 1 (the paper's normalisation)
    expected = graddrop[layers].abs().sum(axis=1).to_numpy() / (len(layers) - 1)
    assert len(layers) == node_graph.n_layers and graddrop["score"].to_numpy() == pytest.approx(expected)
    with pytest.raises(
        InterpError, match=r"^method='graddrop' is not a node attribution method\. Known: atp, atp\+graddrop\.$"
    ):
        attribute_nodes(task, node_graph, method="graddrop")
    with pytest.raises(InterpError, match=r"^node_sets is empty: pass at least one set of nodes to patch together\.$"):
        from interp.attribution.graddrop import patch_node_sets

        patch_node_sets(task, node_graph, [])


def test_node_paths_with_padded_prompts_equal_each_pair_alone(aligned_nodes):
    """align=True with three prompt lengths: node patching, node sets (from the embeddings and from layer 1), AtP and
    GradDrop's per-layer estimates equal the mean of each pair run alone, unpadded (the metric is a mean over pairs)."""
    from interp.attribution.graddrop import patch_node_sets, patch_nodes
    from interp.patching import PatchingTask

    task, clean, corrupted, answers, wrong = aligned_nodes
    assert task.corrupted_mask is not None and len(set(task.corrupted_mask.sum(1).tolist())) == 3
    graph = ComputationGraph(task.model)
    singles = [PatchingTask(task.model, [c], [k], [a], [w]) for c, k, a, w in zip(clean, corrupted, answers, wrong)]

    def mean_alone(fn):
        return np.mean([fn(single) for single in singles], axis=0)

    exact = patch_nodes(task, graph)["effect"].to_numpy()
    assert np.abs(exact).max() > 0.05
    np.testing.assert_allclose(exact, mean_alone(lambda t: patch_nodes(t)["effect"].to_numpy()), atol=1e-4)
    sets = [["embed", "m1"], ["a1.h0", "m2"], ["m0"]]
    np.testing.assert_allclose(
        patch_node_sets(task, graph, sets, memory_budget=1),  # one set per batch
        mean_alone(lambda t: patch_node_sets(t, None, sets)),
        atol=1e-4,
    )
    ours = attribute_nodes(task, graph)
    layers = [c for c in ours.columns if c.startswith("graddrop_l")]
    reference = mean_alone(lambda t: attribute_nodes(t)[["effect", *layers]].to_numpy())
    np.testing.assert_allclose(ours[["effect", *layers]].to_numpy(), reference, atol=1e-4)


@pytest.fixture(scope="module")
def aligned_nodes(tmp_path_factory):
    from interp.patching import PatchingTask
    from tests.test_patching_mutants import prompts, worded_model

    model, words = worded_model(tmp_path_factory.mktemp("tokenizer"))
    clean, corrupted = prompts(words, [4, 6, 9], seed=3)
    answers, wrong = [5, 40, 77], [9, 60, 13]
    return PatchingTask(model, clean, corrupted, answers, wrong, align=True), clean, corrupted, answers, wrong
