"""The single-step lookup diagnostic and teacher-forced hop accuracy against slow loops and planted answers."""

import random

import pytest
import torch

from circuits.reachability.diagnostics import (
    gold_chain_tokens,
    lookup_accuracy,
    lookup_hits,
    lookup_sample,
    teacher_forced_hops,
    train_lookup,
)
from circuits.reachability.graphs import GraphConfig, make_problems, split_by_graph
from circuits.reachability.model import ModelConfig, build_model
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError

GRAPH = GraphConfig(n_node_ids=16, n_levels=3, max_width=2, n_edges=12)
LAYOUT = SequenceLayout(GRAPH, 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(LAYOUT, ModelConfig(d_model=32, n_heads=4, d_mlp=64), seed=0)
    with torch.no_grad():  # larger weights: predictions spread over many tokens
        for p in m.parameters():
            p.mul_(3.0)
    return m.eval()


def _kids(problem, u):
    return {b for a, b in problem.edges if a == u}


def _on_shortest_path(problem, v, c):
    """v at distance c from the root and the answer exactly d(answer) - c steps from v (a BFS of its own)."""
    if problem.distance.get(v) != c:
        return False
    layer = {v}
    for _ in range(problem.distance[problem.answer] - c):
        layer = {b for a, b in problem.edges if a in layer}
    return problem.answer in layer


def test_lookup_sample_asks_for_a_child_of_the_slot_node():
    rng = random.Random(0)
    for p in make_problems(GRAPH, 40, seed=1):
        tokens, u, children = lookup_sample(p, LAYOUT, rng)
        assert len(tokens) == LAYOUT.seq_len and tokens[LAYOUT.root] == u and set(children) == _kids(p, u) and children
        assert sorted(zip(tokens[1 : 3 * GRAPH.n_edges : 3], tokens[2 : 3 * GRAPH.n_edges : 3])) == sorted(p.edges)
        assert tokens[LAYOUT.question + 1 : LAYOUT.question + 3] == list(p.candidates)


def test_lookup_hits_on_planted_logits():
    children = [[3, 5], [7], [1, 2, 4]]
    planted = torch.zeros(3, 20)
    planted[0, 5] = planted[1, 7] = planted[2, 1] = 1.0
    assert lookup_hits(planted, children).tolist() == [1.0, 1.0, 1.0]
    wrong = torch.zeros(3, 20)
    wrong[0, 4] = wrong[1, 6] = wrong[2, 9] = 1.0
    assert lookup_hits(wrong, children).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(InterpError, match="logits"):
        lookup_hits(planted, children[:2])


def test_lookup_accuracy_equals_a_slow_loop(model):
    problems = make_problems(GRAPH, 30, seed=2)
    acc, chance = lookup_accuracy(model, problems, LAYOUT, seed=4)
    rng, hits, chances = random.Random(4), [], []
    for p in problems:
        tokens, u, _ = lookup_sample(p, LAYOUT, rng)
        with torch.no_grad():
            guess = int(model(torch.tensor([tokens]))[0, LAYOUT.root].argmax())
        hits.append(guess in _kids(p, u))
        chances.append(len(_kids(p, u)) / len(p.nodes))
    assert acc == pytest.approx(sum(hits) / len(hits)) and chance == pytest.approx(sum(chances) / len(chances))
    assert 0 < chance < 0.5


def test_teacher_forced_hops_equal_a_slow_loop(model):
    problems = make_problems(GRAPH, 30, seed=3)
    got = teacher_forced_hops(model, problems, LAYOUT, seed=5)
    tokens, paths = gold_chain_tokens(problems, LAYOUT, seed=5)
    for b, (p, path) in enumerate(zip(problems, paths)):
        assert (
            path[0] == p.root
            and path[-1] == p.answer
            and all(e in p.edges for e in zip(path, path[1:]))
            and len(path) == p.n_hops + 1
        )
        assert tokens[b, LAYOUT.root : LAYOUT.root + len(path)].tolist() == path
    for c in range(1, 4):
        rows = [(b, p) for b, p in enumerate(problems) if p.n_hops >= c]
        child = on_path = 0
        for b, p in rows:
            with torch.no_grad():  # one problem at a time, the prefix up to path node c - 1 only
                guess = int(model(tokens[b : b + 1, : LAYOUT.root + c])[0, -1].argmax())
            child += guess in _kids(p, paths[b][c - 1])
            on_path += _on_shortest_path(p, guess, c)
        assert got[c]["n"] == len(rows)
        assert got[c]["child"] == pytest.approx(child / len(rows)) and got[c]["on_shortest_path"] == pytest.approx(
            on_path / len(rows)
        )
        assert (
            0 < got[c]["child_chance"] < 0.5 and 0 < got[c]["on_shortest_path_chance"] <= got[c]["child_chance"] + 0.5
        )


@pytest.mark.slow
def test_lookup_is_learned_on_small_graphs():
    """Positive control for the diagnostic: on one-level graphs (6 edges) the lookup is learned within 600 steps
    (discrete CoT's first hop there: 0.92 / 0.97 at 400 / 600 steps, d_model 64), well above its chance rate (~0.51:
    a uniform pick among the 6 nodes hits one of the queried node's children half the time)."""
    torch.set_num_threads(1)
    small = GraphConfig(n_node_ids=24, n_levels=1, min_width=2, max_width=2, n_edges=6, min_distance=1)
    layout = SequenceLayout(small, 1)
    train_problems, test_problems = split_by_graph(make_problems(small, 4000, seed=0), 0.1, seed=0)
    curve = train_lookup(
        train_problems,
        test_problems[:300],
        layout,
        ModelConfig(d_model=64, n_heads=4, d_mlp=256),
        steps=600,
        eval_every=600,
    )
    assert curve["lookup_acc"].iloc[-1] > curve["chance"].iloc[-1] + 0.3


def test_recall_control_asks_for_the_value_after_the_queried_key():
    from circuits.reachability.diagnostics import recall_accuracy, recall_sample

    rng = random.Random(2)
    for _ in range(50):
        tokens, key, (value,) = recall_sample(LAYOUT, rng)
        sources, targets = tokens[1 : 3 * GRAPH.n_edges : 3], tokens[2 : 3 * GRAPH.n_edges : 3]
        assert (
            len(set(sources)) == GRAPH.n_edges and tokens[LAYOUT.root] == key and targets[sources.index(key)] == value
        )
    model = build_model(LAYOUT, ModelConfig(d_model=16, n_heads=2, d_mlp=32), seed=0).eval()
    acc, chance = recall_accuracy(model, 40, LAYOUT, seed=3)
    rng = random.Random(3)
    rows = [recall_sample(LAYOUT, rng) for _ in range(40)]
    with torch.no_grad():
        guesses = model(torch.tensor([r[0] for r in rows]))[:, LAYOUT.root].argmax(-1).tolist()
    assert acc == pytest.approx(sum(g == r[2][0] for g, r in zip(guesses, rows)) / 40) and chance == 1 / 16
    with pytest.raises(InterpError, match="task"):
        train_lookup([1], [1], LAYOUT, ModelConfig(d_model=16, n_heads=2, d_mlp=32), steps=1, task="nope")
