"""Timing for the benchmark scripts: wall-clock and process CPU seconds of one call (CPU time is the fairer number
on a machine shared with other work). Scripts run as `python benchmarks/X.py` import it as `benchmarks.timing`
after putting the repository root on sys.path."""

from __future__ import annotations

import time


def timed(fn):
    """fn()'s result, its wall-clock seconds and its process CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu
