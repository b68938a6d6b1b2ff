"""`make demo`: the main pipeline on the bundled model, every investigation in quick mode, then the dashboards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def _patching(out: Path, quick: bool) -> Path:
    from experiments.patching_sweep import PatchingSweepConfig, run

    sweeps = ("resid_pre", "heads") if quick else ("resid_pre", "attn_out", "mlp_out", "heads", "heads_by_pos")
    return run(PatchingSweepConfig(sweeps=sweeps), out)


def _scan_snap(out: Path, quick: bool) -> Path:
    from experiments.scan_snap import ScanSnapConfig, run

    return run(ScanSnapConfig.quick() if quick else ScanSnapConfig(), out)


def _reachability(out: Path, quick: bool) -> Path:
    from experiments.reachability import ReachabilityConfig, run

    return run(ReachabilityConfig.quick() if quick else ReachabilityConfig(), out)


def _recall_reasoning(out: Path, quick: bool) -> Path:
    from experiments.recall_reasoning import RecallReasoningConfig, run

    return run(RecallReasoningConfig.quick() if quick else RecallReasoningConfig(), out)


# Each investigation: name -> function(out_dir, quick) -> results dir. Later issues append theirs.
PIPELINE: dict[str, Callable[[Path, bool], Path]] = {"patching": _patching, "scan_snap": _scan_snap, "reachability": _reachability, "recall_reasoning": _recall_reasoning}


def run_demo(out: Path, quick: bool = True) -> Path:
    """Run every step of PIPELINE into out/<name>, then build the pages and the index; returns the index path."""
    from dashboards import build_dashboards

    out = Path(out)
    run_dirs = []
    for name, step in PIPELINE.items():
        print(f"[demo] {name} ...", flush=True)
        run_dirs.append(step(out / name, quick))
        print(f"[demo] {name}: {run_dirs[-1]}", flush=True)
    pages = build_dashboards(run_dirs, index_path=out / "index.html")
    return pages[-1]
