"""Probe helpers against hand-written loops, and the linear read-out on the construction's thoughts."""

import numpy as np
import pandas as pd
import pytest
import torch

from circuits.reachability.analysis import run_thoughts
from circuits.reachability.construction import construction_model
from circuits.reachability.graphs import GraphConfig, make_problems
from circuits.reachability.probes import GROUPS, group_means, node_groups, reachable_set_probe, reachable_sets, roc_auc
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError, ShapeMismatchError

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
    with pytest.raises(ShapeMismatchError, match="values has shape"):
        group_means(values[:, :1], masks, "x")


def test_linear_probe_reads_the_reachable_set_from_constructed_thoughts(one_thread):
    layout = SequenceLayout(GRAPH, 3)
    model = construction_model(layout)
    fit, score = make_problems(GRAPH, 300, seed=22), make_problems(GRAPH, 200, seed=23)
    auc = reachable_set_probe(run_thoughts(model, fit, layout).thoughts, reachable_sets(fit, 3, 16), run_thoughts(model, score, layout).thoughts, reachable_sets(score, 3, 16))
    assert isinstance(auc, pd.DataFrame) and set(auc["step"]) == {1, 2, 3}
    assert auc["auc"].min() > 0.97
    # a probe on shuffled labels reads nothing
    shuffled = reachable_sets(fit, 3, 16)[torch.randperm(300, generator=torch.Generator().manual_seed(0))]
    chance = reachable_set_probe(run_thoughts(model, fit, layout).thoughts, shuffled, run_thoughts(model, score, layout).thoughts, reachable_sets(score, 3, 16))
    assert 0.35 < chance["auc"].mean() < 0.65
