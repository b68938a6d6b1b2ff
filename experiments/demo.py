"""`make demo`: every investigation on the bundled model in quick mode, in parallel processes, then the dashboards.

    interp demo --out results/demo            (what `make demo` runs)
    python -m experiments.demo --out DIR --only sae patching

The model is converted once (in this process) and shared from the cache; the investigations then run
in `workers` processes (default: one per core), each with one torch thread, longest first. Each
process writes its own log (DIR/logs/<name>.log: its progress bars and messages); this process shows
one bar per running investigation with its ETA and the log's latest line. A finished investigation
is recorded in DIR/demo-state.json, so a killed demo, rerun, resumes with what is left (the long
steps also resume inside: activation stores and SAE checkpoints live in the toolkit cache). The run
ends with a table, one row per investigation (headline numbers and a verdict), and the path of
DIR/index.html, whose first table is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

STATE_FILE = "demo-state.json"
LOGS_DIR = "logs"


def _patching(out: Path, quick: bool) -> Path:
    from experiments.patching_sweep import PatchingSweepConfig, run

    sweeps = ("resid_pre", "heads") if quick else ("resid_pre", "attn_out", "mlp_out", "heads", "heads_by_pos")
    return run(PatchingSweepConfig(sweeps=sweeps, method="exact+atp"), out)


def _sae(out: Path, quick: bool) -> Path:
    from experiments.sae_topk import SaeRunConfig, run

    return run(SaeRunConfig.quick() if quick else SaeRunConfig(), out)


def _dark_matter(out: Path, quick: bool) -> Path:
    from experiments.dark_matter import DarkMatterConfig, run

    return run(DarkMatterConfig.quick() if quick else DarkMatterConfig(), out)


def _scan_snap(out: Path, quick: bool) -> Path:
    from experiments.scan_snap import ScanSnapConfig, run

    return run(ScanSnapConfig.quick() if quick else ScanSnapConfig(), out)


def _reachability(out: Path, quick: bool) -> Path:
    from experiments.reachability import ReachabilityConfig, run

    return run(ReachabilityConfig.quick() if quick else ReachabilityConfig(), out)


def _recall_reasoning(out: Path, quick: bool) -> Path:
    from experiments.recall_reasoning import RecallReasoningConfig, run

    return run(RecallReasoningConfig.quick() if quick else RecallReasoningConfig(), out)


def _circuit(out: Path, quick: bool) -> Path:
    from experiments.circuit import CircuitConfig, run

    return run(CircuitConfig.quick() if quick else CircuitConfig(), out)


@dataclass(frozen=True)
class Step:
    # (out_dir, quick) -> results dir; a module-level function, so a worker process can import it
    run: Callable[[Path, bool], Path]
    seconds: float  # expected wall time of the quick run at one thread (for the ETA until a run here has measured it)


# name -> step, longest first (a pool of two cores finishes soonest when the long ones start first). Later issues append theirs.
PIPELINE: dict[str, Step] = {  # seconds: measured from an empty cache on 2 cores, 2026-11-30 (README)
    "recall_reasoning": Step(_recall_reasoning, 290),
    "dark_matter": Step(_dark_matter, 280),
    "sae": Step(_sae, 90),
    "patching": Step(_patching, 60),
    "circuit": Step(_circuit, 60),  # issue 18 second cut: + copy task and held-out curves (estimate)
    "reachability": Step(_reachability, 45),
    "scan_snap": Step(_scan_snap, 10),
}
DISPLAY_ORDER = (
    "patching",
    "circuit",
    "sae",
    "dark_matter",
    "recall_reasoning",
    "reachability",
    "scan_snap",
)  # the index's rows, from the simplest tool up


def _read_state(out: Path) -> dict:
    path = out / STATE_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (
        json.JSONDecodeError
    ):  # a torn write cannot happen (atomic), but a hand edit can: start over rather than fail
        return {}


def _write_state(out: Path, state: dict) -> None:
    from interp.results import atomic_write_text

    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1))


def _run_step(name: str, out: str, quick: bool, log: str) -> tuple[str, str, float, float]:
    """In a worker process: one torch thread, stdout and stderr (progress bars included) to the step's log file."""
    import torch

    torch.set_num_threads(1)
    with open(log, "a", buffering=1) as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
        print(f"[demo] {name}: start {time.strftime('%H:%M:%S')}", flush=True)
        if (
            Path(out) / "config.json"
        ).is_file():  # an unfinished attempt (its expensive parts resume from the toolkit cache): start the folder afresh
            import shutil

            shutil.rmtree(out)
        start, cpu_start = time.perf_counter(), time.process_time()
        path = PIPELINE[name].run(Path(out), quick)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"[demo] {name}: done in {seconds:.0f} s ({cpu:.0f} s of CPU) -> {path}", flush=True)
    return name, str(path), seconds, cpu


