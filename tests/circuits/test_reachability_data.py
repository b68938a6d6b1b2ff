"""Graph generator, split and sequence layout, checked against independent computations."""

from dataclasses import replace

import pytest
import torch

from circuits.reachability.graphs import GraphConfig, make_problems, split_by_graph
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError

CONFIG = GraphConfig(
    n_node_ids=16, n_levels=3, min_width=1, max_width=2, n_edges=15
)  # widths 1-2 and 3+ extra edges: several shortest paths


def closure_distances(problem, n_ids):
    """Shortest distances by boolean adjacency-matrix powers (independent of the generator's BFS)."""
    adjacency = torch.zeros(n_ids, n_ids, dtype=torch.bool)
    for a, b in problem.edges:
        adjacency[a, b] = True
    frontier = torch.zeros(n_ids, dtype=torch.bool)
    frontier[problem.root] = True
    seen, distance = frontier.clone(), {problem.root: 0}
    for step in range(1, n_ids):
        frontier = (frontier.float() @ adjacency.float()).bool() & ~seen
        seen |= frontier
        distance.update({int(v): step for v in frontier.nonzero().flatten()})
    return distance


def is_acyclic(edges) -> bool:
    """Kahn's algorithm: every node can be removed once its in-degree is zero."""
    nodes = {v for e in edges for v in e}
    indegree = {v: sum(b == v for _, b in edges) for v in nodes}
    ready, removed = [v for v in nodes if indegree[v] == 0], 0
    while ready:
        v = ready.pop()
        removed += 1
        for a, b in edges:
            if a == v:
                indegree[b] -= 1
                if indegree[b] == 0:
                    ready.append(b)
    return removed == len(nodes)


def brute_force_path_nodes(problem, hop):
    """Nodes at position `hop` of any root -> answer walk of the answer's length (enumerating every walk)."""
    children = {}
    for a, b in problem.edges:
        children.setdefault(a, []).append(b)
    length = problem.distance[problem.answer]
    walks = [[problem.root]]
    for _ in range(length):
        walks = [w + [b] for w in walks for b in children.get(w[-1], [])]
    return {w[hop] for w in walks if w[-1] == problem.answer}


@pytest.fixture(scope="module")
def problems():
    return make_problems(CONFIG, 300, seed=0)


def test_graphs_are_dags_with_the_promised_candidates(problems):
    for p in problems:
        assert len(p.edges) == CONFIG.n_edges and len(set(p.edges)) == CONFIG.n_edges
        assert is_acyclic(p.edges)
        assert all(a in p.nodes and b in p.nodes for a, b in p.edges)
        distance = closure_distances(p, CONFIG.n_node_ids)
        assert distance == p.distance
        reachable = [c for c in p.candidates if c in distance]
        assert reachable == [p.answer] and len(set(p.candidates)) == 2
        assert distance[p.answer] >= CONFIG.min_distance
        assert len(p.path) == distance[p.answer] + 1 and p.path[0] == p.root and p.path[-1] == p.answer
        assert all(edge in p.edges for edge in zip(p.path, p.path[1:]))
        for c in range(CONFIG.n_levels + 1):
            assert p.reachable_within(c) == {v for v, d in distance.items() if d <= c}
            assert p.frontier(c) == {v for v, d in distance.items() if d == c}


def test_node_ids_are_shuffled_unless_asked_for_level_order(problems):
    # shuffled ids: about half the edges go from a larger to a smaller id, so ids carry no level order
    share = sum(a < b for p in problems for a, b in p.edges) / sum(len(p.edges) for p in problems)
    assert 0.35 < share < 0.65
    ordered = make_problems(replace(CONFIG, shuffle_ids=False), 100, seed=0)
    assert all(a < b for p in ordered for a, b in p.edges)


def test_default_graphs_branch(problems):
    default = make_problems(GraphConfig(), 400, seed=5)
    for c in (1, 2):  # the bar: the frontier holds more than one node in >= 60% of problems at steps 1 and 2
        assert sum(len(p.frontier(c)) > 1 for p in default) / len(default) >= 0.6
    assert min(len(p.frontier(1)) for p in default) >= 2  # two nodes per level per component: the root always branches


