"""The dense lookup objective (lookup.py) and the edge-count curriculum, against the adjacency matrix."""

import random

import pytest
import torch

from circuits.reachability.diagnostics import lookup_sample
from circuits.reachability.graphs import GraphConfig, make_problems
from circuits.reachability.lookup import IGNORE, dense_lookup_length, dense_lookup_sample
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError

GRAPH = GraphConfig(n_node_ids=24, n_levels=3, min_width=2, max_width=2, n_edges=16)
LAYOUT = SequenceLayout(GRAPH, 3)


def _adjacency(problem) -> torch.Tensor:
    adj = torch.zeros(GRAPH.n_node_ids, GRAPH.n_node_ids, dtype=torch.bool)
    for a, b in problem.edges:
        adj[a, b] = True
    return adj


@pytest.mark.parametrize("n_queries", [1, 4, 8, 12])
def test_dense_labels_are_children_of_the_queried_node(n_queries):
    rng = random.Random(0)
    for p in make_problems(GRAPH, 60, seed=3):
        adj = _adjacency(p)
        tokens, labels = dense_lookup_sample(p, LAYOUT, n_queries, rng)
        assert len(tokens) == len(labels) == dense_lookup_length(LAYOUT, n_queries)
        # the head is the real layout's: the problem's edges (reshuffled), [Q], its candidates, [R]
        edges = list(zip(tokens[1 : 3 * GRAPH.n_edges : 3], tokens[2 : 3 * GRAPH.n_edges : 3]))
        assert sorted(edges) == sorted(p.edges)
        assert set(tokens[LAYOUT.question + 1 : LAYOUT.question + 3]) == set(p.candidates)
        assert tokens[LAYOUT.root - 1] == LAYOUT.special("[R]")
        supervised = [i for i, y in enumerate(labels) if y != IGNORE]
        n_sources = int(adj.any(1).sum())
        assert len(supervised) == min(n_queries, n_sources)
        queried = []
        for i in supervised:
            u, v = tokens[i - 1], labels[i]
            assert v == tokens[i] and bool(adj[u, v]), f"label {v} is not a child of the queried node {u}"
            assert tokens[i - 2] == LAYOUT.special("[R]")
            queried.append(u)
        assert len(set(queried)) == len(queried)  # distinct queries: no answer can be copied from the query stream
        assert supervised[0] == LAYOUT.root + 1  # the first query sits in the root slot
        assert all(t == LAYOUT.special("<pad>") for t in tokens[supervised[-1] + 1 :])


def test_dense_children_are_drawn_uniformly():
    p = next(q for q in make_problems(GRAPH, 200, seed=4) if max(int(r) for r in _adjacency(q).sum(1)) >= 3)
    adj = _adjacency(p)
    u = int(adj.sum(1).argmax())
    rng, counts = random.Random(1), torch.zeros(GRAPH.n_node_ids)
    for _ in range(3000):
        tokens, labels = dense_lookup_sample(p, LAYOUT, 12, rng)
        for i, y in enumerate(labels):
            if y != IGNORE and tokens[i - 1] == u:
                counts[y] += 1
    kids = adj[u].nonzero().flatten()
    assert counts[~adj[u]].sum() == 0
    share = counts[kids] / counts.sum()
    assert torch.allclose(share, torch.full_like(share, 1 / len(kids)), atol=0.05)


def test_dense_lookup_length_rejects_no_queries():
    with pytest.raises(InterpError, match="n_queries"):
        dense_lookup_length(LAYOUT, 0)


@pytest.mark.parametrize("n_visible", [6, 10, 16])
def test_edge_curriculum_keeps_the_queried_edges_and_hides_the_rest(n_visible):
    rng, pad = random.Random(2), LAYOUT.special("<pad>")
    for p in make_problems(GRAPH, 40, seed=5):
        tokens, u, children = lookup_sample(p, LAYOUT, rng, n_visible)
        triples = [tokens[1 + 3 * i : 4 + 3 * i] for i in range(GRAPH.n_edges)]
        shown = [(a, b) for a, b, _ in triples if a != pad]
        assert all(t == [pad] * 3 for t in triples if t[0] == pad)
        assert set(shown) <= set(p.edges) and {(u, c) for c in children} <= set(shown)
        assert len(shown) == max(min(n_visible, GRAPH.n_edges), len(children))
        assert tokens[LAYOUT.root] == u and len(tokens) == LAYOUT.seq_len
