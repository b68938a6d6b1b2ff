"""Patching sweeps past one process: `torchrun ... -m interp.distributed patch PAIRS --out FILE`.

Every rank loads the model and the pairs, runs its share of the variant batches (interp.patching.engine.patch_sites
shares them by cost when torch.distributed is initialised) and ends with the whole sweep; rank 0 writes one parquet
per sweep. With one process (plain `python -m interp.distributed ...`) it is the same sweep, unsharded.

    torchrun --nproc-per-node 2 -m interp.distributed patch pairs.jsonl --out sweep/ --sweep heads --sweep resid_pre
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m interp.distributed patch pairs.jsonl --out sweep/        # and --node-rank 1 on the second node

The backend is nccl when CUDA is available (each rank on cuda:LOCAL_RANK), else gloo.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def init_from_env(*, cpu: bool = False) -> tuple[int, int, str]:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, ...); (rank, world, device).
    cpu=True: gloo and the CPU even where CUDA is available (for work that runs on the CPU, like the SAE trainer)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and not cpu
    if world == 1:
        return 0, 1, "cuda" if cuda else "cpu"
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), world, device


def patch_main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m interp.distributed patch", description=__doc__.split("\n")[0])
    parser.add_argument("pairs", type=Path, help="a .jsonl/.csv of prompt pairs: clean, corrupted, answer, wrong")
    parser.add_argument("--out", type=Path, required=True, help="folder for one <sweep>.parquet per sweep (rank 0)")
    parser.add_argument("--sweep", action="append", default=None, help="a named sweep (repeatable; default heads)")
    parser.add_argument("--metric", default="logit_diff")
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--memory-budget-mb", type=int, default=1024, help="transient activations per batch")
    args = parser.parse_args(argv)

    from interp.models import load_model
    from interp.patching import PatchingTask, patch_sites
    from interp.patching.pairs import read_pairs
    from interp.patching.sweeps import sweep_sites

    rank, _, device = init_from_env()
    model = load_model(args.model, device=device)
    task = PatchingTask.from_pairs(model, read_pairs(args.pairs), metric=args.metric)
    written = []
    for sweep in args.sweep or ["heads"]:
        frame = patch_sites(task, sweep_sites(task, sweep), memory_budget=args.memory_budget_mb << 20, progress=False)
        if rank == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(args.out / f"{sweep}.parquet")
            written.append(args.out / f"{sweep}.parquet")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return written


def main() -> None:
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "patch":
        raise SystemExit("usage: [torchrun ...] python -m interp.distributed patch PAIRS --out DIR [--sweep NAME ...]")
    for path in patch_main(sys.argv[2:]):
        print(path)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
