"""Our TopK SAE training against SAELens's SAETrainer in process CPU time, alternated (what a loaded machine does not
inflate as it does wall time): d_in 576 -> 9216, k 32, batch 4096, 1 thread, the layer-6 store of the bundled model.

    python benchmarks/sae_vs_saelens_cpu.py --steps 12 --repeats 2

Each run includes both trainers' fixed costs (initialisation, the held-out FVU on 16,384 rows), as a whole run does.
Prints one row per run and the ratio of the medians (SAELens CPU seconds per step over ours).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.sae_train import run_ours, run_saelens, store_activations  # noqa: E402
from interp.models import cache_root  # noqa: E402

STORE = cache_root() / "dark_matter" / "smollm2-135m-instruct-L6-524288tok-seq128-float16" / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--store", default=str(STORE))
    a = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, held = store_activations(a.store, "blocks.6.hook_resid_post", 4096 * a.steps, 16384)
    args = types.SimpleNamespace(d_sae=9216, k=32, batch=4096, steps=a.steps, lr=4e-4)
    cpu: dict[str, list[float]] = {"saelens": [], "ours": []}
    for _ in range(a.repeats):
        for name, run in (
            ("saelens", lambda: run_saelens(train, held, args)),
            ("ours", lambda: run_ours(train, held, args, True)),
        ):
            start, wall = time.process_time(), time.perf_counter()
            result = run()
            cpu[name].append((time.process_time() - start) / a.steps)
            print(
                f"{name:8s} CPU {cpu[name][-1]:.3f} s/step, wall {(time.perf_counter() - wall) / a.steps:.3f} s/step, "
                f"held-out FVU {result['fvu']:.3f}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print(
        f"SAELens / ours, CPU per step (medians): {statistics.median(cpu['saelens']) / statistics.median(cpu['ours']):.2f}x"
    )


if __name__ == "__main__":
    main()
