"""`make demo` on a machine with no browser: it completes, says PNGs were skipped, and resumes when rerun."""

import json
import os
import sys
from pathlib import Path

import pytest

from experiments.demo import PIPELINE, STATE_FILE, run_demo
from interp.errors import InterpError
from interp.results import ResultsDir


@pytest.fixture
def no_browser(tmp_path, monkeypatch):
    """PATH holds only the venv's bin (no chromium); BROWSER_PATH unset: what a fresh machine without Chromium looks like."""
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.delenv("INTERP_PNG", raising=False)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    from interp import plots

    with pytest.raises(plots.NoBrowserError):
        plots.find_browser()


def _check_run(out: Path, names: list[str], capsys) -> None:
    printed = capsys.readouterr().out
    assert "What each investigation found" in printed
    assert "PNG figures were skipped (no Chrome/Chromium could be found" in printed
    state = json.loads((out / STATE_FILE).read_text())
    assert set(state["steps"]) == set(names)
    index = (out / "index.html").read_text()
    assert "What each investigation found" in index
    for name in names:
        run = ResultsDir.open(out / name)
        assert not list(run.figures_dir.glob("*.png")), "no browser: no PNGs"
        assert run.skipped_pngs() == {f"{f}.png" for f in run.figure_names()}
        page = run.dashboard_path.read_text()
        for figure in run.figure_names():  # the page says where each PNG would be
            assert (
                f"PNG not rendered (no browser when the run saved it): it would be {run.figures_dir / figure}.png"
                in page
            )
        assert "Verdict:" in page
        assert os.path.relpath(run.dashboard_path, out) in index
        log = (out / "logs" / f"{name}.log").read_text()
        assert log.count("warning: PNGs skipped") == 1, "one warning line per process, not one per figure"


def test_demo_without_browser_completes_in_parallel_and_resumes(tmp_path, no_browser, capsys):
    names = ["scan_snap", "patching"]
    out = tmp_path / "demo"
    run_demo(out, only=names, workers=2)
    _check_run(out, names, capsys)
    first = json.loads((out / STATE_FILE).read_text())
    run_demo(out, only=names, workers=2)  # a rerun keeps what the first finished
    printed = capsys.readouterr().out
    assert printed.count("kept from the earlier run") == 2
    assert json.loads((out / STATE_FILE).read_text())["steps"] == first["steps"]


def test_demo_rejects_unknown_step(tmp_path):
    with pytest.raises(InterpError, match="'sea' is not a demo step.*Did you mean: 'sae'"):
        run_demo(tmp_path, only=["sea"])


@pytest.mark.slow
def test_full_quick_demo_without_browser(tmp_path, no_browser, capsys):
    """All five investigations (and the patching sweep), as `make demo` runs them."""
    out = tmp_path / "demo"
    run_demo(out)
    _check_run(out, list(PIPELINE), capsys)


def test_every_pipeline_step_has_a_row_on_the_index():
    from experiments.demo import DISPLAY_ORDER

    assert sorted(DISPLAY_ORDER) == sorted(PIPELINE)
