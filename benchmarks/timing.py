"""Timing for the benchmark scripts: wall-clock and process CPU seconds of one call (CPU time is the fairer number
on a machine shared with other work). Scripts run as `python benchmarks/X.py` import it as `benchmarks.timing`
after putting the repository root on sys.path."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn):
    """fn()'s result, its wall-clock seconds and its process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def matmul_times(m: int, k: int, n: int, repeats: int = 5, dtype: torch.dtype = torch.float32) -> list[float]:
    """Wall seconds of `repeats` [m x k] @ [k x n] products on random data, after one untimed warm-up."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return times


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matmul ([size x size] @ [size x size]) at the current torch thread count, median."""
    return 2 * size**3 / statistics.median(matmul_times(size, size, size, repeats))