def test_on_shortest_paths_equals_walk_enumeration(problems):
    assert sum(len(p.on_shortest_paths(1)) > 1 for p in problems) > 20  # the check below sees branching paths
    for p in problems[:80]:
        for hop in range(p.n_hops + 1):
            assert p.on_shortest_paths(hop) == brute_force_path_nodes(p, hop)
        assert p.n_hops == len(p.path) - 1 and set(p.path[1:2]) <= p.on_shortest_paths(1)


def test_generation_is_seeded_and_covers_every_distance(problems):
    assert make_problems(CONFIG, 300, seed=0) == problems
    assert make_problems(CONFIG, 300, seed=1) != problems
    assert {len(p.path) - 1 for p in problems} == set(range(CONFIG.min_distance, CONFIG.n_levels + 1))
    assert 0.4 < sum(p.candidates[0] == p.answer for p in problems) / len(problems) < 0.6


def test_split_by_graph_keeps_graphs_on_one_side(problems):
    doubled = problems + problems[:50]  # the same graph twice must land on one side
    train, test = split_by_graph(doubled, 0.2, seed=0)
    assert len(train) + len(test) == len(doubled)
    assert not {p.graph_key for p in train} & {p.graph_key for p in test}
    assert 0.1 < len(test) / len(doubled) < 0.3


def test_layout_places_every_token(problems):
    layout = SequenceLayout(CONFIG, CONFIG.n_levels)
    p = max(problems, key=lambda q: len(q.path))
    for n_latent in range(CONFIG.n_levels + 1):
        tokens = layout.encode(p, n_latent)
        assert len(tokens) == layout.seq_len
        assert tokens[0] == layout.special("BOS")
        for i, (a, b) in enumerate(p.edges):
            s, t, sep = layout.edge_positions(i)
            assert (tokens[s], tokens[t], tokens[sep]) == (a, b, layout.special("|"))
        assert tokens[layout.question] == layout.special("[Q]")
        assert tuple(tokens[q] for q in layout.candidate_positions) == p.candidates
        assert tokens[layout.root] == p.root and tokens[layout.root - 1] == layout.special("[R]")
        chain = [tokens[q] for q in layout.chain]
        assert chain == [layout.special("<latent>")] * n_latent + list(p.path[1 + n_latent :])
        assert tokens[layout.answer_marker] == layout.special("[A]") and tokens[-1] == p.answer
    short = min(problems, key=lambda q: len(q.path))
    assert [layout.encode(short)[q] for q in layout.chain] == list(short.path[1:]) + [short.answer] * (
        layout.n_chain + 1 - len(short.path)
    )
    assert SequenceLayout(CONFIG, 0).encode(p)[-3:] == [p.root, layout.special("[A]"), p.answer]
    assert layout.decode(layout.encode(p))[:4] == "BOS "
    assert layout.head_tokens(p) == layout.encode(p)[: layout.chain.start]
    swapped = layout.head_tokens(p, edges=p.edges[::-1], candidates=p.candidates[::-1])
    assert (
        swapped[1:4] == [p.edges[-1][0], p.edges[-1][1], layout.special("|")]
        and swapped[layout.candidate_positions[0]] == p.candidates[1]
    )
    padded = layout.padded(layout.head_tokens(p))
    assert len(padded) == layout.seq_len and set(padded[layout.chain.start :]) == {layout.special("<pad>")}


def test_bad_input_is_named():
    with pytest.raises(InterpError, match="n_edges=4 cannot hold"):
        GraphConfig(n_edges=4)
    with pytest.raises(InterpError, match="n_node_ids=5"):
        GraphConfig(n_node_ids=5)
    with pytest.raises(InterpError, match="min_distance=9"):
        GraphConfig(min_distance=9)
    layout = SequenceLayout(CONFIG, 3)
    p = make_problems(CONFIG, 1, seed=0)[0]
    with pytest.raises(InterpError, match="n_latent=4"):
        layout.encode(p, 4)
    with pytest.raises(InterpError, match="expects n_edges=16"):
        SequenceLayout(GraphConfig(n_edges=16), 3).encode(p)
    with pytest.raises(InterpError, match="problems is empty"):
        layout.encode_batch([])
    with pytest.raises(InterpError, match="test_fraction=1.5"):
        split_by_graph([p], 1.5, 0)
    with pytest.raises(InterpError, match="special token"):
        layout.special("[X]")
