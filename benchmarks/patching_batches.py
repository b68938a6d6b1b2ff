"""How the engine splits a layer's variants into batches (`BATCH_OVERHEAD_TOKENS`, interp/patching/engine.py), A/B.

The 16-pair, 5-token layer x position sweep of benchmarks/patching.py (resid_pre, layers 4, 11, 18, 25) run with each
overhead in turn, alternated `--rounds` times in one process; process CPU seconds (which others' load inflates far less
than wall time at one thread), medians, and the largest difference between the settings' results.

    python benchmarks/patching_batches.py                         # 1 thread; overheads 1e9 (one batch a layer), 64, 16, 0
    python benchmarks/patching_batches.py --overheads 1000000000,32,64,128,256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patching import prompt_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overheads", default="1000000000,64,16,0", help="comma list of BATCH_OVERHEAD_TOKENS on CPU")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interp.models import load_model
    from interp.patching import PatchingTask, engine, patch_layer_positions

    task = PatchingTask(load_model(), *prompt_pairs())
    overheads = [int(x) for x in args.overheads.split(",")]
    seconds: dict[int, list[float]] = {o: [] for o in overheads}
    values: dict[int, np.ndarray] = {}
    kept = engine.BATCH_OVERHEAD_TOKENS["cpu"]
    try:
        for _ in range(args.rounds):
            for overhead in overheads:
                engine.BATCH_OVERHEAD_TOKENS["cpu"] = overhead
                start = time.process_time()
                frame = patch_layer_positions(task, "resid_pre", layers=[4, 11, 18, 25], progress=False)
                seconds[overhead].append(time.process_time() - start)
                values[overhead] = frame.metric.to_numpy()
    finally:
        engine.BATCH_OVERHEAD_TOKENS["cpu"] = kept
    for overhead in overheads:
        batches = len(engine.ragged_groups(list(range(task.seq_len)), task.seq_len, task.n_prompts, 10**6, overhead))
        print(
            f"overhead {overhead:>10}: {batches} batch(es) a layer, {statistics.median(seconds[overhead]):.3f} CPU s "
            f"(runs {', '.join(f'{s:.2f}' for s in seconds[overhead])})"
        )
    print(
        f"largest difference between the settings' metrics: {max(abs(v - values[overheads[0]]).max() for v in values.values()):.1e}"
    )


if __name__ == "__main__":
    main()
