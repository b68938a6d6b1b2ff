"""Results dirs and dashboards: atomic files, round trips, and the built page rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from dashboards import Section, build_dashboard, build_dashboards, build_index, default_sections, register_sections
from dashboards.sections import SECTION_BUILDERS
from interp import plots
from interp.errors import CorruptFileError, InterpError
from interp.results import ResultsDir, atomic_write_text, list_runs
from tests.test_plots import patching_tables

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed; run `make browser` (apt-get install chromium)"
)
FIGURE_NAMES = ["head_effects", "neuron_effects", "restoration", "restoration_by_layer"]


@dataclass(frozen=True)
class PatchingConfig:
    model: str = "tiny-gqa"
    seed: int = 0
    answers: tuple[int, int] = (3, 5)
    components: tuple[str, ...] = ("resid_pre",)
    notes: dict = field(default_factory=dict)


def write_run(path: Path, tables: dict, png: bool, title: str = "Residual patching on the tiny model") -> ResultsDir:
    run = ResultsDir.create(path, PatchingConfig(), analysis="activation_patching", title=title)
    restoration = tables["restoration"]
    run.save_table("restoration", restoration)
    run.save_table("heads", tables["heads"])
    by_layer = restoration.groupby("layer")["restoration"].agg(["mean", "sem"]).reset_index()
    run.write_metrics({"max_restoration": float(restoration["restoration"].max()), "n_layers": 3})
    run.save_figures(
        {
            "restoration": plots.layer_position_heatmap(restoration, tokens=tables["tokens"]),
            "restoration_by_layer": plots.bars_with_errors(by_layer, x="layer", y="mean", err="sem"),
            "head_effects": plots.head_heatmap(tables["heads"]),
            "neuron_effects": plots.top_k_bars(tables["neurons"], k=10),
        },
        png=png,
        width=500,
        height=350,
    )
    return run


@pytest.fixture(scope="module")
def tables(tiny_model):
    return patching_tables(tiny_model)


def test_results_dir_round_trips(tables, tmp_path):
    run = write_run(tmp_path / "run", tables, png=False)
    record = json.loads(run.config_path.read_text())
    assert record["analysis"] == "activation_patching"
    assert record["config"] == {
        "model": "tiny-gqa",
        "seed": 0,
        "answers": [3, 5],
        "components": ["resid_pre"],
        "notes": {},
    }
    assert run.config() == PatchingConfig()  # tuples come back as tuples
    pd.testing.assert_frame_equal(run.load_table("restoration"), tables["restoration"])
    assert run.table_names() == ["heads", "restoration"]
    assert run.figure_names() == FIGURE_NAMES
    assert run.figure("head_effects") == plots.head_heatmap(tables["heads"])
    run.write_metrics({"extra": 1})
    assert run.metrics()["n_layers"] == 3 and run.metrics()["extra"] == 1
    assert list_runs(tmp_path) == [run]
    assert not list(tmp_path.rglob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert run.config_path.stat().st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600


def test_results_dir_errors_name_the_argument(tables, tmp_path):
    run = write_run(tmp_path / "run", tables, png=False)
    with pytest.raises(InterpError, match=r"already holds a run.*exist_ok=True"):
        ResultsDir.create(run.path, PatchingConfig())
    with pytest.raises(InterpError, match=r"config: expected a dataclass instance"):
        ResultsDir.create(tmp_path / "other", {"seed": 0})
    with pytest.raises(InterpError, match=r"metrics\.bad = .*cannot be written as JSON"):
        run.write_metrics({"bad": object()})
    with pytest.raises(InterpError, match=r"load_table\(name='restoraton'\).*Did you mean: 'restoration'"):
        run.load_table("restoraton")
    with pytest.raises(InterpError, match=r"figure\(name='heads'\).*Did you mean: 'head_effects'"):
        run.figure("heads")
    with pytest.raises(InterpError, match=r"name='../escape'"):
        run.save_table("../escape", tables["heads"])
    with pytest.raises(InterpError, match="has no config.json"):
        ResultsDir.open(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        ResultsDir.open(tmp_path / "broken")


def test_killed_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = atomic_write_text(tmp_path / "metrics.json", '{"a": 1}')

    def crash(*args):
        raise KeyboardInterrupt  # a run killed between writing the temp file and the rename

    monkeypatch.setattr("interp.results.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, '{"a": 2, "half": ')
    assert target.read_text() == '{"a": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_page_is_self_contained(tables, tmp_path):
    run = write_run(tmp_path / "run", tables, png=False)
    page = build_dashboard(run).read_text()
    assert page.count("plotly.js v") == 1  # the library's banner: embedded once, not per figure
    assert page.count("Plotly.newPlot(") == len(FIGURE_NAMES)
    assert not re.search(
        r"<script[^>]+src=|<link[^>]+href=", page
    )  # nothing fetched; the browser test watches the network too
    assert "Residual patching on the tiny model" in page and "max_restoration" in page
    assert (
        "<td>answers</td>" in page and "<td>[3, 5]</td>" in page and '<td>["resid_pre"]</td>' in page
    )  # the config table


def test_registered_sections_and_index(tables, tmp_path):
    runs = [write_run(tmp_path / name, tables, png=False, title=name) for name in ("first", "second")]
    generic = ResultsDir.create(tmp_path / "generic", PatchingConfig(seed=1))

    @register_sections("activation_patching")
    def patching_sections(run):
        return [
            Section(
                "Where restoration happens",
                text="Patched clean residual stream into the corrupted run.",
                figures=["restoration"],
            ),
            *default_sections(run),
        ]

    try:
        pages = build_dashboards([tmp_path])
    finally:
        del SECTION_BUILDERS["activation_patching"]
    assert pages[:-1] == [runs[0].dashboard_path, generic.dashboard_path, runs[1].dashboard_path]  # sorted by folder
    first = runs[0].dashboard_path.read_text()
    assert first.index("Where restoration happens") < first.index("<h2>Config</h2>")
    assert first.count("Plotly.newPlot(") == len(FIGURE_NAMES) + 1
    assert "Plotly" not in generic.dashboard_path.read_text()  # no figures: no 4 MB of plotly.js
    index = pages[-1]
    assert index == tmp_path.resolve() / "index.html"
    hrefs = re.findall(r'href="([^"]+)"', index.read_text())
    assert sorted({(index.parent / h).resolve() for h in hrefs}) == sorted(
        p.resolve() for p in pages[:-1]
    )  # each page linked from the findings table and the runs table
    assert len(hrefs) == 2 * len(pages[:-1])
    with pytest.raises(InterpError, match="holds no results directory"):
        build_dashboards([tmp_path / "first" / "figures"])
    with pytest.raises(InterpError, match="run_dirs is empty"):
        build_dashboards([])
    assert (
        build_index(runs, tmp_path / "sub" / "two.html").read_text().count('<a href="../') == 4
    )  # two runs, each linked twice


class DevToolsPage:
    """A headless Chromium driven through the Chrome DevTools Protocol, recording console errors and requests."""

    FLAGS = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--remote-debugging-port=0",
    ]

    def __init__(self, profile: Path, timeout: float = 20):
        import websocket

        self.process = subprocess.Popen(
            [CHROMIUM, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout))
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.next_id, self.events = 0, []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for_event(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            self.events.append(json.loads(self.socket.recv()))

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def errors(self) -> list[str]:
        found = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(
                    f"console.{params['type']}: {[a.get('value', a.get('description')) for a in params['args']]}"
                )
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(f"exception: {details.get('exception', {}).get('description', details['text'])}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']}")
        return found

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        if hasattr(self, "socket"):
            self.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


RENDERED = """(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  return {plots: plots.length, rendered: plots.filter(p => p.querySelector('.main-svg') && p._fullLayout).length,
          heatmaps: document.querySelectorAll('.js-plotly-plot .hm, .js-plotly-plot image').length,
          bars: document.querySelectorAll('.js-plotly-plot .bars .point').length};
})()"""


@needs_chromium
def test_dashboard_renders_in_headless_chromium(tables, tmp_path):
    run = write_run(tmp_path / "run", tables, png=True)
    assert sorted(p.name for p in run.figures_dir.glob("*.png")) == [f"{n}.png" for n in FIGURE_NAMES]
    page = build_dashboard(run)
    browser = DevToolsPage(tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable")
        browser.send("Page.navigate", url=page.resolve().as_uri())
        browser.wait_for_event("Page.loadEventFired", timeout=20)
        deadline = time.monotonic() + 10
        while (state := browser.evaluate(RENDERED))["rendered"] < len(FIGURE_NAMES) and time.monotonic() < deadline:
            time.sleep(0.1)  # plotly draws asynchronously after load
        browser.evaluate("0")  # flush events queued while rendering
    finally:
        browser.close()
    assert state["plots"] == len(FIGURE_NAMES) and state["rendered"] == len(FIGURE_NAMES), state
    assert state["heatmaps"] >= 2 and state["bars"] >= 3 + 10, state  # 2 heatmaps; 3 layer bars + 10 top-k bars
    assert browser.errors() == []
    assert all(url.startswith(("file:", "data:")) for url in browser.requested_urls()), browser.requested_urls()


def test_section_registry_errors(tmp_path):
    run = ResultsDir.create(tmp_path / "run", PatchingConfig(), analysis="broken_analysis")

    @register_sections("broken_analysis")
    def broken(run):
        return "not a list"

    try:
        with pytest.raises(
            InterpError, match=r"analysis 'broken_analysis' returned str; it must return a list of dashboards.Section"
        ):
            build_dashboard(run)
        with pytest.raises(InterpError, match=r"register_sections\('broken_analysis'\).*already registered"):
            register_sections("broken_analysis")(lambda run: [])
    finally:
        del SECTION_BUILDERS["broken_analysis"]
    with pytest.raises(InterpError, match=r"analysis='bad name'"):
        ResultsDir.create(tmp_path / "other", PatchingConfig(), analysis="bad name")
