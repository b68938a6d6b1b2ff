"""Our TopK SAE training against SAELens's SAETrainer in process CPU time, alternated (what a loaded machine does not
inflate as it does wall time): d_in 576 -> 9216, k 32, batch 4096, 1 thread, the layer-6 store of the bundled model.

    python benchmarks/sae_vs_saelens_cpu.py --steps 12 --repeats 2
    python benchmarks/sae_vs_saelens_cpu.py --steps 12 --repeats 2 --bf16   # and the bfloat16 pair, alternated too

Each run includes both trainers' fixed costs (initialisation, the held-out FVU on 16,384 rows), as a whole run does.
Prints one row per run and the ratio of the medians (SAELens CPU seconds per step over ours). --bf16 adds ours with
the top k chosen on bfloat16 scores (TopKConfig.select_dtype) and SAELens under bfloat16 autocast, its matched
baseline; every ratio of the four is printed, and --out writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--bf16", action="store_true", help="also ours with bfloat16 selection and SAELens autocast")
    parser.add_argument("--out", type=Path, default=None, help="write the CPU seconds and the ratios here (JSON)")
    a = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, held = store_activations(a.store, "blocks.6.hook_resid_post", 4096 * a.steps, 16384)
    args = types.SimpleNamespace(d_sae=9216, k=32, batch=4096, steps=a.steps, lr=4e-4)
    trainers = {
        "saelens": lambda: run_saelens(train, held, args),
        "ours": lambda: run_ours(train, held, args, True),
    }
    if a.bf16:
        trainers["saelens_autocast"] = lambda: run_saelens(train, held, args, autocast=True)
        trainers["ours_bf16select"] = lambda: run_ours(train, held, args, True, select_dtype="bfloat16")
    cpu: dict[str, list[float]] = {name: [] for name in trainers}
    step_cpu: dict[str, list[float]] = {name: [] for name in trainers}
    fvu: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(a.repeats):
        for name, run in trainers.items():
            start, wall = time.process_time(), time.perf_counter()
            result = run()
            cpu[name].append((time.process_time() - start) / a.steps)
            fvu[name].append(result["fvu"])
            step_cpu[name].append(result["median_step_cpu_s"])
            print(
                f"{name:17s} CPU {cpu[name][-1]:.3f} s/step (median step alone {step_cpu[name][-1]:.3f}), "
                f"wall {(time.perf_counter() - wall) / a.steps:.3f} s/step, "
                f"held-out FVU {result['fvu']:.3f}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    median = {name: statistics.median(times) for name, times in cpu.items()}
    median_step = {name: statistics.median(times) for name, times in step_cpu.items()}
    pairs = [(b, o) for b in median if b.startswith("saelens") for o in median if o.startswith("ours")]
    ratios = {f"{b}/{o}": median[b] / median[o] for b, o in pairs}
    step_ratios = {f"{b}/{o}": median_step[b] / median_step[o] for b, o in pairs}
    for pair in ratios:
        print(f"{pair}: whole runs {ratios[pair]:.2f}x, the median step alone {step_ratios[pair]:.2f}x (CPU seconds)")
    if a.out:
        a.out.write_text(
            json.dumps(
                dict(
                    steps=a.steps,
                    repeats=a.repeats,
                    cpu_s_per_step=cpu,
                    median_step_cpu_s=step_cpu,
                    fvu=fvu,
                    ratios=ratios,
                    step_ratios=step_ratios,
                ),
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
