"""notebooks/02_recall_vs_reasoning.ipynb runs top to bottom in quick mode (the synthetic model trained briefly, few items, one ablation method)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 5 min on the shared 2-core machine: the synthetic model needs its 1,000 steps (~100 s) to learn the 2-hop task at all
def test_recall_reasoning_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / "02_recall_vs_reasoning.ipynb", as_version=4)
    monkeypatch.setenv("INTERP_NOTEBOOK_QUICK", "1")  # the kernel inherits it
    nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()  # raises on a failing cell
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "the synthetic model" in text and "SmolLM2-135M-Instruct" in text and "double dissociation" in text
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 4