def _log_tail(log: Path, width: int = 48) -> str:
    """The latest progress line of a step's log (the last carriage-return segment), shortened to `width`."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    segments = [s.strip() for s in text.replace("\n", "\r").split("\r") if s.strip()]
    last = segments[-1] if segments else ""
    return last if len(last) <= width else last[: width - 1] + "…"


def _warm_cache(model_spec=None) -> None:
    """Convert the model once (in this process) so the workers load the cached weights instead of each converting it."""
    from interp.corpus import fetch_default_corpus
    from interp.models import load_model

    print("[demo] preparing the bundled model and corpus (converted once, then cached) ...", flush=True)
    load_model(model_spec)
    fetch_default_corpus()


def run_demo(
    out: Path, quick: bool = True, *, workers: int | None = None, only: list[str] | None = None, fresh: bool = False
) -> Path:
    """Run each step of PIPELINE into out/<name> in parallel processes, then the pages and the index; returns the index path.

    A step finished by an earlier run of the same demo (out/demo-state.json) is kept unless fresh=True.
    Raises InterpError naming the failed steps and their logs if any step fails (the others still finish).
    """
    from tqdm.auto import tqdm

    from dashboards import build_dashboards, summary_table
    from interp.errors import InterpError, did_you_mean
    from interp.results import ResultsDir

    out = Path(out)
    names = list(PIPELINE) if only is None else list(only)
    for name in names:
        if name not in PIPELINE:
            raise InterpError(
                f"only: {name!r} is not a demo step.{did_you_mean(name, PIPELINE)} Steps: {', '.join(PIPELINE)}."
            )
    workers = workers or min(len(names), os.cpu_count() or 1)
    (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
    state = {} if fresh else _read_state(out)
    if state.get("quick") is not None and state["quick"] != quick:
        state = {}  # a full demo never reuses quick results, nor the other way round
    state["quick"] = quick
    steps = state.setdefault("steps", {})
    done = {n for n in names if n in steps and (Path(steps[n]["dir"]) / "metrics.json").is_file()}
    todo = [n for n in names if n not in done]
    for name in sorted(done):
        print(
            f"[demo] {name}: kept from the earlier run ({steps[name]['seconds']:.0f} s) -> {steps[name]['dir']}",
            flush=True,
        )
    started = time.perf_counter()
    failed: dict[str, str] = {}
    if todo:
        _warm_cache()
        print(
            f"[demo] running {len(todo)} investigation(s) in {workers} process(es), one torch thread each; logs in {out / LOGS_DIR}",
            flush=True,
        )
        saved_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM")}
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        try:
            failed = _run_pool(todo, out, quick, workers, steps, state, tqdm)
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    ordered = sorted(names, key=lambda n: DISPLAY_ORDER.index(n) if n in DISPLAY_ORDER else len(DISPLAY_ORDER))
    run_dirs = [Path(steps[n]["dir"]) for n in ordered if n in steps]
    if not run_dirs:
        raise InterpError(
            "every demo step failed: "
            + "; ".join(f"{n}: {err} (log: {out / LOGS_DIR / f'{n}.log'})" for n, err in failed.items())
        )
    note = (
        "Quick settings (what `make demo` runs): smaller and shorter than the full runs, whose numbers are in FINDINGS.md."
        if quick
        else "Full settings."
    )
    index = build_dashboards(run_dirs, index_path=out / "index.html", note=note)[-1]
    runs = [ResultsDir.open(d) for d in run_dirs]
    _print_table(summary_table(runs))
    if skipped := sum(len(r.skipped_pngs()) for r in runs):
        print(
            f"[demo] {skipped} PNG figures were skipped (no Chrome/Chromium could be found; the HTML pages are complete). "
            f"To render them: `make browser`, then `interp dashboard {out} --png`.",
            flush=True,
        )
    print(
        f"[demo] {len(run_dirs)} investigation(s) in {time.perf_counter() - started:.0f} s wall this run; index: {index.resolve()}",
        flush=True,
    )
    if failed:
        raise InterpError(
            "demo steps failed: "
            + "; ".join(f"{n}: {err} (log: {out / LOGS_DIR / f'{n}.log'})" for n, err in failed.items())
            + ". Rerun `make demo` to retry them; finished steps are kept."
        )
    return index


def _run_pool(todo: list[str], out: Path, quick: bool, workers: int, steps: dict, state: dict, tqdm) -> dict[str, str]:
    failed: dict[str, str] = {}
    slots: dict[str, int] = {}
    bars: dict[str, object] = {}
    starts: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures: dict[Future, str] = {}
        queue = list(todo)

        def submit() -> None:
            while queue and len(futures) < workers:
                name = queue.pop(0)
                slot = min(set(range(workers)) - set(slots.values()))
                slots[name], starts[name] = slot, time.perf_counter()
                expected = steps.get(name, {}).get("seconds") or PIPELINE[name].seconds
                bars[name] = tqdm(
                    total=round(expected),
                    desc=f"{name:<17}",
                    position=slot,
                    leave=False,
                    unit="s",
                    dynamic_ncols=True,
                    bar_format="{desc} {percentage:3.0f}%|{bar:20}| {elapsed}<{remaining} (est.) {postfix}",
                )
                log = out / LOGS_DIR / f"{name}.log"
                log.write_text("")
                futures[pool.submit(_run_step, name, str(out / name), quick, str(log))] = name

        submit()
        while futures:
            finished, _ = wait(futures, timeout=1.0, return_when=FIRST_COMPLETED)
            for name, bar in bars.items():
                elapsed = time.perf_counter() - starts[name]
                bar.total = max(
                    bar.total, round(elapsed * 1.05) + 1
                )  # over its estimate: the bar slows rather than overflows
                bar.n = min(round(elapsed), bar.total)
                bar.set_postfix_str(_log_tail(out / LOGS_DIR / f"{name}.log"), refresh=False)
                bar.refresh()
            for future in finished:
                name = futures.pop(future)
                bar = bars.pop(name)
                bar.close()
                slots.pop(name)
                try:
                    _, path, seconds, cpu = future.result()
                except Exception as error:  # noqa: BLE001 - one failed investigation must not stop the others
                    failed[name] = f"{type(error).__name__}: {error}"
                    tqdm.write(f"[demo] {name}: FAILED ({failed[name]}); log: {out / LOGS_DIR / f'{name}.log'}")
                    continue
                steps[name] = {
                    "dir": path,
                    "seconds": seconds,
                    "cpu_seconds": cpu,
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
                _write_state(out, state)
                tqdm.write(f"[demo] {name}: done in {seconds:.0f} s ({cpu:.0f} s of CPU) -> {path}")
            submit()
    return failed


def _print_table(table) -> None:
    """The summary table, wrapped to the terminal: investigation, then its headline and verdict indented below."""
    import shutil
    import textwrap

    width = max(60, min(120, shutil.get_terminal_size((100, 20)).columns))
    print("\n" + "=" * width)
    print("What each investigation found")
    print("=" * width)
    for row in table.itertuples():
        print(row.investigation)
        print(textwrap.fill(row.verdict, width, initial_indent="  verdict:  ", subsequent_indent=" " * 12))
        print(textwrap.fill(row.headline, width, initial_indent="  headline: ", subsequent_indent=" " * 12))
    print("=" * width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/demo"))
    parser.add_argument("--full", action="store_true", help="full settings instead of quick (hours)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--only", nargs="+", default=None, help=f"steps to run, of {', '.join(PIPELINE)}")
    parser.add_argument("--fresh", action="store_true", help="rerun every step even if an earlier demo finished it")
    args = parser.parse_args()
    print(run_demo(args.out, quick=not args.full, workers=args.workers, only=args.only, fresh=args.fresh))


if __name__ == "__main__":
    main()
