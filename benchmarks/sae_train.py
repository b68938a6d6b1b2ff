"""TopK SAE training speed: ours (sparse backward) against our dense path and SAELens's SAETrainer + TopKTrainingSAE.

All three train on the same cached activations of the bundled model for the same number of tokens;
we report tokens per second, held-out FVU, and our step time over the floor (one dense matmul of the
encoder's shape through torch). Prints a table and writes benchmarks/sae_train.json.

    python benchmarks/sae_train.py                      # the target shape: d_sae 9216, k 32, batch 4096
    python benchmarks/sae_train.py --batch 1024 --steps 10   # a quick run on a small CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    start = time.perf_counter()
    result = train_sae(cfg, TensorBatches(train, args.batch), tcfg, progress=False)
    seconds = time.perf_counter() - start
    return {
        "tokens_per_s": args.steps * args.batch / seconds,
        "step_s": seconds / args.steps,
        "fvu": fvu(result.sae, held_out),
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


def matmul_floor(args, d_in: int) -> float:
    x, w = torch.randn(args.batch, d_in), torch.randn(d_in, args.d_sae)
    x @ w
    start = time.perf_counter()
    for _ in range(5):
        x @ w
    return (time.perf_counter() - start) / 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--site", default="blocks.6.hook_resid_post")
    parser.add_argument("--d-sae", type=int, default=9216)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--out", default=str(Path(__file__).with_name("sae_train.json")))
    args = parser.parse_args()

    acts = cached_activations(args.site, args.steps * args.batch + 4096)
    train, held_out = acts[: args.steps * args.batch], acts[args.steps * args.batch :]
    load_before = os.getloadavg()[0]
    rows = {
        "ours_sparse": run_ours(train, held_out, args, sparse=True),
        "ours_dense": run_ours(train, held_out, args, sparse=False),
        "saelens": run_saelens(train, held_out, args),
    }
    floor = matmul_floor(args, acts.shape[1])
    print(f"{'trainer':<13} {'tokens/s':>10} {'step s':>8} {'x floor':>8} {'FVU':>7}")
    for name, row in rows.items():
        row["step_over_matmul_floor"] = row["step_s"] / floor
        print(
            f"{name:<13} {row['tokens_per_s']:>10.0f} {row['step_s']:>8.3f} {row['step_over_matmul_floor']:>8.1f} {row['fvu']:>7.3f}"
        )
    speedup = rows["ours_sparse"]["tokens_per_s"] / rows["saelens"]["tokens_per_s"]
    print(
        f"ours / SAELens throughput: {speedup:.2f}x; floor (one [{args.batch}x{acts.shape[1]}] @ [{acts.shape[1]}x{args.d_sae}] matmul): {floor:.3f} s"
    )
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }
    Path(args.out).write_text(
        json.dumps(
            {
                "args": vars(args),
                "machine": machine,
                "matmul_floor_s": floor,
                "speedup_vs_saelens": speedup,
                "results": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
