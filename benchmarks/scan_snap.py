"""Batched scan-and-snap SGD against a per-run Python loop of the same computation, in one process.

    python benchmarks/scan_snap.py [--seeds 2] [--steps 10] [--threads 1] [--out benchmarks/scan_snap.json]

Both sides train the same runs (every vocabulary setting x eta_Z x eta_Y/eta_Z x seed of the paper's
sweep, fewer seeds and steps) and must end with the same weights; the table gives wall-clock and
process CPU seconds (CPU time is the fairer number on a machine shared with other work).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from circuits.scan_snap.data import SequenceClasses
from circuits.scan_snap.model import RunSpec, TrainSettings, train_runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import timed  # noqa: E402


def sweep_runs(seeds: int) -> list[RunSpec]:
    return [
        RunSpec(SequenceClasses(n_queries=q, next_per_query=2), seed, eta_z * ratio, eta_z)
        for q in (1, 3, 5, 10)
        for eta_z in (0.5, 1.0, 2.0, 3.0)
        for ratio in (1.0, 2.0, 5.0, 10.0)
        for seed in range(seeds)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scan_snap.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = sweep_runs(args.seeds)
    settings = TrainSettings(steps=args.steps, init="uniform", momentum=0.9, record_every=args.steps)
    batched, batched_wall, batched_cpu = timed(lambda: train_runs(runs, settings))
    looped, loop_wall, loop_cpu = timed(lambda: [train_runs([run], settings) for run in runs])
    # the loop trains each run in its compact vocabulary; compare losses, which do not depend on the layout
    max_loss_gap = max(float((batched.loss[:, r] - alone.loss[:, 0]).abs().max()) for r, alone in enumerate(looped))
    result = dict(
        runs=len(runs),
        steps=args.steps,
        batch_size=settings.batch_size,
        seq_len=settings.seq_len,
        threads=args.threads,
        batched_wall_s=batched_wall,
        loop_wall_s=loop_wall,
        batched_cpu_s=batched_cpu,
        loop_cpu_s=loop_cpu,
        wall_ratio=loop_wall / batched_wall,
        cpu_ratio=loop_cpu / batched_cpu,
        max_loss_gap=max_loss_gap,
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}",
    )
    print(f"{'':<22}{'wall s':>10}{'cpu s':>10}")
    print(f"{'batched (1 call)':<22}{batched_wall:>10.2f}{batched_cpu:>10.2f}")
    print(f"{f'loop ({len(runs)} calls)':<22}{loop_wall:>10.2f}{loop_cpu:>10.2f}")
    print(f"{'loop / batched':<22}{result['wall_ratio']:>10.2f}{result['cpu_ratio']:>10.2f}")
    print(f"largest loss difference between the two: {max_loss_gap:.2e}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
