"""TopK SAE training speed: ours (sparse backward) against our dense path and SAELens's SAETrainer + TopKTrainingSAE.

All three train on the same cached activations of the bundled model for the same number of tokens;
we report tokens per second, held-out FVU, and our step time over the floor (one dense matmul of the
encoder's shape through torch, [batch x d_in] x [d_in x d_sae], timed at the same thread count between the runs).
Prints a table and writes benchmarks/results/sae_train.json with `step_over_matmul` (the median of our steps
after the first, over the median matmul) and `vs_saelens` (our tokens/s over SAELens's, whole runs).

    python benchmarks/sae_train.py                      # the target shape: d_sae 9216, k 32, batch 4096, 1 thread
    python benchmarks/sae_train.py --batch 1024 --steps 10   # a quick run on a small CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from interp.corpus import token_batches
from interp.hooks import cache_sites
from interp.models import cache_root, load_model
from interp.sites import as_site
from sae.activations import TensorBatches
from sae.models import TopKConfig
from sae.train import TrainConfig, train_sae


def cached_activations(site: str, n_tokens: int, seq_len: int = 128) -> torch.Tensor:
    """[n_tokens, d_model] activations of the bundled model on the default corpus, cached on disk."""
    path = cache_root() / "bench" / f"{site}-{n_tokens}-{seq_len}.pt"
    if path.exists():
        return torch.load(path)
    model = load_model()
    where = as_site(model, site)
    rows, have = [], 0
    for tokens in token_batches(model, None, seq_len=seq_len, batch_size=16):
        rows.append(cache_sites(model, tokens, [where])[where].reshape(-1, model.cfg.d_model))
        have += tokens.numel()
        if have >= n_tokens:
            break
    acts = torch.cat(rows)[:n_tokens].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(acts, path)
    return acts


def store_activations(path: str, site: str, n_train: int, n_held_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows from the store's first shards, held-out rows from the end of its last (disjoint), float32."""
    from interp.store import open_store

    store = open_store(path)
    key = store._key(site)
    rows, have = [], 0
    for i in range(len(store.shards) - 1):
        rows.append(store.load_shard(i, site)[key])
        have += len(rows[-1])
        if have >= n_train:
            break
    if have < n_train:
        raise SystemExit(f"--store {path}: {have} rows before its last shard, fewer than the {n_train} asked for")
    held_out = store.load_shard(len(store.shards) - 1, site)[key]
    return torch.cat(rows)[:n_train].float(), held_out[-n_held_out:].float()


