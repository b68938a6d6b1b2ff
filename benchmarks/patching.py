"""Batched activation patching vs transformer_lens.patching, and the peak memory of cache_sites.

    python benchmarks/patching.py --out benchmarks/results/patching.json

Speed: on the bundled SmolLM2-135M with 16 clean/corrupted prompt pairs, times our head sweep
(attn.hook_z, all positions) and resid_pre layer x position sweep against TransformerLens's
generic_activation_patch on the same layers, alternating the two in each repeat; prints medians,
the ratio and the largest difference of the results. TransformerLens runs one full forward per
patch, so the default sweeps the layers 4, 11, 18, 25 (mean 14.5, the mean of all 30 layers) to
keep the run under ten minutes; --layers all sweeps every layer.

Memory: each probe runs in a fresh subprocess, loads the model, warms up, resets the kernel's
peak-RSS mark (/proc/self/clear_refs), caches one site over 64 x 128 tokens, and reports the
peak RSS above the loaded model next to the size of the cached tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import torch

COUNTRIES = [
    ("France", "Paris"), ("Spain", "Madrid"), ("Italy", "Rome"), ("Germany", "Berlin"),
    ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Greece", "Athens"), ("China", "Beijing"),
    ("England", "London"), ("Canada", "Ottawa"), ("Austria", "Vienna"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Hungary", "Budapest"),
]  # fmt: skip
MEMORY_SITES = ["blocks.15.hook_resid_post", "blocks.15.mlp.hook_post"]


def prompt_pairs() -> tuple[list[str], list[str], list[str], list[str]]:
    """16 pairs: each country's prompt, corrupted with the next country's (cyclically)."""
    clean = [f"The capital of {c} is" for c, _ in COUNTRIES]
    corrupted = clean[1:] + clean[:1]
    answers = [f" {a}" for _, a in COUNTRIES]
    return clean, corrupted, answers, answers[1:] + answers[:1]


def check_prompts(model, task) -> float:
    """Equal token lengths are enforced by PatchingTask; here: the fraction the model answers top-1."""
    with torch.no_grad():
        top = model(task.clean_tokens)[:, -1].argmax(-1)
    return float((top == task.answer_tokens).float().mean())


def time_call(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def speed(model, layers: list[int], repeats: int) -> list[dict]:
    from transformer_lens import patching as tl_patching

    from interp import metrics
    from interp.patching import PatchingTask, patch_heads, patch_layer_positions

    task = PatchingTask(model, *prompt_pairs())
    print(f"16 pairs of {task.seq_len} tokens; clean top-1 accuracy {check_prompts(model, task):.2f}; logit diff clean {task.clean_metric:.3f}, corrupted {task.corrupted_metric:.3f}")
    metric = lambda logits: metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean()  # noqa: E731
    positions = range(task.seq_len)
    sweeps = {
        "heads (attn.hook_z, all positions)": (
            lambda: patch_heads(task, layers=layers),
            tl_patching.layer_head_vector_patch_setter, "z", pd.DataFrame([(l, h) for l in layers for h in range(model.cfg.n_heads)], columns=["layer", "head"]),
        ),
        "layer x position (hook_resid_pre)": (
            lambda: patch_layer_positions(task, "resid_pre", layers=layers),
            tl_patching.layer_pos_patch_setter, "resid_pre", pd.DataFrame([(l, p) for l in layers for p in positions], columns=["layer", "pos"]),
        ),
    }  # fmt: skip
    results = []
    for name, (ours_fn, setter, activation, index_df) in sweeps.items():
        ours_times, tl_times, diffs = [], [], []
        for _ in range(repeats):
            with torch.no_grad():
                _, clean_cache = model.run_with_cache(task.clean_tokens)
                tl_seconds, tl_values = time_call(
                    lambda: tl_patching.generic_activation_patch(model, task.corrupted_tokens, clean_cache, metric, setter, activation, index_df=index_df)
                )
            del clean_cache
            ours_seconds, ours = time_call(ours_fn)
            ours_times.append(ours_seconds)
            tl_times.append(tl_seconds)
            diffs.append(float(abs(ours.metric.to_numpy() - tl_values.numpy()).max()))
        row = dict(
            sweep=name, variants=len(index_df), ours_s=ours_times, transformer_lens_s=tl_times,
            ours_median_s=statistics.median(ours_times), transformer_lens_median_s=statistics.median(tl_times), max_abs_diff=max(diffs),
        )  # fmt: skip
        row["speedup"] = row["transformer_lens_median_s"] / row["ours_median_s"]
        print(f"  {name}: ours {row['ours_median_s']:.1f}s  TL {row['transformer_lens_median_s']:.1f}s  ratio {row['speedup']:.2f}x  max diff {row['max_abs_diff']:.2e}", flush=True)
        results.append(row)
    return results


def peak_rss_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_probe(hook_name: str, method: str) -> dict:
    """Runs in its own process: peak RSS of caching one site over 64 x 128 tokens."""
    from interp.hooks import cache_sites
    from interp.models import load_model

    model = load_model()
    tokens = torch.randint(0, model.cfg.d_vocab, (64, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(tokens[:1, :8])  # warm-up: library code and thread pools, not the measurement
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    base = peak_rss_kib()
    with torch.no_grad():
        if method == "interp.hooks.cache_sites":
            out = cache_sites(model, tokens, [hook_name])
            tensor = next(iter(out.values()))
        else:  # TransformerLens's own way: one forward with a names filter
            _, cache = model.run_with_cache(tokens, names_filter=hook_name, stop_at_layer=int(hook_name.split(".")[1]) + 1)
            tensor = cache[hook_name]
    peak_delta = (peak_rss_kib() - base) * 1024
    tensor_bytes = tensor.numel() * tensor.element_size()
    return dict(
        method=method, hook_name=hook_name, shape=list(tensor.shape), tensor_mb=tensor_bytes / 2**20, model_mb=model_bytes / 2**20,
        peak_above_model_mb=peak_delta / 2**20, peak_over_tensor=peak_delta / tensor_bytes, target_met=peak_delta <= 1.5 * tensor_bytes,
    )  # fmt: skip


def memory(threads: int) -> list[dict]:
    results = []
    for hook_name in MEMORY_SITES:
        for method in ("interp.hooks.cache_sites", "transformer_lens run_with_cache"):
            cmd = [sys.executable, __file__, "--memory-probe", hook_name, method, "--threads", str(threads)]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            print(f"  {method:32s} {hook_name:28s} tensor {row['tensor_mb']:.1f} MB  peak above model {row['peak_above_model_mb']:.1f} MB ({row['peak_over_tensor']:.2f}x)", flush=True)
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/patching.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", default="4,11,18,25", help="comma-separated layers, or 'all'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: timings on a shared machine stay stable)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-probe", nargs=2, metavar=("HOOK", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    from interp.models import load_model

    model = load_model()
    layers = list(range(model.cfg.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    report = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]), machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        torch=torch.__version__, threads=args.threads, load_average=os.getloadavg(), layers=layers, repeats=args.repeats,
    )  # fmt: skip
    print(f"{model.cfg.model_name}: layers {layers}, {args.repeats} repeats, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    if not args.skip_speed:
        report["speed"] = speed(model, layers, args.repeats)
    if not args.skip_memory:
        print("peak memory, caching one site over 64 x 128 tokens:")
        report["memory"] = memory(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
