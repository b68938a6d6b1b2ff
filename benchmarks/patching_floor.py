"""The floors benchmarks/patching.py prices its sweeps against: the FLOPs a sweep must do at the rate of a large
matmul (interp.patching.cost.sweep_flops), and the time of the sweep's own products, each timed alone at its shape."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import matmul_rate  # noqa: E402,F401 (patching.py imports it from here)


def flop_floor(model, task, sites, rate: float) -> dict:
    """The sweep's matmul FLOPs (interp.patching.cost: suffix blocks, the last block's last position, the last
    position's unembedding) and the time they take at `rate`."""
    from interp.patching.cost import sweep_flops

    flops = sweep_flops(model.cfg, sites, task.n_prompts, task.seq_len)
    return dict(flops=flops, matmul_flops_per_s=rate, flop_floor_s=flops / rate)


def shape_floor(task, ours_fn, sites) -> dict:
    """Where the time over the FLOP floor goes: the sweep's own matrix products (recorded: every shape it multiplies,
    the clean and corrupted runs included) timed alone and summed, and the two baseline runs timed on their own."""
    from interp.patching import engine
    from interp.patching.cost import matmul_calls, shape_floor_seconds

    _, calls = matmul_calls(ours_fn)
    floor = shape_floor_seconds(calls)
    layers = {site.layer for site in sites}
    hook_names = {site.hook_name for site in sites}

    def baseline_runs():
        with torch.no_grad():
            engine._clean_cache(task, hook_names, max(layers) + 1)
            engine._corrupted_cache(task, layers)

    baseline_runs()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        baseline_runs()
        times.append(time.perf_counter() - start)
    _, baseline_calls = matmul_calls(baseline_runs)
    return dict(
        shape_floor_s=floor["shape_floor_s"],
        products=len(calls),
        baseline_runs_s=statistics.median(times),
        baseline_runs_shape_floor_s=shape_floor_seconds(baseline_calls)["shape_floor_s"],
    )
