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

import numpy as np
import torch


def init_group(backend: str, **kwargs) -> None:
    """torch.distributed.init_process_group(backend, **kwargs), with torch._dynamo imported first.

    Imported after the group exists (transformer_lens and interp import it), torch._dynamo keeps the default group
    alive, so destroy_process_group no longer joins gloo's worker threads. One of them may still be dropping its
    last collective's tensors (which takes the GIL) when the interpreter exits, and the process then aborts
    ('terminate called without an active exception', SIGABRT) after a run that succeeded: a rare race, seen in CI.
    Imported before, the group is destroyed with its threads joined (tests/test_distributed_exit.py)."""
    import torch._dynamo  # noqa: F401  (see above: must precede init_process_group)

    torch.distributed.init_process_group(backend, **kwargs)


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
        init_group("nccl" if cuda else "gloo")
    return torch.distributed.get_rank(), world, device


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process is in; (0, 1) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """`values` (float64) summed over the ranks, on every rank; the array itself outside a group."""
    if rank_world()[1] == 1:
        return values
    local = torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64))
    if torch.distributed.get_backend() == "nccl":  # nccl reduces device tensors only
        local = local.cuda()
    torch.distributed.all_reduce(local)
    return local.cpu().numpy()


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; [obj] outside a group."""
    if rank_world()[1] == 1:
        return [obj]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if rank_world()[1] > 1:
        torch.distributed.barrier()


def on_rank0(fn, *, share: bool = False):
    """fn() on rank 0 only, its failure passed to every rank: the checks and writes one process does (a results
    folder, a lock) without the other ranks waiting forever in a later collective when rank 0 refuses. Returns fn's
    result on rank 0, and on the others None (share=False) or a copy of it (share=True: it must pickle). Rank 0's
    error is raised on every rank (on the others as an InterpError with its message). Every rank must call it."""
    rank, world = rank_world()
    if world == 1:
        return fn()
    box: list = [None]
    error, result = None, None
    if rank == 0:
        try:
            result = fn()
            box[0] = ("ok", result if share else None)
        except Exception as exc:  # passed on, then raised here too
            error = exc
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if box[0][0] == "error":
        from interp.errors import InterpError

        raise InterpError(f"rank 0 stopped: {box[0][1]}")
    return result if rank == 0 else box[0][1]


def prompt_shard(n_prompts: int, rank: int, world: int) -> list[int]:
    """The prompts rank `rank` of `world` takes: contiguous, sizes differing by at most one (none when world > n)."""
    return [int(i) for i in np.array_split(np.arange(n_prompts), world)[rank]]


def prompt_subset(task, idx: list[int]):
    """The PatchingTask restricted to prompts `idx` (no forward run: its baselines stay the whole task's, its tensors
    are sliced). Its `score` is the metric's mean over these prompts."""
    import copy

    part = copy.copy(task)
    rows = torch.as_tensor(idx, dtype=torch.long, device=task.clean_tokens.device)
    for name in (
        "clean_tokens",
        "corrupted_tokens",
        "clean_mask",
        "corrupted_mask",
        "answer_tokens",
        "wrong_tokens",
        "clean_logits",
        "corrupted_logits",
        "shortformer_pos_embed",
    ):
        value = getattr(task, name, None)
        if isinstance(value, torch.Tensor):
            setattr(part, name, value[rows.to(value.device)])
    part.n_prompts = len(idx)
    return part


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
