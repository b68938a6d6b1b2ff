"""TopK SAE training speed: ours (sparse backward) against our dense path and SAELens's SAETrainer + TopKTrainingSAE.

All three train on the same cached activations of the bundled model for the same number of tokens;
we report tokens per second, held-out FVU, and our step time over the floor (one dense matmul of the
encoder's shape through torch, [batch x d_in] x [d_in x d_sae], timed at the same thread count between the runs).
Prints a table and writes benchmarks/results/sae_train.json with `step_over_matmul` (the median of our steps
after the first, over the median FLOAT32 matmul: the floor stays fp32 whatever our step selects in) and `vs_saelens`
(our tokens/s over SAELens's, whole runs); `vs_saelens_pair` names the two rows that ratio is of (ours_sparse over
saelens when both ran), `ratios` holds every ours / SAELens pair of the run, `step_over_matmul_floor` each row's step
over the fp32 matmul and `step_over_bf16_matmul` over the same matmul in bfloat16.

Trainers (--trainers, a comma list): ours_sparse (our sparse TopK step), ours_sparse_bf16select (the same, the top k
chosen on bfloat16 scores, values and gradients exact fp32: TopKConfig.select_dtype), saelens (SAETrainer, fp32),
saelens_autocast (SAETrainer with autocast=True: its step under bfloat16 autocast, the matched baseline for a
low-precision ours), ours_dense (our dense reference path, --dense-steps steps). --select-dtype D turns ours_sparse
into ours_sparse_<D>select, --saelens-autocast turns saelens into saelens_autocast.

    python benchmarks/sae_train.py                      # the target shape: d_sae 9216, k 32, batch 4096, 1 thread
    python benchmarks/sae_train.py --batch 1024 --steps 10   # a quick run on a small CPU
    python benchmarks/sae_train.py --select-dtype bfloat16 --saelens-autocast   # the bf16 pair
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import matmul_times  # noqa: E402


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


SELECT_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
TRAINERS = ("ours_sparse", "saelens", "ours_dense") + tuple(f"ours_sparse_{s}select" for s in SELECT_SHORT.values())
TRAINERS += ("saelens_autocast",)


class MarkedBatches:
    """The batches a trainer reads, with the wall and process CPU clocks read at every fetch: consecutive fetches
    bound one training step, for SAELens's SAETrainer (which has no per-step callback) as for ours."""

    def __init__(self, batches):
        self.batches, self.wall, self.cpu = iter(batches), [], []

    def __iter__(self):
        return self

    def __next__(self):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return next(self.batches)

    def median_steps(self) -> dict:
        """Median wall and CPU seconds between fetches, after the first two (initialisation: b_dec's geometric
        median, SAELens's norm estimate)."""
        wall = [b - a for a, b in zip(self.wall, self.wall[1:])][2:]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])][2:]
        return {"median_step_s": statistics.median(wall), "median_step_cpu_s": statistics.median(cpu)} if wall else {}


def run_ours(train, held_out, args, sparse: bool, select_dtype: str | None = None) -> dict:
    cfg = TopKConfig(d_in=train.shape[1], d_sae=args.d_sae, k=args.k, sparse_backward=sparse, select_dtype=select_dtype)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=max(1, args.steps // 10),
        decay_fraction=0.2,
        log_every=args.steps,
    )
    marks = [time.perf_counter()]
    fetched = MarkedBatches(TensorBatches(train, args.batch))
    result = train_sae(
        cfg,
        fetched,
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
        "median_step_cpu_s": fetched.median_steps().get("median_step_cpu_s"),
        "fvu": fvu(result.sae, held_out),
        "final_train_fvu": float(result.curve.fvu.iloc[-1]),
        **({"select_agreement": select_agreement(result.sae, held_out)} if select_dtype else {}),
    }


