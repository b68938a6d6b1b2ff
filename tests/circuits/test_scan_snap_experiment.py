"""The scan-and-snap experiment end to end in quick mode, and the notebook that drives it."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from experiments.scan_snap import ScanSnapConfig, run
from interp.results import ResultsDir

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_the_results_dir(tmp_path):
    threads = torch.get_num_threads()
    out = run(replace(ScanSnapConfig.quick(), png=False), tmp_path / "run")
    results = ResultsDir.open(out)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "common_mass_final",
        "kendall_tau_distinct",
        "entropy_sweep",
        "verdicts",
        "common_mass_scan_snap",
        "figure4_loss",
        "figure6",
        "theorem3_trajectories",
        "predictions",
    ):
        assert key in metrics
    # figure4_loss is the seed-mean loss of the figure4 table at the iterations the authors logged
    figure4 = results.load_table("figure4")
    assert metrics["figure4_loss"]["4"] == pytest.approx(figure4[figure4.step == 4]["loss"].mean())
    assert set(metrics["figure4_loss"]) == {str(s) for s in range(0, 40, 2)}
    # each eta_Y's snap step is the mean of the per-run table
    mass = results.load_table("common_mass")
    own = mass[(mass.setting == "authors_momentum") & (mass.eta_y == 10.0)]
    assert metrics["common_mass_scan_snap"]["eta_y"]["10"]["snap_step"] == pytest.approx(own["snap_step"].mean())
    for name in (
        "common_mass_falls_monotonically_during_scan",
        "snap_earlier_with_larger_eta_y",
        "frozen_mass_higher_with_larger_eta_y",
        "figure4_loss_curve",
        "figure6_entropy_within_0.03",
        "theorem3_bounds_sgd_authors_momentum",
        "theorem3_bounds_population_ode",
    ):
        assert name in metrics["verdicts"]
    # entropy_sweep nests queries -> eta_Z -> ratio, and each leaf is the mean over the sweep table's rows
    sweep = results.load_table("sweep")
    leaf = sweep[(sweep.n_queries == 3) & (sweep.eta_z == 2.0) & (sweep.ratio == 10.0)]["entropy"].mean()
    assert metrics["entropy_sweep"]["3"]["2"]["10"] == pytest.approx(leaf)
    assert set(metrics["verdicts"]) == set(results.load_table("predictions")["prediction"])
    assert {
        "mass_over_training",
        "sweep_entropy",
        "snap_curves",
        "sgd_vs_ode",
        "transformer_attention",
        "common_mass_scan_snap",
        "figure4_loss",
        "figure6_vs_authors",
    } <= set(results.figure_names())
    assert (out / "dashboard.html").exists()
    assert torch.get_num_threads() == threads  # run() restores the caller's thread count


@pytest.mark.slow  # executes the notebook (the quick run inside a kernel): over a minute on the shared 2-core machine
def test_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "05_scan_snap.ipynb", as_version=4)
    monkeypatch.setenv("INTERP_NOTEBOOK_QUICK", "1")  # the kernel inherits it; restored after the test
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()  # raises on a failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    # what the notebook shows, not only that it ran: the scan (common mass falls in both runs), the predictions table, two figures
    text = "".join(o.get("text", "") for o in outputs)
    common = re.findall(r"eta_Y=(\d+): common mass ([\d.]+) -> ([\d.]+)", text)
    assert [eta for eta, _, _ in common] == ["1", "10"] and all(
        float(end) < float(start) for _, start, end in common
    ), text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "theorem3_bounds" in html and "distinct_ranked_by_probability" in html
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2
