"""ResultsDir: one run's outputs in the layout every analysis and the dashboards share.

    run/config.json        {"analysis", "title", "config_type", "config": the frozen dataclass's fields}
    run/metrics.json       the run's headline numbers
    run/<table>.parquet    tidy DataFrames
    run/figures/<f>.json   plotly figure JSON (dashboards rebuild interactive figures from it)
    run/figures/<f>.png    the same figure rendered offline
    run/dashboard.html     written by dashboards.build_dashboard
    run/FAILED.json        only while the last attempt failed: the error (the dashboards skip such runs)

A folder holds one run: `create` into a folder whose config.json records another config refuses
(naming the fields that differ) unless overwrite=True clears the folder first; the same config
resumes (the failure marker and an unreadable metrics.json of the earlier attempt are removed).

Every file is written to a temporary name in the same folder and renamed into place, so a run
killed mid-write leaves the previous file or none, never half of one. Configs and metrics become JSON (and the
config a dataclass again) in interp.config_json.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from interp.config_json import config_differences, from_json_fields, loaded_class, to_jsonable
from interp.errors import CorruptFileError, InterpError, did_you_mean
from interp.fileio import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: F401  (re-exported)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
FIGURES_DIR = "figures"
DASHBOARD_FILE = "dashboard.html"
PNG_SKIPPED_FILE = "PNG_SKIPPED.txt"
FAILED_FILE = "FAILED.json"
GENERIC_ANALYSIS = "generic"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_writable_dir(path: str | Path, argument: str = "--out") -> Path:
    """Fail now, before any long work, if `path` cannot become a folder we write into.

    An existing file, a path under a file, or a folder (or its nearest existing parent) where a file
    cannot be created is an InterpError naming the argument; nothing is left behind.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InterpError(
            f"{argument}={str(path)!r} is an existing file, not a folder. Pass a new or empty folder for the results."
        )
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InterpError(
            f"{argument}={str(path)!r}: {str(probe_dir)!r} is a file, so no folder can be made under it. Pass another path."
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=probe_dir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise InterpError(
            f"{argument}={str(path)!r}: cannot write in {str(probe_dir)!r} ({error.strerror}). Pass a folder you can write to."
        ) from None
    return path


def _check_name(name: str, argument: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InterpError(
            f"{argument}={name!r}: use letters, digits, '_', '-' and '.', starting with a letter or digit (it becomes a file name)."
        )
    return name


class ResultsDir:
    """One run's results directory. `ResultsDir.create` starts a run; `ResultsDir.open` reads one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ResultsDir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResultsDir) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @classmethod
    def create(
        cls,
        path: str | Path,
        config: Any,
        *,
        analysis: str | None = None,
        title: str | None = None,
        exist_ok: bool = False,
        overwrite: bool = False,
    ) -> ResultsDir:
        """Make the folder and write config.json from a (frozen) dataclass config.

        analysis: which dashboard sections the run gets (default: the config's `analysis` attribute, else "generic").
        exist_ok: a folder already holding a run of the SAME config is resumed; one of another config is refused.
        overwrite: clear the folder (a results directory or an empty folder) first.
        """
        run, record = cls._plan(path, config, analysis=analysis, title=title, exist_ok=exist_ok, overwrite=overwrite)
        if overwrite:
            run.clear()
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / FAILED_FILE).unlink(missing_ok=True)
        if run.metrics_path.exists():
            try:
                run.metrics()
            except CorruptFileError:
                run.metrics_path.unlink()  # the earlier attempt's unreadable metrics: this run rewrites them
        atomic_write_text(run.config_path, json.dumps(record, indent=2, sort_keys=False) + "\n")
        return run

    @classmethod
    def check_create(
        cls,
        path: str | Path,
        config: Any,
        *,
        analysis: str | None = None,
        title: str | None = None,
        exist_ok: bool = False,
        overwrite: bool = False,
    ) -> None:
        """Every check `create` makes, writing nothing: call it before long work (loading a model, a sweep)."""
        cls._plan(path, config, analysis=analysis, title=title, exist_ok=exist_ok, overwrite=overwrite)
        if overwrite:
            cls(path).clear(dry_run=True)

    @classmethod
    def _plan(cls, path, config, *, analysis, title, exist_ok: bool, overwrite: bool) -> tuple[ResultsDir, dict]:
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            raise InterpError(
                f"config: expected a dataclass instance (the run's frozen config), got {type(config).__name__}. Define a @dataclass(frozen=True) with the run's settings."
            )
        run = cls(path)
        check_writable_dir(run.path, "out")
        analysis = analysis or getattr(config, "analysis", None) or GENERIC_ANALYSIS
        _check_name(analysis, "analysis")
        record = {
            "analysis": analysis,
            "title": title or run.path.name,
            "config_type": f"{type(config).__module__}.{type(config).__qualname__}",
            "config": to_jsonable(config, "config"),
        }
        if not overwrite and run.config_path.exists():
            if not exist_ok:
                raise InterpError(
                    f"path={str(run.path)!r} already holds a run (config.json exists). Choose a new folder, pass exist_ok=True to resume a run "
                    "of the same config, or overwrite=True to replace it."
                )
            run._check_same_run(record)
        return run, record

    def _check_same_run(self, record: dict) -> None:
        """Refuse to resume into a folder whose config.json describes another run."""
        try:
            old = self.record()
        except (CorruptFileError, InterpError):
            raise InterpError(
                f"out={str(self.path)!r} holds an unreadable config.json, so it cannot be resumed. "
                "Pass --overwrite (overwrite=True) to replace that run, or choose a new folder."
            ) from None
        differ = [k for k in ("analysis", "config_type") if old.get(k) != record[k]]
        differ += config_differences(old.get("config"), record["config"])
        if differ:
            shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
            raise InterpError(
                f"out={str(self.path)!r} holds a run with another config (differs in {shown}); a folder holds one run. "
                "Choose a new folder, or pass --overwrite (overwrite=True) to replace that run."
            )

    def clear(self, *, dry_run: bool = False) -> None:
        """Delete this run's files (overwrite=True); refuses a non-empty folder that is not a results directory."""
        if not self.path.exists():
            return
        entries = list(self.path.iterdir())
        if entries and not (self.config_path.exists() or (self.path / FAILED_FILE).exists()):
            raise InterpError(
                f"out={str(self.path)!r} is a non-empty folder but not a results directory (no config.json); "
                "--overwrite clears only results directories. Choose a new or empty folder."
            )
        if dry_run:
            return
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()

    def mark_failed(self, error: BaseException) -> Path:
        """Leave FAILED.json saying why the run stopped; `interp dashboard` reports and skips such runs."""
        note = {
            "error": type(error).__name__,
            "message": str(error) or type(error).__name__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "traceback": "".join(traceback.format_exception(error))[-4000:],
        }
        return atomic_write_text(self.path / FAILED_FILE, json.dumps(note, indent=1) + "\n")

    def failure(self) -> dict | None:
        """The FAILED.json note of a run whose last attempt failed, else None."""
        path = self.path / FAILED_FILE
        if not path.is_file():
            return None
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            note = None
        return note if isinstance(note, dict) else {"error": "unknown", "message": f"{path} is unreadable"}

    @contextmanager
    def failure_marker(self) -> Iterator[ResultsDir]:
        """`with run.failure_marker(): ...` writes FAILED.json if the block raises (and re-raises)."""
        try:
            yield self
        except BaseException as error:
            try:
                self.mark_failed(error)
            except OSError:
                pass
            raise

    @classmethod
    def open(cls, path: str | Path) -> ResultsDir:
        run = cls(path)
        if not run.path.is_dir():
            raise InterpError(
                f"path={str(run.path)!r} is not a folder; pass a results directory written by ResultsDir.create."
            )
        if not run.config_path.is_file():
            raise InterpError(
                f"path={str(run.path)!r} has no config.json, so it is not a results directory; pass a folder written by ResultsDir.create."
            )
        run.record()  # fail now on a corrupt config.json, not later inside a dashboard build
        return run

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def figures_dir(self) -> Path:
        return self.path / FIGURES_DIR

    @property
    def dashboard_path(self) -> Path:
        return self.path / DASHBOARD_FILE

    def _read_json(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise CorruptFileError(
                f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); rerun the analysis to rewrite it."
            ) from None
        except json.JSONDecodeError as error:
            raise CorruptFileError(f"{path} is not valid JSON ({error}); rerun the analysis to rewrite it.") from error

    def record(self) -> dict[str, Any]:
        """The whole config.json: analysis, title, config_type and config."""
        record = self._read_json(self.config_path)
        if not isinstance(record, dict) or not {"analysis", "config"} <= set(record):
            raise CorruptFileError(
                f"{self.config_path} lacks the 'analysis' and 'config' keys ResultsDir.create writes; rerun the analysis to rewrite it."
            )
        return record

    @property
    def analysis(self) -> str:
        return self.record()["analysis"]

    @property
    def title(self) -> str:
        return self.record().get("title") or self.path.name

    def config(self, cls: type | None = None) -> Any:
        """The run's config rebuilt as its dataclass (cls, or the class recorded in config.json)."""
        record = self.record()
        if cls is None:
            try:
                cls = loaded_class(record["config_type"])
            except (ImportError, KeyError):
                raise InterpError(
                    f"the config class {record.get('config_type')!r} recorded in {self.config_path} is not imported; "
                    "import its module first, or pass cls= the dataclass to rebuild it with."
                ) from None
        return from_json_fields(cls, record["config"])

    def write_metrics(self, metrics: Mapping[str, Any], *, merge: bool = True) -> Path:
        """Write metrics.json; with merge, keys already there and not in `metrics` are kept."""
        if not isinstance(metrics, Mapping):
            raise InterpError(f"metrics: expected a dict of name -> number, got {type(metrics).__name__}.")
        values = {**(self.metrics() if merge else {}), **to_jsonable(metrics, "metrics")}
        return atomic_write_text(self.metrics_path, json.dumps(values, indent=2) + "\n")

    def metrics(self) -> dict[str, Any]:
        if not self.metrics_path.exists():
            return {}
        values = self._read_json(self.metrics_path)
        if not isinstance(values, dict):
            raise CorruptFileError(
                f"{self.metrics_path} holds a JSON {type(values).__name__}, not an object of name -> value; rerun the analysis to rewrite it."
            )
        return values

    def save_table(self, name: str, df: pd.DataFrame) -> Path:
        _check_name(name, "name")
        if not isinstance(df, pd.DataFrame):
            raise InterpError(f"save_table(df=...): expected a tidy pandas DataFrame, got {type(df).__name__}.")
        buffer = io.BytesIO()
        df.to_parquet(buffer)
        return atomic_write_bytes(self.path / f"{name}.parquet", buffer.getvalue())

    def table_names(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.parquet"))

    def load_table(self, name: str) -> pd.DataFrame:
        path = self.path / f"{name}.parquet"
        if not path.is_file():
            raise InterpError(
                f"load_table(name={name!r}): no {path.name} in {self.path}.{did_you_mean(name, self.table_names())} Tables: {', '.join(self.table_names()) or 'none'}."
            )
        return pd.read_parquet(path)

    def save_figures(
        self, figures: Mapping[str, go.Figure], *, png: bool | str = True, width: int = 900, height: int = 600
    ) -> list[Path]:
        """Save each figure's JSON (always) and PNG (one browser session for all). Returns the JSON paths.

        png=True: render PNGs when a Chrome/Chromium can be had; where none can, skip them with one
        warning line and record the skip in figures/PNG_SKIPPED.txt (the dashboard says where the PNGs
        would be; `interp dashboard DIR --png` renders them later). png="require": raise instead.
        png=False: JSON only.
        """
        from interp import plots  # plots pulls in kaleido only when PNGs are asked for

        if png not in (True, False, "require"):
            raise InterpError(
                f"save_figures(png={png!r}): use True (PNGs when a browser is available), 'require' (fail without one) or False."
            )
        for name, fig in figures.items():
            _check_name(name, "figure name")
            if not isinstance(fig, go.Figure):
                raise InterpError(
                    f"save_figures: figure {name!r} is a {type(fig).__name__}; expected a plotly.graph_objects.Figure."
                )
        paths = [
            atomic_write_text(self.figures_dir / f"{name}.json", pio.to_json(fig)) for name, fig in figures.items()
        ]
        if png:
            targets = {self.figures_dir / f"{name}.png": fig for name, fig in figures.items()}
            try:
                if png is True and plots.png_switched_off():
                    raise plots.NoBrowserError("PNG export is switched off (INTERP_PNG=0); unset it to render PNGs.")
                plots.write_pngs(targets, width=width, height=height)  # NoBrowserError when no browser can be had
            except plots.NoBrowserError as error:
                if png == "require":
                    raise
                plots.warn_once(f"PNGs skipped (HTML pages and figure JSON are still written): {error}")
                note = self.figures_dir / PNG_SKIPPED_FILE
                skipped = set(note.read_text(encoding="utf-8").splitlines()[1:]) if note.is_file() else set()
                skipped |= {p.name for p in targets}
                atomic_write_text(note, f"{error}\n" + "\n".join(sorted(skipped)) + "\n")
            else:
                if not self.skipped_pngs():  # every PNG a run skipped earlier exists now
                    (self.figures_dir / PNG_SKIPPED_FILE).unlink(missing_ok=True)
        return paths

    def skipped_pngs(self) -> set[str]:
        """PNG file names a save skipped for want of a browser (and not rendered since)."""
        note = self.figures_dir / PNG_SKIPPED_FILE
        if not note.is_file():
            return set()
        return {
            n for n in note.read_text(encoding="utf-8").splitlines()[1:] if n and not (self.figures_dir / n).is_file()
        }

    def render_missing_pngs(self, *, width: int = 900, height: int = 600) -> list[Path]:
        """Render the PNG of every saved figure that has none (e.g. after `make browser`); raises without a browser."""
        from interp.plots import write_pngs

        missing = {
            self.figures_dir / f"{name}.png": self.figure(name)
            for name in self.figure_names()
            if not (self.figures_dir / f"{name}.png").is_file()
        }
        written = write_pngs(missing, width=width, height=height)
        (self.figures_dir / PNG_SKIPPED_FILE).unlink(missing_ok=True)
        return written

    def save_figure(self, name: str, fig: go.Figure, *, png: bool = True) -> Path:
        return self.save_figures({name: fig}, png=png)[0]

    def figure_names(self) -> list[str]:
        return sorted(p.stem for p in self.figures_dir.glob("*.json"))

    def figure(self, name: str) -> go.Figure:
        path = self.figures_dir / f"{name}.json"
        if not path.is_file():
            raise InterpError(
                f"figure(name={name!r}): no figures/{path.name} in {self.path}.{did_you_mean(name, self.figure_names())} Figures: {', '.join(self.figure_names()) or 'none'}."
            )
        try:
            return pio.from_json(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise CorruptFileError(
                f"{path} is not a plotly figure ({error}); rerun the analysis to rewrite it."
            ) from error


def list_runs(root: str | Path) -> list[ResultsDir]:
    """The results directories at or below root (any folder holding config.json), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise InterpError(f"root={str(root)!r} is not a folder; pass a results directory or a folder of them.")
    if (root / CONFIG_FILE).is_file():
        return [ResultsDir.open(root)]
    return [
        ResultsDir.open(p.parent)
        for p in sorted(root.rglob(CONFIG_FILE))
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def scan_runs(root: str | Path) -> tuple[list[ResultsDir], list[tuple[Path, str]]]:
    """The readable, finished-or-running results dirs at or below root, and (path, reason) for each one to skip.

    Skipped: runs whose last attempt failed (FAILED.json) and runs with an unreadable config.json or
    metrics.json. One bad run no longer stops the others' dashboards.
    """
    root = Path(root)
    if not root.is_dir():
        raise InterpError(f"root={str(root)!r} is not a folder; pass a results directory or a folder of them.")
    if (root / CONFIG_FILE).is_file() or (root / FAILED_FILE).is_file():
        folders = [root]
    else:
        found = {p.parent for name in (CONFIG_FILE, FAILED_FILE) for p in root.rglob(name)}
        folders = sorted(f for f in found if not any(part.startswith(".") for part in f.relative_to(root).parts))
    good, bad = [], []
    for folder in folders:
        run = ResultsDir(folder)
        failure = run.failure()
        if failure is not None:
            bad.append((folder, f"the run failed ({failure.get('error')}: {failure.get('message')}); rerun it"))
            continue
        try:
            ResultsDir.open(folder)
            run.metrics()
        except InterpError as error:
            bad.append((folder, str(error)))
            continue
        good.append(run)
    return good, bad
