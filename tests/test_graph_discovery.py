"""ACDC-style greedy pruning and minimality checks (interp.graph.discovery): the planted circuit as ground
truth, exact edge patching (interp.graph.patch_edges, separate code) as the independent check."""

import numpy as np
import pytest

from interp.errors import InterpError
from interp.graph import ComputationGraph, circuit_metric, patch_edges
from interp.graph.discovery import acdc, minimality
from interp.graph.planted import PLANTED_EDGES, planted_model, planted_task


@pytest.fixture(scope="module")
def planted():
    task = planted_task(planted_model(0.0))
    return task, ComputationGraph(task.model)


def test_acdc_recovers_the_planted_circuit_and_nothing_else(planted):
    task, graph = planted
    circuit = acdc(task, graph, tau=0.01)
    found = set(zip(circuit["upstream"], circuit["downstream"]))
    exact = patch_edges(task, graph, list(PLANTED_EDGES)).set_index(["upstream", "downstream"])["effect"]
    gap = task.clean_metric - task.corrupted_metric
    strong = {edge for edge, effect in exact.items() if abs(effect / gap) > 0.2}
    assert len(strong) == 4
    assert strong <= found <= set(PLANTED_EDGES)
    # the reported metric is the circuit's metric, and it recovers the behaviour
    assert circuit.attrs["metric"] == pytest.approx(circuit_metric(task, graph, [circuit.index.tolist()])[0], abs=1e-6)
    assert circuit.attrs["recovered"] > 0.9
    assert (circuit["damage"] >= 0.01).all()  # every kept edge failed its removal test
    assert circuit.attrs["n_tests"] < len(graph)  # edges into nodes that send nothing were dropped untested


def test_acdc_on_candidates_and_thresholds(planted):
    task, graph = planted
    everything = acdc(task, graph, tau=1e9)  # every removal is accepted
    assert len(everything) == 0 and everything.attrs["metric"] == pytest.approx(task.corrupted_metric, abs=1e-5)
    only = acdc(task, graph, tau=0.01, candidates=list(PLANTED_EDGES))
    assert set(zip(only["upstream"], only["downstream"])) <= set(PLANTED_EDGES)
    assert only.attrs["n_candidates"] == len(PLANTED_EDGES)
    with pytest.raises(InterpError, match="tau"):
        acdc(task, graph, tau=-1)
    with pytest.raises(InterpError, match="candidates is empty"):
        acdc(task, graph, candidates=[])
    with pytest.raises(InterpError, match="'a7.h0'"):
        acdc(task, graph, candidates=[("a7.h0", "logits")])


def test_minimality_of_the_whole_graph_is_exact_edge_patching(planted):
    """Removing one edge from the whole graph is patching that edge: the drop is -effect / gap."""
    task, graph = planted
    some = [8, 43, 60, 100, 182]
    whole = minimality(task, list(range(len(graph))), graph)
    exact = patch_edges(task, graph, graph.edges.loc[some])
    gap = task.clean_metric - task.corrupted_metric
    np.testing.assert_allclose(whole.loc[some, "drop"], -exact["effect"].to_numpy() / gap, atol=2e-4)
    assert whole.attrs["recovered"] == pytest.approx(1.0, abs=1e-5)
    circuit = minimality(task, list(PLANTED_EDGES), graph)
    assert circuit.attrs["recovered"] > 0.9
    assert (circuit.set_index("upstream").loc["a1.h2", "drop"]) > 0.9  # the planted head's output is needed
    with pytest.raises(InterpError, match="circuit is empty"):
        minimality(task, [], graph)


def test_circuits_within_candidates_equal_the_dense_circuit_metric(tiny_model):
    """circuit_metrics_within (kept edges only, over the corrupted residual stream) against circuit_metrics_given
    (every edge of the graph ablated or not, separate code) on random circuits inside random candidate sets."""
    from interp.graph.scores import circuit_metrics_given, circuit_metrics_within, corrupted_senders
    from tests.test_graph import make_task

    task, graph = make_task(tiny_model), ComputationGraph(tiny_model)
    rng = np.random.default_rng(0)
    candidates = sorted(rng.choice(len(graph), 60, replace=False).tolist())
    kept = [[], candidates] + [sorted(rng.choice(candidates, n, replace=False).tolist()) for n in (5, 20, 40)]
    dense = circuit_metrics_given(task, graph, kept, corrupted_senders(task, graph))
    within = circuit_metrics_within(task, graph, kept, candidates)
    np.testing.assert_allclose(within, dense, atol=1e-5)
    assert within[0] == pytest.approx(task.corrupted_metric, abs=1e-5)  # nothing kept: the corrupted run
    assert len(set(np.round(within, 4))) >= 3  # the circuits differ, so the check can fail
    whole = circuit_metrics_within(task, graph, [list(range(len(graph)))], list(range(len(graph))))
    assert whole[0] == pytest.approx(task.clean_metric, abs=1e-5)
    with pytest.raises(InterpError, match="kept\\[0\\]: edges \\[.*\\] are not among the candidates"):
        circuit_metrics_within(task, graph, [[c for c in range(len(graph)) if c not in candidates][:1]], candidates)
    with pytest.raises(InterpError, match="candidates is empty"):
        circuit_metrics_within(task, graph, [[]], [])


def test_constant_metrics_are_refused(tiny_model):
    """Clean and corrupted prompts with the same metric (nothing for a circuit to recover), and a metric whose
    gradient is zero at every receiver, each give a clear error naming the cause."""
    import torch

    from interp.graph import attribute_edges
    from interp.patching.task import PatchingTask

    graph = ComputationGraph(tiny_model)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(1, tiny_model.cfg.d_vocab, (3, 8), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(1, tiny_model.cfg.d_vocab, (3,), generator=g)
    answers = torch.randint(1, tiny_model.cfg.d_vocab, (3,), generator=g)
    same = PatchingTask(
        tiny_model, clean, clean.clone(), answers=answers, wrong_answers=(answers + 1) % tiny_model.cfg.d_vocab
    )
    with pytest.raises(InterpError, match="clean and corrupted metrics are equal"):
        acdc(same, graph)
    with pytest.raises(InterpError, match="clean and corrupted metrics are equal"):
        minimality(same, [0, 1], graph)
    # answer == wrong answer: the logit difference is 0 on every input, so its gradient is zero everywhere
    flat = PatchingTask(tiny_model, clean, corrupted, answers=answers, wrong_answers=answers.clone())
    assert flat.clean_metric == flat.corrupted_metric == 0
    with pytest.raises(InterpError, match="gradient is zero at every receiver"):
        attribute_edges(flat, graph)
