"""Probe helpers against hand-written loops, and the linear read-out on the construction's thoughts."""

import numpy as np
import pandas as pd
import pytest
import torch

from circuits.reachability.analysis import (
    acceptance_inner,
    chain_validity,
    chains_valid,
    run_thoughts,
    thought_top_nodes,
)
from circuits.reachability.construction import construction_model
from circuits.reachability.graphs import GraphConfig, make_problems
from circuits.reachability.model import ModelConfig, build_model
from circuits.reachability.probes import (
    GROUPS,
    SEPARATE_GROUPS,
    group_auc,
    group_means,
    inner_products,
    node_groups,
    reachable_set_probe,
    reachable_sets,
    roc_auc,
    separate_edge_groups,
    separate_node_groups,
    valid_steps,
)
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError, ShapeMismatchError
from tests.shapecheck import shapes_unchecked

GRAPH = GraphConfig(n_node_ids=16, n_levels=3, max_width=2, n_edges=12)


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads contend and run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pairwise_auc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    return np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])


def test_roc_auc_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40).astype(float)  # ties on purpose
        labels = rng.random(40) < 0.4
        assert roc_auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels))
    with pytest.raises(InterpError, match="needs both classes"):
        roc_auc(np.ones(3), np.ones(3, dtype=bool))


def test_node_groups_follow_their_definitions():
    problems = make_problems(GRAPH, 40, seed=21)
    masks = node_groups(problems, 3, GRAPH.n_node_ids)
    for b, p in enumerate(problems):
        for c in (1, 2, 3):
            as_sets = [set(masks[b, c - 1, :, g].nonzero().flatten().tolist()) for g in range(len(GROUPS))]
            reachable = {v for v in p.nodes if p.distance.get(v, 99) <= c}
            assert as_sets[0] == reachable
            assert as_sets[1] == set(p.nodes) - reachable
            assert as_sets[2] == {v for v in p.nodes if p.distance.get(v) == c}
            assert as_sets[3] == ({p.path[c]} if c < len(p.path) else set())
            assert as_sets[3] <= as_sets[2] <= as_sets[0]


def test_group_means_equal_a_loop():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(7, 2, 5, generator=gen)
    masks = torch.rand(7, 2, 5, 4, generator=gen) < 0.5
    table = group_means(values, masks, "x")
    for row in table.itertuples():
        g = GROUPS.index(row.group)
        picked = [values[b, row.step - 1, i].item() for b in range(7) for i in range(5) if masks[b, row.step - 1, i, g]]
        assert row.mean == pytest.approx(np.mean(picked)) and row.n == len(picked)
        assert row.sem == pytest.approx(np.std(picked, ddof=1) / np.sqrt(len(picked)))
    with pytest.raises(ShapeMismatchError, match="values has shape"), shapes_unchecked():
        group_means(values[:, :1], masks, "x")


