"""The circuit page (dashboards/circuit.py) built from a real run of the experiment's pieces on the planted model:
what it draws and tabulates is checked against the run's own tables and an exact recomputation."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from dashboards import build_dashboard, sections_for
from dashboards.circuit import circuit_figure, node_position
from experiments.circuit import CircuitConfig, acdc_results, planted_results, task_results
from interp.attribution.graddrop import patch_nodes
from interp.graph import ComputationGraph
from interp.graph.planted import planted_model, planted_task
from interp.results import ResultsDir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = dataclasses.replace(
        CircuitConfig.quick(),
        heldout=False,
        graddrop=True,
        verify_top=40,
        curve_sizes=(0, 6, 20, 190),
        planted_leaks=(0.0,),
        planted_curve_sizes=(0, 6, 190),
        shuffles=20,
        bound_verify_top=4,
        bound_subsets=4,
    )
    task = planted_task(planted_model(0.1))
    graph = ComputationGraph(task.model)
    metrics, tables = task_results(config, task, graph, list(range(task.n_prompts)), timings=False)
    out = ResultsDir.create(tmp_path_factory.mktemp("circuit") / "run", config, title="planted circuit page")
    for name, table in tables.items():
        out.save_table(name, table)
    metrics["planted"], planted_table, planted_curves = planted_results(config)
    metrics["planted_auc"] = metrics["planted"]["leak=0"]["auc"]
    metrics["acdc"], acdc_table = acdc_results(config)
    out.save_table("planted_faithfulness", planted_curves)
    out.save_table("planted_acdc", acdc_table)
    out.write_metrics(metrics, merge=False)
    return out, task, graph


def test_page_sections_hold_the_runs_numbers(run):
    out, task, graph = run
    metrics = out.metrics()
    sections = {s.title: s for s in sections_for(out)}
    agreement = sections["Agreement with exact edge patching"].table.set_index("method")
    for method in ("eap", "eap-ig"):
        assert agreement.loc[method, "spearman vs exact"] == pytest.approx(metrics["agreement"][method]["spearman"])
    top = sections["Capital pairs: top edges"].table
    for method, rows in top.groupby("method", sort=False):
        assert (np.diff(rows["effect"].abs().to_numpy()) <= 1e-12).all()  # largest |score| first
    nodes = sections["Capital pairs: node scores (exact vs AtP vs GradDrop)"].table.set_index("node")
    exact = patch_nodes(task, graph).set_index("node")["effect"]
    np.testing.assert_allclose(nodes["exact"], exact[nodes.index], atol=1e-6)  # an independent exact run
    assert list(nodes.index[:2]) == list(exact.abs().sort_values(ascending=False).index[:2])
    planted = sections["Planted circuit: ground truth"]
    assert f"exact {metrics['planted_auc']['exact']:.3g}" in planted.text
    assert set(planted.table.columns) >= {"upstream", "downstream", "drop", "damage"}
    curves = sections["Capital pairs: faithfulness curves"].figures[0]
    assert {t.name for t in curves.data} == {"eap (insample)", "eap-ig (insample)"}


def test_circuit_drawing_width_and_colour_follow_the_scores():
    edges = pd.DataFrame(
        {
            "upstream": ["embed", "m0", "a1.h2", "a0.h1"],
            "downstream": ["m0", "a1.kv1.v", "logits", "a1.h2.q"],
            "effect": [0.5, -1.0, 2.0, -0.25],
        }
    )
    fig = circuit_figure(edges, "test", n_layers=3)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == len(edges)
    widths = [t.line.width for t in lines]
    assert widths == sorted(widths, key=lambda w: [1 + 7 * abs(e) / 2.0 for e in edges["effect"]].index(w))
    assert [t.line.color for t in lines] == ["#1f77b4", "#d62728", "#1f77b4", "#d62728"]
    # layers left to right: every edge goes rightwards (a receiver's node is in a later layer or the same layer's MLP)
    assert all(t.x[1] > t.x[0] for t in lines)
    assert node_position("a1.kv1", 3)[0] < node_position("a1.h2", 3)[0] == 1.0 < node_position("m1", 3)[0]
    assert node_position("logits", 3)[0] == 3.0 and node_position("embed", 3)[0] == -1.0


def test_page_builds_with_its_figures(run):
    out, _, _ = run
    html = build_dashboard(out).read_text()
    n_figures = sum(len(s.figures) for s in sections_for(out))
    assert n_figures == 4  # two circuits (eap, eap-ig), the curves, the planted curves
    assert html.count("Plotly.newPlot(") == n_figures
    assert "top circuit by eap-ig" in html and "Planted circuit: ground truth" in html
