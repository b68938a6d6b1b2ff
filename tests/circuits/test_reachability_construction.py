"""The hand-set construction: answers, thoughts equal to normalised reachable sets, attention on the right edges."""

import math

import pytest
import torch

from circuits.reachability.analysis import answer_accuracy, run_thoughts
from circuits.reachability.construction import construction_model, zero_mean_basis
from circuits.reachability.graphs import GraphConfig, make_problems
from circuits.reachability.probes import edge_attention
from circuits.reachability.tokens import SequenceLayout
from tests.circuits.test_reachability_data import closure_distances

GRAPH = GraphConfig(n_node_ids=16, n_levels=3, max_width=2, n_edges=12)
LAYOUT = SequenceLayout(GRAPH, 3)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def constructed():
    return construction_model(LAYOUT)


def ideal_thoughts(model, problems):
    """|V_c|^(-1/2) sum of W_E[v] over V_c, with V_c from boolean matrix powers (not the generator's BFS)."""
    rows = []
    for p in problems:
        distance = closure_distances(p, GRAPH.n_node_ids)
        rows.append(
            [
                model.W_E[[v for v, d in distance.items() if d <= c]].sum(0)
                / math.sqrt(sum(d <= c for d in distance.values()))
                for c in (1, 2, 3)
            ]
        )
    return torch.stack([torch.stack(r) for r in rows])


def check(model, problems):
    run = run_thoughts(model, problems, LAYOUT, fixed=True)
    errors = (run.thoughts - ideal_thoughts(model, problems)).norm(dim=-1)
    return answer_accuracy(run, problems, LAYOUT), errors.max().item()


def test_construction_solves_held_out_problems(constructed):
    accuracy, max_error = check(constructed, make_problems(GRAPH, 500, seed=11))
    assert accuracy == 1.0
    assert max_error < TOLERANCE


@pytest.mark.slow
def test_construction_on_ten_thousand_problems(constructed):
    accuracy, max_error = check(constructed, make_problems(GRAPH, 10_000, seed=12))
    assert accuracy == 1.0 and max_error < TOLERANCE


def test_construction_on_a_bigger_graph_family():
    graph = GraphConfig(n_node_ids=30, n_levels=4, max_width=3, n_edges=26)
    layout = SequenceLayout(graph, 4)
    model = construction_model(layout)
    problems = make_problems(graph, 200, seed=13)
    run = run_thoughts(model, problems, layout, fixed=True)
    ideal = torch.stack(
        [
            torch.stack(
                [
                    model.W_E[sorted(p.reachable_within(c))].sum(0) / math.sqrt(len(p.reachable_within(c)))
                    for c in range(1, 5)
                ]
            )
            for p in problems
        ]
    )
    assert answer_accuracy(run, problems, layout) == 1.0
    assert (run.thoughts - ideal).norm(dim=-1).max() < TOLERANCE


def test_layer2_attends_to_edges_leaving_the_current_set(constructed):
    problems = make_problems(GRAPH, 100, seed=14)
    run = run_thoughts(constructed, problems, LAYOUT, fixed=True)
    mass = edge_attention(constructed, run.residual, LAYOUT, 3, head=0)  # [batch, step, edge]; heads 1, 2 rest on BOS
    for b, p in enumerate(problems):
        for c in (1, 2, 3):
            leaving = torch.tensor([p.distance.get(s, 99) <= c - 1 for s, _ in p.edges])
            if leaving.any():
                assert mass[b, c - 1, leaving].sum() > 0.999
                torch.testing.assert_close(
                    mass[b, c - 1, leaving],
                    torch.full((int(leaving.sum()),), 1 / leaving.sum().item()),
                    atol=0,
                    rtol=0.03,
                )  # uniform up to the thought error x the score gain
            assert mass[b, c - 1, ~leaving].sum() < 1e-4


def test_basis_is_orthonormal_and_zero_mean():
    basis = zero_mean_basis(10)
    torch.testing.assert_close(basis.T @ basis, torch.eye(9, dtype=torch.float64))
    torch.testing.assert_close(basis.sum(0), torch.zeros(9, dtype=torch.float64))


def test_embeddings_and_every_write_have_zero_mean(constructed):
    for name, weight in constructed.state_dict().items():
        if name.endswith(("W_E", "W_pos", "W_O", "W_out")):
            torch.testing.assert_close(
                weight.sum(-1),
                torch.zeros_like(weight.sum(-1)),
                atol=1e-6 * weight.abs().max().item(),
                rtol=0,
                msg=name,
            )