def test_linear_probe_reads_the_reachable_set_from_constructed_thoughts(one_thread):
    layout = SequenceLayout(GRAPH, 3)
    model = construction_model(layout)
    fit, score = make_problems(GRAPH, 300, seed=22), make_problems(GRAPH, 200, seed=23)
    fit_thoughts, score_thoughts = (
        run_thoughts(model, fit, layout, fixed=True).thoughts,
        run_thoughts(model, score, layout, fixed=True).thoughts,
    )
    auc = reachable_set_probe(fit_thoughts, reachable_sets(fit, 3, 16), score_thoughts, reachable_sets(score, 3, 16))
    assert isinstance(auc, pd.DataFrame) and set(auc["step"]) == {1, 2, 3}
    assert auc["auc"].min() > 0.97
    # a probe on shuffled labels reads nothing
    shuffled = reachable_sets(fit, 3, 16)[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    chance = reachable_set_probe(fit_thoughts, shuffled, score_thoughts, reachable_sets(score, 3, 16))
    assert 0.35 < chance["auc"].mean() < 0.65


def test_separate_groups_follow_their_definitions():
    problems = make_problems(GRAPH, 40, seed=24)
    nodes, edges = separate_node_groups(problems, 3, GRAPH.n_node_ids), separate_edge_groups(problems, 3)
    valid = valid_steps(problems, 3)
    for b, p in enumerate(problems):
        # optimal nodes by enumerating every root -> answer walk of the answer's length
        children = {}
        for a, t in p.edges:
            children.setdefault(a, []).append(t)
        walks = [[p.root]]
        for _ in range(p.n_hops):
            walks = [w + [t] for w in walks for t in children.get(w[-1], [])]
        walks = [w for w in walks if w[-1] == p.answer]
        for c in (1, 2, 3):
            assert bool(valid[b, c - 1]) == (c <= p.n_hops)
            as_sets = [set(nodes[b, c - 1, :, g].nonzero().flatten().tolist()) for g in range(len(SEPARATE_GROUPS))]
            if c > p.n_hops:
                assert not any(as_sets) and not edges[b, c - 1].any()
                continue
            optimal = {w[c] for w in walks}
            assert as_sets[0] == optimal
            assert as_sets[1] == {v for v in p.nodes if p.distance.get(v) == c} - optimal
            assert as_sets[2] == {v for v in p.nodes if p.distance.get(v, 99) < c}
            assert as_sets[3] == {v for v in p.nodes if c < p.distance.get(v, -1)}
            assert as_sets[4] == {v for v in p.nodes if v not in p.distance}
            assert sum(len(s) for s in as_sets) == len(p.nodes)  # disjoint and covering
            for i, (a, t) in enumerate(p.edges):
                group = SEPARATE_GROUPS[int(edges[b, c - 1, i].nonzero().item())]
                on_walk = any(w[c - 1] == a and w[c] == t for w in walks)
                expected = (
                    "never_reachable"
                    if a not in p.distance
                    else "optimal_path"
                    if on_walk
                    else "frontier_minus_optimal"
                    if p.distance[a] == c - 1
                    else "visited"
                    if p.distance[a] < c - 1
                    else "reachable_minus_frontier"
                )
                assert group == expected


def test_acceptance_on_the_construction_and_on_a_random_model(one_thread):
    """Positive control: the construction's thoughts weigh every frontier node equally (share ~ 1, large z).
    Negative control: an untrained model's thoughts do not single out the frontier (share far from 1 or z small)."""
    layout = SequenceLayout(GRAPH, 3)
    problems = make_problems(GRAPH, 300, seed=25)
    model = construction_model(layout)
    result = acceptance_inner(model, problems, layout, steps=(1, 2))
    for c in (1, 2):
        share, z, n = result[c]
        assert share == pytest.approx(1.0, abs=0.05) and z > 5 and n > 100
    # the pooled share equals one computed from the group means table
    run = run_thoughts(model, problems, layout)
    table = group_means(
        inner_products(model, run.thoughts, 16), separate_node_groups(problems, 3, 16), "inner_product", SEPARATE_GROUPS
    ).set_index(["step", "group"])["mean"]
    for c in (1, 2):
        by_table = (table[(c, "frontier_minus_optimal")] - table[(c, "never_reachable")]) / (
            table[(c, "optimal_path")] - table[(c, "never_reachable")]
        )
        assert result[c][0] == pytest.approx(by_table, rel=1e-6)
    random_model = build_model(layout, ModelConfig(d_model=32, n_heads=4, d_mlp=64), seed=3).eval()
    for c, (share, z, n) in acceptance_inner(random_model, problems, layout, steps=(1, 2)).items():
        assert z < 5 or abs(share - 1) > 0.5


def test_group_auc_equals_pairwise_auc():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 2, 5, generator=gen)
    masks = torch.zeros(6, 2, 5, 5, dtype=torch.bool)
    groups = torch.randint(0, 5, (6, 2, 5), generator=gen)
    masks.scatter_(3, groups[..., None], True)
    table = group_auc(scores, masks)
    for row in table.itertuples():
        g = SEPARATE_GROUPS.index(row.group)
        pos = scores[:, row.step - 1][masks[:, row.step - 1, :, g]].numpy()
        neg = scores[:, row.step - 1][masks[:, row.step - 1, :, 4]].numpy()
        values, labels = np.concatenate([pos, neg]), np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
        assert row.auc == pytest.approx(pairwise_auc(values, labels))


def test_edge_following_diagnostics_on_the_construction_and_a_slow_loop(one_thread):
    """The construction's thought c puts its top logit on a node of V_c (its answer head is separate, so check
    against a loop over the thoughts); the chain check against hand-made chains."""
    layout = SequenceLayout(GRAPH, 3)
    problems = make_problems(GRAPH, 60, seed=26)
    model = build_model(layout, ModelConfig(d_model=32, n_heads=4, d_mlp=64), seed=5).eval()
    result = thought_top_nodes(model, problems, layout)
    run = run_thoughts(model, problems, layout)
    logits = run.thoughts @ model.W_U + model.b_U
    for c, (share, chance, n) in result.items():
        picked = [p for p in problems if p.n_hops >= c]
        hits = [max(p.nodes, key=lambda v: logits[problems.index(p), c - 1, v].item()) in p.frontier(c) for p in picked]
        assert n == len(picked) and share == pytest.approx(np.mean(hits))
        assert chance == pytest.approx(np.mean([len(p.frontier(c)) / len(p.nodes) for p in picked]))
    first, full = chain_validity(model, problems, layout)
    assert 0 <= full <= first <= 1
    # hand-made chains: the true path; a wrong first hop; a valid first hop then a non-edge
    p = max(problems, key=lambda q: q.n_hops)
    marker = layout.special("[A]")

    def chain(hops):
        tokens = layout.padded(layout.head_tokens(p) + hops + [marker, p.answer])
        return torch.tensor([tokens])

    good = chain(list(p.path[1:]))
    stranger = next(v for v in p.nodes if (p.root, v) not in p.edges)
    bad_first = chain([stranger] + list(p.path[2:]))
    bad_later = chain([p.path[1], p.root] + list(p.path[3:]))
    generated = torch.cat([good, bad_first, bad_later])
    assert chains_valid(generated, [p, p, p], layout) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
