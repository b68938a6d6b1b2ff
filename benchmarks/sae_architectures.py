"""Training-step speed of the new SAE architectures: ours against SAELens's implementation of the same architecture.

One training step = forward with the architecture's loss, backward, Adam step (and, for ours, the decoder's
unit-norm projection where the architecture uses it), on the same [batch, d_in] rows in the same process,
interleaved (ours, theirs, ours, ...) so both see the same machine load. Reports the median step time over
`--reps` steps after `--warmup`, tokens per second, and ours / theirs. SAELens trains Gated and Matryoshka
BatchTopK; it has no transcoder trainer, so transcoders are timed alone (with a TopK SAE of the same width as the
reference). Rows are Gaussian: a step's cost does not depend on the values (no data-dependent sparsity in these
dense paths). Writes benchmarks/sae_architectures.json.

    python benchmarks/sae_architectures.py                          # d_in 576 (SmolLM2), d_sae 4608, batch 2048
    python benchmarks/sae_architectures.py --batch 512 --reps 3     # quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from sae.models import GatedConfig, MatryoshkaConfig, SkipTranscoderConfig, TopKConfig, TranscoderConfig, build_sae
from sae.models.base import LossScale


def ours_step(cfg, rows: torch.Tensor):
    sae = build_sae(cfg)
    optimiser = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    dead = torch.zeros(cfg.d_sae, dtype=torch.bool)
    target = sae.target(rows)
    scale = LossScale(len(rows), float((target - target.mean(0)).pow(2).sum()))

    def step(i: int) -> None:
        out = sae.training_step(rows, dead, scale, i)
        out.loss.backward()
        if cfg.unit_norm_decoder:
            sae.remove_parallel_grad_()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if cfg.unit_norm_decoder:
            sae.normalise_decoder_()

    return step


def theirs_step(name: str, d_in: int, d_sae: int, k: int, rows: torch.Tensor):
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    if name == "gated":
        sae = GatedTrainingSAE(GatedTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=1.0))
        coefficients = {"l1": 1.0}
    else:
        widths = list(MatryoshkaConfig(d_in, d_sae, k=k).widths)
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, matryoshka_widths=widths)
        )
        coefficients = {}
    optimiser = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    dead = torch.zeros(d_sae, dtype=torch.bool)

    def step(i: int) -> None:
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=rows, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False
            )
        )
        out.loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    return step


def median_seconds(steps: dict, warmup: int, reps: int) -> dict[str, float]:
    for name, step in steps.items():
        for i in range(warmup):
            step(i)
    times = {name: [] for name in steps}
    for r in range(reps):  # interleaved: each rep times every contender once
        for name, step in steps.items():
            start = time.perf_counter()
            step(warmup + r)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d_in, d_sae, k, batch = args.d_in, args.d_sae, args.k, args.batch
    x = torch.randn(batch, d_in)
    pairs = torch.randn(batch, 2 * d_in)
    rows = []
    for name, cfg in (
        ("gated", GatedConfig(d_in, d_sae)),
        ("matryoshka", MatryoshkaConfig(d_in, d_sae, k=k)),
    ):
        t = median_seconds(
            {"ours": ours_step(cfg, x), "saelens": theirs_step(name, d_in, d_sae, k, x)}, args.warmup, args.reps
        )
        rows.append(
            dict(
                architecture=name,
                ours_s=t["ours"],
                saelens_s=t["saelens"],
                ours_tokens_per_s=batch / t["ours"],
                saelens_tokens_per_s=batch / t["saelens"],
                speedup=t["saelens"] / t["ours"],
            )
        )
        print(rows[-1], flush=True)
    t = median_seconds(
        {
            "transcoder": ours_step(TranscoderConfig(d_in, d_sae, d_out=d_in, k=k), pairs),
            "skip_transcoder": ours_step(SkipTranscoderConfig(d_in, d_sae, d_out=d_in, k=k), pairs),
            "topk_reference": ours_step(TopKConfig(d_in, d_sae, k=k), x),
        },
        args.warmup,
        args.reps,
    )
    for name in ("transcoder", "skip_transcoder"):
        rows.append(
            dict(
                architecture=name,
                ours_s=t[name],
                ours_tokens_per_s=batch / t[name],
                topk_sae_same_width_s=t["topk_reference"],
                note="SAELens has no transcoder trainer; reference: our TopK SAE (sparse backward) of the same width",
            )
        )
        print(rows[-1], flush=True)
    record = dict(
        shape=dict(d_in=d_in, d_sae=d_sae, k=k, batch=batch),
        threads=args.threads,
        warmup=args.warmup,
        reps=args.reps,
        torch=torch.__version__,
        machine=platform.processor() or platform.machine(),
        rows=rows,
    )
    args.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
