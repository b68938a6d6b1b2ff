"""Notebooks are executed top to bottom; a cell that raises fails the test."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str, timeout: int = 600) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return nb


@pytest.mark.slow  # executes a notebook in a kernel (loads the model): tens of seconds on the shared machine
def test_quickstart_runs():
    nb = execute("01_quickstart.ipynb")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("p(Paris)" in o.get("text", "") for o in outputs)
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2


@pytest.mark.slow  # trains and evaluates an SAE inside a kernel: minutes
def test_sae_notebook_runs():
    """03_sae: trains a TopK SAE on the default corpus, evaluates it, loads it in SAELens (same latents), lists top contexts."""
    nb = execute("03_sae.ipynb")
    text = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "max |difference| of latent activations" in text
    assert text.count("latent ") >= 4 and "[" in text


@pytest.mark.slow  # starts a kernel; the planted model itself takes seconds
def test_circuits_notebook_runs():
    """07_circuits: edge scores three ways on the planted model, the drawn circuit, curves, ACDC, GradDrop and the bound."""
    nb = execute("07_circuits.ipynb")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "of the 6 planted" in text and "largest unverified effect bounded by" in text
    assert "ACDC inside the top 30 EAP edges" in text
    assert sum("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs) == 2