def select_agreement(sae, x: torch.Tensor) -> dict:
    """The trained SAE's top-k index sets on held-out rows chosen with its select_dtype against exact fp32 scores:
    the share of entries that agree (and the same share for the top k taken straight from the low-precision scores)."""
    from sae.sparse_ops import topk_encode

    k, width, low_dtype = sae.cfg.k, sae.cfg.d_sae, sae.cfg.select_torch_dtype
    with torch.no_grad():
        xc = x - sae.b_dec
        exact = torch.nn.functional.linear(xc, sae.encoder, sae.b_enc).topk(k, dim=1, sorted=False).indices
        ours = topk_encode(xc, sae.encoder, sae.b_enc, k, low_dtype)[1]
        low = torch.nn.functional.linear(xc.to(low_dtype), sae.encoder.to(low_dtype), sae.b_enc.to(low_dtype))
        plain = low.topk(k, dim=1, sorted=False).indices
        del low
    mask = lambda i: torch.zeros(len(x), width, dtype=torch.bool).scatter_(1, i, True)  # noqa: E731
    wanted = mask(exact)
    entries = int(wanted.sum())
    agree, plain_agree = int((mask(ours) & wanted).sum()), int((mask(plain) & wanted).sum())
    return {
        "entries": entries,
        "agree": agree,
        "share": agree / entries,
        "plain_low_precision_share": plain_agree / entries,
    }


def run_saelens(train, held_out, args, autocast: bool = False) -> dict:
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
        autocast=autocast,  # bfloat16 autocast around its training forward (on CPU too)
    )
    batches = MarkedBatches(TensorBatches(train, args.batch))
    start = time.perf_counter()
    trained = SAETrainer(cfg=cfg, sae=sae, data_provider=batches).fit()
    seconds = time.perf_counter() - start
    return {
        "tokens_per_s": args.steps * args.batch / seconds,
        "step_s": seconds / args.steps,
        **batches.median_steps(),
        "fvu": fvu(lambda x: trained.decode(trained.encode(x)), held_out),
    }


