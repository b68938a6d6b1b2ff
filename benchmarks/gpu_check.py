"""One GPU check, one JSON: the Triton kernels against their torch twins, the SAE step against SAELens, patching against
TransformerLens. Run through benchmarks/gpu.sh (which caps it at 8 minutes).

    benchmarks/gpu.sh                                   # on a GPU: the sizes of issue 19
    TRITON_INTERPRET=1 INTERP_FORCE_TRITON=1 benchmarks/gpu.sh --tiny --out /tmp/gpu.json   # on CPU, tiny sizes

Kernels: row_topk, rows_sum, rows_dot, rows_grad (interp.kernels) and patched_batch, attribution_scores, each called
as its Triton kernel and as its torch twin on the same inputs: largest difference (and, for row_topk, whether every
row picked the same set of latents) and median time of each. Sizes: n 4096 rows, d_in 576 -> d_sae 9216, k 32, and
d_in 2304 -> d_sae 65536, k 64.
SAE: a TopK SAE (d_in 576 -> 9216, k 32, batch 4096) trained on the device by our sparse step (sae.training_step,
fused Adam, decoder renormalised: the body of sae.train.train_sae's loop) and by SAELens's SAETrainer +
TopKTrainingSAE, the same batches and steps: tokens/s of each and held-out FVU. Activations of the bundled model
when it and the corpus load, else a planted sparse dictionary (labelled in the JSON).
Patching: the head sweep of benchmarks/patching.py (16 capital pairs, layers 4, 11, 18, 25) by interp.patching and by
transformer_lens.patching.generic_activation_patch on the device: seconds, ratio, largest difference.
--tiny: every size a few rows wide, the random 3-layer model instead of the bundled one, so the whole script runs on
CPU in seconds (a test runs it so under TRITON_INTERPRET=1, so that it runs first time on a GPU machine).
A section that fails records its error and the rest still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FULL = dict(
    kernel_sizes=[dict(n=4096, d_in=576, d_sae=9216, k=32), dict(n=4096, d_in=2304, d_sae=65536, k=64)],
    patch=dict(batch=16, pos=5, variants=270),
    sae=dict(d_in=576, d_sae=9216, k=32, batch=4096, steps=300, held_out=16384),
    patching_layers=[4, 11, 18, 25],
    repeats=5,
)
TINY = dict(
    kernel_sizes=[dict(n=4, d_in=16, d_sae=32, k=4)],
    patch=dict(batch=2, pos=3, variants=5),
    sae=dict(d_in=16, d_sae=32, k=4, batch=32, steps=2, held_out=64),
    patching_layers=[1],
    repeats=0,
)
TINY_MODEL = dict(
    n_layers=3, d_model=64, d_head=16, n_heads=4, n_key_value_heads=2, d_mlp=128, d_vocab=101, n_ctx=32,
    act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True,
)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int):
    """Median seconds of `repeats` calls after a warm-up (Triton compiles then); repeats=0: the one call, timed."""
    start = time.perf_counter()
    out = fn()
    sync(device)
    times = [time.perf_counter() - start] if repeats == 0 else []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def kernels(device: torch.device, sizes: dict, patch: dict, repeats: int) -> list[dict]:
    from interp.kernels import patching as kp
    from interp.kernels import sparse_rows as sr
    from interp.kernels import topk as kt

    rows = []
    gen = torch.Generator().manual_seed(0)
    for size in sizes:
        n, d_in, d_sae, k = size["n"], size["d_in"], size["d_sae"], size["k"]
        pre = torch.randn(n, d_sae, generator=gen).to(device)
        bias = torch.randn(d_sae, generator=gen).to(device)
        weights = torch.randn(d_sae, d_in, generator=gen).to(device)
        dense = torch.randn(n, d_in, generator=gen).to(device)
        _, indices = kt.row_topk_torch(pre, k, bias=bias)
        values = torch.randn(n, k, generator=gen).to(device)
        cases = {
            "row_topk": (
                lambda: kt.row_topk_triton(pre, k, bias=bias, relu=True),
                lambda: kt.row_topk_torch(pre, k, bias=bias, relu=True),
            ),
            "rows_sum": (lambda: sr.rows_sum_triton(values, indices, weights), lambda: sr.rows_sum_torch(values, indices, weights)),
            "rows_dot": (lambda: sr.rows_dot_triton(dense, indices, weights), lambda: sr.rows_dot_torch(dense, indices, weights)),
            "rows_grad": (
                lambda: sr.rows_grad_triton(values, indices, dense, d_sae),
                lambda: sr.rows_grad_torch(values, indices, dense, d_sae),
            ),
        }  # fmt: skip
        for name, (kernel, twin) in cases.items():
            kernel_s, got = timed(kernel, device, repeats)
            twin_s, want = timed(twin, device, repeats)
            row = dict(kernel=name, **size, triton_s=kernel_s, torch_s=twin_s, torch_over_triton=twin_s / kernel_s)
            if name == "row_topk":
                same = (got[1].sort(1).values == want[1].sort(1).values).all()
                order_got, order_want = got[1].argsort(1), want[1].argsort(1)
                row.update(
                    same_indices=bool(same),
                    max_abs_diff=max_diff(got[0].gather(1, order_got), want[0].gather(1, order_want)),
                )
            else:
                row["max_abs_diff"] = max_diff(got, want)
            rows.append(row)
    batch, pos, variants = patch["batch"], patch["pos"], patch["variants"]
    clean, corrupted, grad = (torch.randn(batch, pos, 9, 64, generator=gen).to(device) for _ in range(3))
    positions = torch.full((variants,), kp.ALL, device=device)
    groups = torch.arange(variants, device=device) % 9
    for name, kernel, twin in (
        ("patched_batch", kp.patched_batch_triton, kp.patched_batch_torch),
        ("attribution_scores", kp.attribution_scores_triton, kp.attribution_scores_torch),
    ):
        args = (clean, corrupted, positions, groups) if name == "patched_batch" else (clean, corrupted, grad)
        kernel_s, got = timed(lambda: kernel(*args), device, repeats)
        twin_s, want = timed(lambda: twin(*args), device, repeats)
        rows.append(
            dict(kernel=name, batch=batch, pos=pos, variants=variants, triton_s=kernel_s, torch_s=twin_s,
                 torch_over_triton=twin_s / kernel_s, max_abs_diff=max_diff(got, want))
        )  # fmt: skip
    for row in rows:
        print(
            f"  {row['kernel']:<19} triton {row['triton_s'] * 1e3:9.3f} ms  torch {row['torch_s'] * 1e3:9.3f} ms  "
            f"({row['torch_over_triton']:.2f}x)  max diff {row['max_abs_diff']:.1e}",
            flush=True,
        )
    return rows


def sae_data(device: torch.device, cfg: dict, tiny: bool) -> tuple[torch.Tensor, str]:
    n = cfg["batch"] * cfg["steps"] + cfg["held_out"]
    if not tiny:
        try:
            from benchmarks.sae_train import cached_activations

            return cached_activations("blocks.6.hook_resid_post", n).to(
                device
            ), "bundled model blocks.6.hook_resid_post"
        except Exception as exc:  # no bundled model or corpus on this machine
            print(f"  (model activations unavailable: {exc}; a planted sparse dictionary instead)")
    gen = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(4 * cfg["d_in"], cfg["d_in"], generator=gen), dim=1)
    codes = torch.rand(n, 4 * cfg["d_in"], generator=gen) * (torch.rand(n, 4 * cfg["d_in"], generator=gen) < 0.02)
    x = codes @ dictionary + 0.01 * torch.randn(n, cfg["d_in"], generator=gen)
    return x.to(device), "planted sparse dictionary (4 d_in atoms, 2% active)"


def fvu(encode_decode, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((encode_decode(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def sae(device: torch.device, cfg: dict, tiny: bool) -> dict:
    from sae.models import TopKConfig, build_sae
    from sae.models.base import LossScale

    acts, source = sae_data(device, cfg, tiny)
    steps, batch = cfg["steps"], cfg["batch"]
    train, held_out = acts[: steps * batch], acts[steps * batch :]
    scale = math_scale = float(train[:batch].pow(2).sum(1).mean()) ** -0.5 * cfg["d_in"] ** 0.5
    train, held_out = train * scale, held_out * scale  # both trainers see E||x||^2 = d_in
    lr = 4e-4

    def ours(select_dtype: str | None) -> tuple[float, float]:
        model = build_sae(TopKConfig(d_in=cfg["d_in"], d_sae=cfg["d_sae"], k=cfg["k"], select_dtype=select_dtype))
        model = model.to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        dead = torch.zeros(cfg["d_sae"], dtype=torch.bool, device=device)
        with torch.no_grad():
            model.b_dec.copy_(train[:batch].mean(0))
        sync(device)
        start = time.perf_counter()
        for step in range(steps):
            x = train[step * batch : (step + 1) * batch]
            out = model.training_step(x, dead, LossScale(batch, float((x - x.mean(0)).pow(2).sum())), step)
            out.loss.backward()
            model.remove_parallel_grad_()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            model.normalise_decoder_()
        sync(device)
        return time.perf_counter() - start, fvu(model, held_out)

    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    def saelens(autocast: bool) -> tuple[float, float]:
        peer = TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=cfg["d_in"], d_sae=cfg["d_sae"], k=cfg["k"], device=str(device))
        )
        trainer_cfg = SAETrainerConfig(
            total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr, lr_warm_up_steps=0,
            lr_decay_steps=0, lr_end=lr, n_batches_for_norm_estimate=1, device=str(device), autocast=autocast,
        )  # fmt: skip
        batches = (train[step * batch : (step + 1) * batch] for step in range(steps))
        sync(device)
        start = time.perf_counter()
        trained = SAETrainer(cfg=trainer_cfg, sae=peer, data_provider=batches).fit()
        sync(device)
        return time.perf_counter() - start, fvu(lambda x: trained.decode(trained.encode(x)), held_out)

    # ours exact, ours choosing its top k on bfloat16 scores (values and gradients exact), SAELens in float32 and
    # under bfloat16 autocast (the baseline matched to a bfloat16 product)
    (ours_s, ours_fvu), (ours_bf16_s, ours_bf16_fvu) = ours(None), ours("bfloat16")
    (peer_s, peer_fvu), (peer_autocast_s, peer_autocast_fvu) = saelens(False), saelens(True)
    row = dict(
        source=source, **cfg, input_scale=math_scale, ours_tokens_per_s=steps * batch / ours_s,
        saelens_tokens_per_s=steps * batch / peer_s, ours_fvu=ours_fvu, saelens_fvu=peer_fvu,
        ours_bf16select_tokens_per_s=steps * batch / ours_bf16_s, ours_bf16select_fvu=ours_bf16_fvu,
        saelens_autocast_tokens_per_s=steps * batch / peer_autocast_s, saelens_autocast_fvu=peer_autocast_fvu,
    )  # fmt: skip
    row["bf16select_vs_saelens"] = row["ours_bf16select_tokens_per_s"] / row["saelens_tokens_per_s"]
    row["bf16select_vs_saelens_autocast"] = row["ours_bf16select_tokens_per_s"] / row["saelens_autocast_tokens_per_s"]
    row["vs_saelens"] = row["ours_tokens_per_s"] / row["saelens_tokens_per_s"]
    print(
        f"  SAE: ours {row['ours_tokens_per_s']:.0f} tokens/s (FVU {ours_fvu:.3f}), SAELens {row['saelens_tokens_per_s']:.0f} "
        f"(FVU {row['saelens_fvu']:.3f}): {row['vs_saelens']:.2f}x; bf16 selection {row['ours_bf16select_tokens_per_s']:.0f} "
        f"(FVU {ours_bf16_fvu:.3f}): {row['bf16select_vs_saelens']:.2f}x SAELens, "
        f"{row['bf16select_vs_saelens_autocast']:.2f}x SAELens under autocast (FVU {peer_autocast_fvu:.3f})",
        flush=True,
    )
    return row


def patching(device: torch.device, layers: list[int], tiny: bool, repeats: int) -> dict:
    import pandas as pd
    from transformer_lens import patching as tl_patching

    from interp import metrics
    from interp.models import load_model
    from interp.patching import PatchingTask, patch_heads

    if tiny:
        model = load_model(TINY_MODEL, seed=0, device=device)
        tokens = torch.randint(0, model.cfg.d_vocab, (2, 4, 6), generator=torch.Generator().manual_seed(0))
        task = PatchingTask(model, tokens[0].to(device), tokens[1].to(device), [3, 7, 11, 2], [9, 1, 4, 5])
        name = "random 3-layer model, 4 random pairs"
    else:
        from benchmarks.patching import prompt_pairs

        model = load_model(device=device)
        task = PatchingTask(model, *prompt_pairs())
        name = f"{model.cfg.model_name}, 16 capital pairs"
    metric = lambda logits: metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean()  # noqa: E731
    index = pd.DataFrame([(layer, h) for layer in layers for h in range(model.cfg.n_heads)], columns=["layer", "head"])
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(task.clean_tokens)
    ours_s, ours = timed(lambda: patch_heads(task, layers=layers), device, repeats)
    with torch.no_grad():
        tl_s, theirs = timed(
            lambda: tl_patching.generic_activation_patch(
                model, task.corrupted_tokens, clean_cache, metric, tl_patching.layer_head_vector_patch_setter, "z",
                index_df=index,
            ),
            device,
            repeats,
        )  # fmt: skip
    row = dict(
        model=name, layers=layers, variants=len(index), ours_s=ours_s, transformer_lens_s=tl_s,
        ours_vs_transformer_lens=tl_s / ours_s, max_abs_diff=max_diff(torch.tensor(ours.metric.to_numpy()), theirs.cpu()),
    )  # fmt: skip
    print(
        f"  patching ({len(index)} head variants): ours {ours_s:.3f}s, TL {tl_s:.3f}s ({row['ours_vs_transformer_lens']:.2f}x), "
        f"max diff {row['max_abs_diff']:.1e}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and the random 3-layer model (CPU, seconds)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: kernels, sae, patching")
    args = parser.parse_args()
    plan = TINY if args.tiny else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from interp.kernels import use_triton

    report = dict(
        command=" ".join(sys.argv), tiny=args.tiny, device=str(device),
        device_name=torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
        torch=torch.__version__, triton_runs=use_triton(torch.empty(0, device=device)),
        triton_interpret=os.environ.get("TRITON_INTERPRET") == "1", errors={},
    )  # fmt: skip
    print(f"GPU check on {report['device_name']} ({'tiny' if args.tiny else 'full'} sizes)", flush=True)
    start = time.perf_counter()
    sections = {
        "kernels": lambda: kernels(device, plan["kernel_sizes"], plan["patch"], plan["repeats"]),
        "sae": lambda: sae(device, plan["sae"], args.tiny),
        "patching": lambda: patching(device, plan["patching_layers"], args.tiny, plan["repeats"] // 2),
    }
    for name, run in sections.items():
        if name in args.skip.split(","):
            continue
        print(f"{name}:", flush=True)
        try:
            report[name] = run()
        except Exception as exc:  # record and go on: one broken section must not cost the others' figures
            traceback.print_exc()
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
    report["seconds"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out} ({report['seconds']:.0f} s; errors: {list(report['errors']) or 'none'})")


if __name__ == "__main__":
    main()
