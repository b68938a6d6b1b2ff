"""experiments/circuit.py: the config's checks, the planted ground truth end to end, and (slow) the quick run."""

import dataclasses
import json

import pytest

from experiments.circuit import CircuitConfig, planted_results, run
from interp.errors import InterpError


def test_config_refuses_bad_input():
    with pytest.raises(InterpError, match="methods: 'eapig'.*Did you mean"):
        CircuitConfig(methods=("eapig",))
    with pytest.raises(InterpError, match="metric: 'accuracy'"):
        CircuitConfig(metric="accuracy")
    with pytest.raises(InterpError, match="steps=0"):
        CircuitConfig(steps=0)
    with pytest.raises(InterpError, match="planted_leaks"):
        CircuitConfig(planted_leaks=(1.5,))
    with pytest.raises(InterpError, match="pairs is empty"):
        CircuitConfig(pairs=())
    with pytest.raises(InterpError, match="copy_length=1"):
        CircuitConfig(copy_length=1)
    with pytest.raises(InterpError, match="bound_subsets=0"):
        CircuitConfig(bound_subsets=0)
    with pytest.raises(InterpError, match="acdc_tau=-0.1"):
        CircuitConfig(acdc_tau=-0.1)
    quick = CircuitConfig.quick()
    assert dataclasses.replace(quick) == quick  # frozen and rebuildable


def test_planted_results_recover_the_circuit():
    config = dataclasses.replace(
        CircuitConfig.quick(), planted_leaks=(0.0,), shuffles=50, planted_curve_sizes=(0, 6, 190)
    )
    results, table, curves = planted_results(config)
    leak0 = results["leak=0"]
    assert leak0["auc"]["exact"] >= 0.95 and leak0["n_planted"] == 6
    assert set(leak0["auc"]) == {"exact", "eap", "eap-ig"}
    assert 0.35 < leak0["shuffled_auc_mean"] < 0.65
    # the 6 planted edges alone carry the whole behaviour, for the exact ranking
    assert leak0["faithfulness"]["exact"]["6"] == pytest.approx(1.0, abs=1e-3)
    assert len(table) == 3 * 190 and set(curves["method"]) == {"exact", "eap", "eap-ig"}


@pytest.mark.slow
def test_quick_run_writes_agreement_and_planted_auc(tmp_path):
    out = run(CircuitConfig.quick(), tmp_path / "circuit")
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("eap", "eap-ig"):
        assert set(metrics["agreement"][method]) >= {"spearman", "recall_at_20"}
    assert metrics["planted_auc"]["exact"] >= 0.95
    assert (out / "edges.parquet").exists() and (out / "faithfulness.parquet").exists()
    assert set(metrics["heldout_faithfulness"]["heldout"]) == {"eap", "eap-ig"}
    assert set(metrics["copy"]["agreement"]) == {"eap", "eap-ig"} and metrics["copy"]["clean_metric"] > 0
    assert metrics["acdc"]["leak=0"]["n_extra"] == 0


def test_exact_method_scores_every_edge_and_judges_agreement_on_all_of_them():
    """--method exact: every edge patched; each approximate method's agreement on the whole graph beside the one on
    its own top edges; the two exact code paths (the top-edge verification, the whole graph) give the same numbers."""
    import numpy as np

    from experiments.circuit import task_results
    from interp.graph import ComputationGraph, agreement
    from interp.graph.planted import planted_model, planted_task

    task = planted_task(planted_model(0.1, seed=0), seed=0)
    graph = ComputationGraph(task.model)
    config = dataclasses.replace(
        CircuitConfig.quick(),
        methods=("eap", "exact"),
        verify_top=30,
        heldout=False,
        graddrop=False,
        curve_sizes=(0, 6),
    )
    metrics, tables = task_results(config, task, graph, [], timings=False)
    edges = tables["edges"]
    exact = edges[edges["method"] == "exact"]
    eap = edges[edges["method"] == "eap"]
    assert len(exact) == len(eap) == len(graph)
    verified = eap[eap["exact_effect"].notna()]
    assert len(verified) == 30
    np.testing.assert_allclose(verified["exact_effect"], exact.loc[verified.index, "effect"], atol=1e-5)
    whole = metrics["agreement_all_edges"]["eap"]
    assert whole == agreement(eap, exact, config.k) and whole["n_edges"] == len(graph)
    assert metrics["agreement"]["eap"]["n_edges"] == 30 and "exact" not in metrics["agreement"]
    assert set(tables["faithfulness"]["method"]) == {"eap", "exact"}
    with pytest.raises(InterpError, match="methods: 'exakt'.*Did you mean: 'exact'"):
        CircuitConfig(methods=("exakt",))