def interleaved(train: torch.Tensor, args, rounds: int = 7) -> dict:
    """Our sparse step and the matmul floor alternated `rounds` times (a step: training_step, backward, fused Adam,
    decoder renormalised, as train_sae does), so that both see the same load; medians and their ratio."""
    from sae.models import build_sae
    from sae.models.base import LossScale

    cfg = TopKConfig(d_in=train.shape[1], d_sae=args.d_sae, k=args.k, select_dtype=args.select_dtype)
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
    parser.add_argument(
        "--trainers",
        default="ours_sparse,saelens",
        help=f"comma list of the trainers to run, in order, among {', '.join(TRAINERS)} (ours_dense also runs when "
        "--dense-steps is given)",
    )
    parser.add_argument(
        "--select-dtype",
        default=None,
        choices=sorted(SELECT_SHORT),
        help="ours_sparse chooses its top k on scores in this dtype (values and gradients stay fp32); its row is then "
        "ours_sparse_<short>select",
    )
    parser.add_argument(
        "--saelens-autocast",
        action="store_true",
        help="SAELens trains under bfloat16 autocast (SAETrainerConfig.autocast); its row is then saelens_autocast",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sae_train.json"))
    args = parser.parse_args()
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = [t for t in trainers if t not in TRAINERS]
    if unknown or not trainers:
        parser.error(f"--trainers {args.trainers!r}: unknown {unknown}; choose among {', '.join(TRAINERS)}")
    if args.select_dtype:
        trainers = [
            f"ours_sparse_{SELECT_SHORT[args.select_dtype]}select" if t == "ours_sparse" else t for t in trainers
        ]
    if args.saelens_autocast:
        trainers = ["saelens_autocast" if t == "saelens" else t for t in trainers]
    if args.dense_steps and "ours_dense" not in trainers:
        trainers.append("ours_dense")
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
    mm = matmul_times(args.batch, acts.shape[1], args.d_sae)
    mm_bf16 = matmul_times(args.batch, acts.shape[1], args.d_sae, dtype=torch.bfloat16)
    rows = {}
    for name in trainers:
        print(f"running {name} ...", flush=True)
        if name == "ours_dense":
            steps = args.dense_steps or args.steps
            rows[name] = run_ours(train, held_out, argparse.Namespace(**{**vars(args), "steps": steps}), sparse=False)
        elif name.startswith("ours_sparse"):
            short = name.removeprefix("ours_sparse_").removesuffix("select") if name != "ours_sparse" else None
            select = next((d for d, s in SELECT_SHORT.items() if s == short), None)
            rows[name] = run_ours(train, held_out, args, sparse=True, select_dtype=select)
        else:
            rows[name] = run_saelens(train, held_out, args, autocast=name == "saelens_autocast")
        mm += matmul_times(args.batch, acts.shape[1], args.d_sae)
        mm_bf16 += matmul_times(args.batch, acts.shape[1], args.d_sae, dtype=torch.bfloat16)
    floor, floor_bf16 = statistics.median(mm), statistics.median(mm_bf16)
    print(f"{'trainer':<24} {'tokens/s':>10} {'step s':>8} {'x floor':>8} {'x bf16':>7} {'FVU':>7}")
    for name, row in rows.items():
        row["step_over_matmul_floor"] = row["step_s"] / floor  # over the fp32 matmul: the floor
        row["step_over_bf16_matmul"] = row["step_s"] / floor_bf16
        if "median_step_s" in row:
            row["median_step_over_matmul_floor"] = row["median_step_s"] / floor
        print(
            f"{name:<24} {row['tokens_per_s']:>10.0f} {row['step_s']:>8.3f} {row['step_over_matmul_floor']:>8.2f} "
            f"{row['step_over_bf16_matmul']:>7.2f} {row['fvu']:>7.3f}"
        )
    ours_names = [n for n in rows if n.startswith("ours_sparse")]
    saelens_names = [n for n in rows if n.startswith("saelens")]
    ratios = {f"{o}/{s}": rows[o]["tokens_per_s"] / rows[s]["tokens_per_s"] for o in ours_names for s in saelens_names}
    for pair, ratio in ratios.items():
        print(
            f"tokens/s {pair}: {ratio:.2f}x (held-out FVU {rows[pair.split('/')[0]]['fvu']:.3f} vs {rows[pair.split('/')[1]]['fvu']:.3f})"
        )
    pair = (ours_names[0], saelens_names[0]) if ours_names and saelens_names else None
    speedup = ratios[f"{pair[0]}/{pair[1]}"] if pair else None
    step_over_matmul = rows[ours_names[0]]["median_step_s"] / floor if ours_names else None
    print(
        f"floor (one [{args.batch}x{acts.shape[1]}] @ [{acts.shape[1]}x{args.d_sae}] matmul, median of {len(mm)}): fp32 {floor:.3f} s, "
        f"bf16 {floor_bf16:.3f} s"
        + (f"; {ours_names[0]} median step / fp32 floor: {step_over_matmul:.2f}x" if ours_names else "")
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
                "trainers": trainers,
                "matmul_floor_s": floor,  # fp32: the floor
                "matmul_s": mm,
                "matmul_bf16_s": mm_bf16,
                "matmul_bf16_median_s": floor_bf16,
                "step_over_matmul": step_over_matmul,  # the first ours_sparse* row's median step / fp32 matmul floor
                "step_over_matmul_trainer": ours_names[0] if ours_names else None,
                "vs_saelens": speedup,  # tokens/s of vs_saelens_pair[0] over vs_saelens_pair[1]
                "vs_saelens_pair": list(pair) if pair else None,
                "speedup_vs_saelens": speedup,  # the old key
                "ratios": ratios,  # tokens/s, every ours_sparse* row over every saelens* row
                "results": rows,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