def fvu(encode_decode, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((encode_decode(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def run_ours(train, held_out, args, sparse: bool) -> dict:
    cfg = TopKConfig(d_in=train.shape[1], d_sae=args.d_sae, k=args.k, sparse_backward=sparse)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        decay_fraction=0.2,
        log_every=args.steps,
    )
    marks = [time.perf_counter()]
    result = train_sae(
        cfg,
        TensorBatches(train, args.batch),
        tcfg,
        progress=False,
        on_step=lambda *_: marks.append(time.perf_counter()),
    )
    seconds = time.perf_counter() - marks[0]
    steps_s = [b - a for a, b in zip(marks, marks[1:])]
    return {
        "tokens_per_s": args.steps * args.batch / seconds,
        "step_s": seconds / args.steps,
        "median_step_s": statistics.median(
            steps_s[1:] or steps_s
        ),  # the first step also finds b_dec's geometric median
        "fvu": fvu(result.sae, held_out),
        "final_train_fvu": float(result.curve.fvu.iloc[-1]),
    }


def run_saelens(train, held_out, args) -> dict:
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=train.shape[1], d_sae=args.d_sae, k=args.k, normalize_activations="expected_average_only_in"
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=args.steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_warm_up_steps=max(1, args.steps // 10),
        lr_decay_steps=max(1, args.steps // 5),
        lr_end=0.0,
        n_batches_for_norm_estimate=1,
    )
    batches = iter(TensorBatches(train, args.batch))
    start = time.perf_counter()
    trained = SAETrainer(cfg=cfg, sae=sae, data_provider=batches).fit()
    seconds = time.perf_counter() - start
    return {
        "tokens_per_s": args.steps * args.batch / seconds,
        "step_s": seconds / args.steps,
        "fvu": fvu(lambda x: trained.decode(trained.encode(x)), held_out),
    }


def matmul_times(args, d_in: int, repeats: int = 5) -> list[float]:
    x, w = torch.randn(args.batch, d_in), torch.randn(d_in, args.d_sae)
    x @ w
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x @ w
        times.append(time.perf_counter() - start)
    return times


def interleaved(train: torch.Tensor, args, rounds: int = 7) -> dict:
    """Our sparse step and the matmul floor alternated `rounds` times (a step: training_step, backward, fused Adam,
    decoder renormalised, as train_sae does), so that both see the same load; medians and their ratio."""
    from sae.models import build_sae
    from sae.models.base import LossScale

    cfg = TopKConfig(d_in=train.shape[1], d_sae=args.d_sae, k=args.k)
    sae = build_sae(cfg)
    optimiser = torch.optim.Adam(sae.parameters(), lr=args.lr, fused=True)
    dead = torch.zeros(args.d_sae, dtype=torch.bool)
    x_mm, w_mm = torch.randn(args.batch, train.shape[1]), torch.randn(train.shape[1], args.d_sae)

    def step(i: int) -> None:
        x = train[(i * args.batch) % (len(train) - args.batch) :][: args.batch]
        out = sae.training_step(x, dead, LossScale(args.batch, float((x - x.mean(0)).pow(2).sum())), i)
        out.loss.backward()
        sae.remove_parallel_grad_()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        sae.normalise_decoder_()

    step(0)
    x_mm @ w_mm
    steps, mms = [], []
    for i in range(rounds):
        start = time.perf_counter()
        step(i + 1)
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        x_mm @ w_mm
        mms.append(time.perf_counter() - start)
    return dict(step_s=steps, matmul_s=mms, step_over_matmul=statistics.median(steps) / statistics.median(mms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", default="blocks.6.hook_resid_post")
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the matmul floor is timed at the same)")
    parser.add_argument(
        "--dense-steps", type=int, default=0, help="also run our dense reference path for this many steps"
    )
    parser.add_argument("--held-out", type=int, default=16384, help="held-out rows the FVU is measured on")
    parser.add_argument(
        "--train-rows",
        type=int,
        default=None,
        help="distinct training rows (default steps x batch); fewer than that and both trainers cycle over them in "
        "the same reshuffled epochs (e.g. 2M tokens from a 500k-row store)",
    )
    parser.add_argument(
        "--interleaved-only",
        action="store_true",
        help="only alternate our step with the matmul (same load for both); adds 'interleaved' to --out",
    )
    parser.add_argument(
        "--store", default=None, help="an activation store holding --site (interp cache) instead of running the model"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sae_train.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n_train = min(args.train_rows or args.steps * args.batch, args.steps * args.batch)
    if args.store:
        train, held_out = store_activations(args.store, args.site, n_train, args.held_out)
        acts = train
    else:
        acts = cached_activations(args.site, n_train + args.held_out)
        train, held_out = acts[:n_train], acts[n_train:]
    load_before = os.getloadavg()[0]
    if args.interleaved_only:
        row = interleaved(train, args)
        print(
            f"interleaved x{len(row['step_s'])}: step {statistics.median(row['step_s']):.3f}s, matmul {statistics.median(row['matmul_s']):.3f}s: "
            f"{row['step_over_matmul']:.2f}x (load {load_before:.1f} -> {os.getloadavg()[0]:.1f})"
        )
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.exists() else {}
        report["interleaved"] = {**row, "load_average": [load_before, os.getloadavg()[0]]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        return
    mm = matmul_times(args, acts.shape[1])
    rows = {"ours_sparse": run_ours(train, held_out, args, sparse=True)}
    mm += matmul_times(args, acts.shape[1])
    rows["saelens"] = run_saelens(train, held_out, args)
    mm += matmul_times(args, acts.shape[1])
    if args.dense_steps:
        dense_args = argparse.Namespace(**{**vars(args), "steps": args.dense_steps})
        rows["ours_dense"] = run_ours(train, held_out, dense_args, sparse=False)
    floor = statistics.median(mm)
    print(f"{'trainer':<13} {'tokens/s':>10} {'step s':>8} {'x floor':>8} {'FVU':>7}")
    for name, row in rows.items():
        row["step_over_matmul_floor"] = row["step_s"] / floor
        print(
            f"{name:<13} {row['tokens_per_s']:>10.0f} {row['step_s']:>8.3f} {row['step_over_matmul_floor']:>8.2f} {row['fvu']:>7.3f}"
        )
    speedup = rows["ours_sparse"]["tokens_per_s"] / rows["saelens"]["tokens_per_s"]
    step_over_matmul = rows["ours_sparse"]["median_step_s"] / floor
    print(
        f"ours / SAELens throughput: {speedup:.2f}x; floor (one [{args.batch}x{acts.shape[1]}] @ [{acts.shape[1]}x{args.d_sae}] matmul, median of {len(mm)}): {floor:.3f} s; "
        f"our median step / floor: {step_over_matmul:.2f}x"
    )
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {
                "args": vars(args),
                "machine": machine,
                "tokens": args.steps * args.batch,
                "distinct_train_rows": len(train),
                "epochs": args.steps * args.batch / len(train),
                "matmul_floor_s": floor,
                "matmul_s": mm,
                "step_over_matmul": step_over_matmul,
                "vs_saelens": speedup,
                "speedup_vs_saelens": speedup,  # the old key
                "results": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
