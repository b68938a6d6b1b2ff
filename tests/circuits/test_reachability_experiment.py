"""The experiment end to end on a tiny budget, and the notebook in quick mode."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from experiments.reachability import ReachabilityConfig, run
from interp.errors import InterpError
from interp.results import ResultsDir

ROOT = Path(__file__).resolve().parents[2]


def tiny_config() -> ReachabilityConfig:
    quick = ReachabilityConfig.quick()
    return replace(
        quick,
        train=replace(quick.train, steps=6, warmup_steps=2, batch_size=16, eval_every=3),
        no_cot_steps=4,  # a format's own step count (the full run trains no CoT for fewer steps)
        n_problems=800,
        n_eval=50,
        n_curve=20,
        n_construction=100,
        n_probe=40,
        png=False,
    )


def test_run_writes_the_results_dir(tmp_path):
    threads = torch.get_num_threads()
    out = run(tiny_config(), tmp_path / "run")
    results = ResultsDir.open(out)
    metrics = results.metrics()
    for key in (
        "acc_continuous",
        "acc_discrete_cot",
        "acc_no_cot",
    ):  # shares of the n_eval held-out problems: whole counts over n_eval
        correct = metrics[key] * metrics["n_eval"]
        assert (
            metrics["n_eval"] == 50 and correct == pytest.approx(round(correct), abs=1e-6) and 0 <= round(correct) <= 50
        ), key
    for mode in ("continuous", "discrete_cot", "no_cot"):  # per answer distance: the shares recombine to the total
        by_hops = sum(
            metrics[f"acc_{mode}_hops{h}"] * metrics[f"n_eval_hops{h}"]
            for h in (1, 2, 3)
            if f"n_eval_hops{h}" in metrics
        )
        assert by_hops == pytest.approx(metrics[f"acc_{mode}"] * metrics["n_eval"], abs=1e-4)
        assert 0 <= metrics[f"train_acc_{mode}"] <= 1
    assert metrics["construction_acc"] == 1.0 and metrics["construction_max_error"] < metrics["construction_tolerance"]
    for step in (1, 2, 3):
        for group in (
            "frontier",
            "reachable",
            "not_reachable",
            "optimal",
            "optimal_path",
            "frontier_minus_optimal",
            "visited",
            "reachable_minus_frontier",
            "never_reachable",
        ):
            assert f"inner_{group}_step{step}" in metrics and f"construction_inner_{group}_step{step}" in metrics
            assert f"attention_{group}_step{step}" in metrics
        assert 0 <= metrics[f"frontier_gt1_fraction_step{step}"] <= 1
    assert metrics["frontier_gt1_fraction"] >= 0.6 and metrics["under_trained"] is True
    assert metrics["continuous_minus_discrete"] == pytest.approx(
        metrics["acc_continuous"] - metrics["acc_discrete_cot"]
    )
    n, p1, p2 = metrics["n_eval"], metrics["acc_continuous"], metrics["acc_discrete_cot"]
    pooled = (p1 + p2) / 2
    assert metrics["z"] == pytest.approx((p1 - p2) / (pooled * (1 - pooled) * 2 / n) ** 0.5, rel=1e-6)
    assert {
        "frontier_minus_optimal_gap_share_step1",
        "frontier_minus_optimal_z_step2",
        "label_order_shortcut_acc",
    } <= set(metrics)
    # the construction: never-reachable nodes get nothing, every frontier node the optimal node's weight
    assert abs(metrics["construction_inner_never_reachable_step1"]) < 1e-3
    assert metrics["construction_inner_frontier_minus_optimal_step1"] == pytest.approx(
        metrics["construction_inner_optimal_path_step1"], rel=0.1
    )
    curves = results.load_table("accuracy_curves")
    assert set(curves["method"]) == {"continuous", "discrete_cot", "no_cot"}
    assert curves.groupby("method")["step"].max().to_dict() == {"continuous": 6, "discrete_cot": 6, "no_cot": 4}
    assert (metrics["steps_trained_continuous"], metrics["steps_trained_no_cot"]) == (6, 4)
    losses = results.load_table("loss_curves")
    assert losses.groupby("method")["step"].max().to_dict() == {"continuous": 5, "discrete_cot": 5, "no_cot": 3}
    accuracy = results.load_table("accuracy").set_index("method")["accuracy"]
    assert accuracy["continuous"] == pytest.approx(metrics["acc_continuous"])
    inner = results.load_table("inner_products")
    row = inner[(inner.model == "construction") & (inner.group == "not_reachable") & (inner.step == 2)]
    assert (
        row["mean"].item() == pytest.approx(metrics["construction_inner_not_reachable_step2"])
        and abs(row["mean"].item()) < 1e-3
    )
    assert json.loads((out / "config.json").read_text())["analysis"] == "reachability"
    assert results.config(ReachabilityConfig) == tiny_config()
    assert {
        "accuracy",
        "inner_products_continuous",
        "edge_attention_construction",
        "probe_auc",
        "example_graph_continuous",
    } <= set(results.figure_names())
    html = (out / "dashboard.html").read_text()
    assert "Thoughts and node embeddings" in html and "Example graph" in html
    assert torch.get_num_threads() == threads
    # a rerun resumes from the finished checkpoints: same accuracies, no training
    again = ResultsDir.open(run(tiny_config(), tmp_path / "run")).metrics()
    assert again["acc_continuous"] == metrics["acc_continuous"] and again["train_seconds_continuous"] == pytest.approx(
        metrics["train_seconds_continuous"], abs=0.5
    )


def test_bad_config_is_named(tmp_path):
    with pytest.raises(InterpError, match="n_probe=1"):
        run(replace(tiny_config(), n_probe=1), tmp_path / "bad")
    with pytest.raises(InterpError, match="raise n_problems"):
        run(replace(tiny_config(), n_problems=100, n_eval=90), tmp_path / "bad2")
    with pytest.raises(InterpError, match="no_cot_steps=-1"):
        run(replace(tiny_config(), no_cot_steps=-1), tmp_path / "bad3")


@pytest.mark.slow
def test_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "06_reachability.ipynb", as_version=4)
    monkeypatch.setenv("INTERP_NOTEBOOK_QUICK", "1")  # the kernel inherits it; restored after the test
    nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()  # raises on a failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    # what the notebook shows: the hand-set construction answers its example and its thoughts are the reachable sets
    text = "".join(o.get("text", "") for o in outputs)
    answer = re.search(r"answer: (\d+) \(correct: (\d+)\); max \|thought - ideal\| = (\S+)", text)
    assert answer and answer.group(1) == answer.group(2) and float(answer.group(3)) < 1e-3, text
    assert "shortest path:" in text and "dashboard:" in text
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 3


def test_curve_slope_against_polyfit_and_a_weighted_sum_of_variances():
    """The flatness slope: numpy's least-squares fit, and its SE from each point's binomial variance."""
    import numpy as np
    import pandas as pd

    from experiments.reachability import _flatness

    steps = np.arange(200, 2001, 200)
    acc = np.array([0.50, 0.55, 0.61, 0.64, 0.70, 0.71, 0.74, 0.78, 0.79, 0.80])
    curve = pd.DataFrame({"step": steps, "accuracy": acc, "n": 500})
    got = _flatness(curve, "m")
    tail = steps >= 0.6 * 2000  # the last 40% of the steps: 1,200 ... 2,000
    slope = np.polyfit(steps[tail], acc[tail], 1)[0]
    assert got["curve_slope_per_1k_m"] == pytest.approx(1000 * slope)
    x = steps[tail] - steps[tail].mean()
    var = acc[tail] * (1 - acc[tail]) / 500
    assert got["curve_slope_se_per_1k_m"] == pytest.approx(1000 * np.sqrt((x**2 * var).sum()) / (x**2).sum())
    assert got["curve_gain_last_20pct_m"] == pytest.approx(0.80 - 0.78)  # 2,000 vs 1,600, the last step <= 2,000 / 1.2
    assert got["curve_flat_m"] is False
    short = _flatness(pd.DataFrame({"step": [1800, 2000], "accuracy": [0.795, 0.80], "n": 500}), "m")
    assert "curve_slope_per_1k_m" not in short and short["curve_flat_m"] is True  # half a point: flat
