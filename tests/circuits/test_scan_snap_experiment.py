"""The scan-and-snap experiment end to end in quick mode, and the notebook that drives it."""

import json
import os
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
    for key in ("common_mass_final", "kendall_tau_distinct", "entropy_sweep", "verdicts"):
        assert key in metrics
    # entropy_sweep nests queries -> eta_Z -> ratio, and each leaf is the mean over the sweep table's rows
    sweep = results.load_table("sweep")
    leaf = sweep[(sweep.n_queries == 3) & (sweep.eta_z == 2.0) & (sweep.ratio == 10.0)]["entropy"].mean()
    assert metrics["entropy_sweep"]["3"]["2"]["10"] == pytest.approx(leaf)
    assert set(metrics["verdicts"]) == set(results.load_table("predictions")["prediction"])
    assert {"mass_over_training", "sweep_entropy", "snap_curves", "sgd_vs_ode", "transformer_attention"} <= set(results.figure_names())
    assert (out / "dashboard.html").exists()
    assert torch.get_num_threads() == threads  # run() restores the caller's thread count


def test_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "05_scan_snap.ipynb", as_version=4)
    os.environ["INTERP_NOTEBOOK_QUICK"] = "1"
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
