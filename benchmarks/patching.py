"""Batched activation patching vs transformer_lens.patching, and the peak memory of cache_sites.

    python benchmarks/patching.py --out benchmarks/results/patching.json

Speed: on the bundled SmolLM2-135M with 16 clean/corrupted prompt pairs, times our head sweep
(attn.hook_z, all positions) and resid_pre layer x position sweep against TransformerLens's
generic_activation_patch on the same layers, alternating the two in each repeat; prints medians,
the ratio and the largest difference of the results. TransformerLens runs one full forward per
patch, so the default sweeps the layers 4, 11, 18, 25 (mean 14.5, the mean of all 30 layers) to
keep the run under ten minutes; --layers all sweeps every layer.

Agreement: AtP vs the exact sweep over all 270 heads on the built-in capital pairs (Spearman, recall@20).
Race: on the same layers, for a head sweep and a neuron sweep: ours, TransformerLens, nnsight with
batched invokes, AtP, and the floor (the block suffix each variant must run, no hooks); ratios and
max differences. Neuron memory: every neuron of one layer under a memory budget, in a fresh process.

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
    from patching_floor import flop_floor, matmul_rate, shape_floor  # beside this script (run as a script)
    from transformer_lens import patching as tl_patching

    from interp import metrics
    from interp.patching import PatchingTask, patch_heads, patch_layer_positions
    from interp.sites import Site

    task = PatchingTask(model, *prompt_pairs())
    print(
        f"16 pairs of {task.seq_len} tokens; clean top-1 accuracy {check_prompts(model, task):.2f}; logit diff clean {task.clean_metric:.3f}, corrupted {task.corrupted_metric:.3f}"
    )
    metric = lambda logits: metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean()  # noqa: E731
    positions = range(task.seq_len)
    sweeps = {
        "heads (attn.hook_z, all positions)": (
            lambda: patch_heads(task, layers=layers),
            tl_patching.layer_head_vector_patch_setter, "z", pd.DataFrame([(layer, h) for layer in layers for h in range(model.cfg.n_heads)], columns=["layer", "head"]),
            [Site(layer, "z", head=h) for layer in layers for h in range(model.cfg.n_heads)],
        ),
        "layer x position (hook_resid_pre)": (
            lambda: patch_layer_positions(task, "resid_pre", layers=layers),
            tl_patching.layer_pos_patch_setter, "resid_pre", pd.DataFrame([(layer, p) for layer in layers for p in positions], columns=["layer", "pos"]),
            [Site(layer, "resid_pre", position=p) for layer in layers for p in positions],
        ),
    }  # fmt: skip
    rates = [matmul_rate()]
    results = []
    for name, (ours_fn, setter, activation, index_df, sites) in sweeps.items():
        ours_times, tl_times, diffs = [], [], []
        for _ in range(repeats):
            with torch.no_grad():
                _, clean_cache = model.run_with_cache(task.clean_tokens)
                tl_seconds, tl_values = time_call(
                    lambda cache=clean_cache: tl_patching.generic_activation_patch(
                        model,
                        task.corrupted_tokens,
                        cache,
                        metric,
                        setter,
                        activation,
                        index_df=index_df,
                    )
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
        row["sites"] = sites
        row.update(shape_floor(task, ours_fn, sites))
        rates.append(matmul_rate())
        results.append(row)
    rate = statistics.median(rates)  # timed before, between and after the sweeps
    for row in results:
        row.update(flop_floor(model, task, row.pop("sites"), rate), threads=torch.get_num_threads(), matmul_rates=rates)
        row["ours_over_flop_floor"] = row["ours_median_s"] / row["flop_floor_s"]
        row["tl_over_flop_floor"] = row["transformer_lens_median_s"] / row["flop_floor_s"]
        row["ours_over_shape_floor"] = row["ours_median_s"] / row["shape_floor_s"]
        row["baseline_runs_over_flop_floor"] = row["baseline_runs_s"] / row["flop_floor_s"]
        print(
            f"  {row['sweep']} ({row['threads']} thread(s)): ours {row['ours_median_s']:.1f}s  TL {row['transformer_lens_median_s']:.1f}s  ratio {row['speedup']:.2f}x  "
            f"max diff {row['max_abs_diff']:.2e}; FLOP floor {row['flops'] / 1e9:.1f} GFLOP at {rate / 1e9:.1f} GFLOP/s = {row['flop_floor_s']:.2f}s: "
            f"ours {row['ours_over_flop_floor']:.2f}x, TL {row['tl_over_flop_floor']:.2f}x; its own products alone "
            f"{row['shape_floor_s']:.2f}s (ours {row['ours_over_shape_floor']:.2f}x that), of which the clean and "
            f"corrupted runs {row['baseline_runs_shape_floor_s']:.2f}s; those two runs took {row['baseline_runs_s']:.2f}s",
            flush=True,
        )
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
            _, cache = model.run_with_cache(
                tokens, names_filter=hook_name, stop_at_layer=int(hook_name.split(".")[1]) + 1
            )
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
            row = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            )
            print(
                f"  {method:32s} {hook_name:28s} tensor {row['tensor_mb']:.1f} MB  peak above model {row['peak_above_model_mb']:.1f} MB ({row['peak_over_tensor']:.2f}x)",
                flush=True,
            )
            results.append(row)
    return results


# -- the race: AtP, nnsight batched invokes, and the floor, beside ours and TransformerLens ------
def capital_task(model, pairs=None):
    from interp.patching.pairs import builtin_pairs
    from interp.patching import PatchingTask

    pairs = pairs or builtin_pairs()
    return PatchingTask(model, *([p[k] for p in pairs] for k in ("clean", "corrupted", "answer", "wrong")))


def agreement(model) -> dict:
    """AtP vs the exact sweep over every head of the bundled model on the built-in 16 capital pairs."""
    from scipy.stats import spearmanr

    from interp.attribution import attribute_heads
    from interp.patching import patch_heads

    task = capital_task(model)
    exact_s, exact = time_call(lambda: patch_heads(task))
    atp_s, atp = time_call(lambda: attribute_heads(task))
    top = {name: set(frame.restoration.abs().nlargest(20).index) for name, frame in (("exact", exact), ("atp", atp))}
    row = dict(
        heads=len(exact), exact_s=exact_s, atp_s=atp_s, spearman=float(spearmanr(exact.restoration, atp.restoration).statistic),
        recall_at_20=len(top["exact"] & top["atp"]) / 20, max_abs_restoration_diff=float((exact.restoration - atp.restoration).abs().max()),
        top_exact=exact.loc[exact.restoration.abs().nlargest(5).index, ["layer", "head", "restoration"]].assign(atp=atp.restoration).to_dict("records"),
    )  # fmt: skip
    print(
        f"  all {row['heads']} heads: Spearman {row['spearman']:.3f}, recall@20 {row['recall_at_20']:.2f}, exact {exact_s:.1f}s, AtP {atp_s:.2f}s",
        flush=True,
    )
    return row


def floor_seconds(task, sites) -> float:
    """The forward the exact sweep cannot avoid: each variant's prompts through the blocks after its
    layer (batched per layer, as the engine batches), without hooks, unembedding the last position."""
    from interp.patching.task import last_position_logits

    model, by_layer = task.model, {}
    for site in sites:
        by_layer[site.layer] = by_layer.get(site.layer, 0) + 1
    start = time.perf_counter()
    with torch.no_grad():
        for layer, n in by_layer.items():
            resid = torch.randn(n * task.n_prompts, task.seq_len, model.cfg.d_model)
            for block in model.blocks[layer:]:
                resid = block(resid)
            last_position_logits(model, resid)
    return time.perf_counter() - start


def nnsight_sweep(nn_model, task, sites) -> list[float]:
    """The same sweep in nnsight: one trace, one batched invoke per variant (clean slice written in)."""
    from interp.sites import Site

    lm, cfg = nn_model.nn, nn_model.cfg
    clean = dict(
        zip(
            sorted({(s.layer, s.component) for s in sites}),
            nn_model.cache(
                task.clean_tokens, [Site(*k) for k in sorted({(s.layer, s.component) for s in sites})]
            ).values(),
        )
    )
    outs = []
    with torch.no_grad(), lm.trace() as tracer:
        for site in sites:
            with tracer.invoke(task.corrupted_tokens):
                if site.component == "z":
                    module = lm.model.layers[site.layer].self_attn.o_proj
                    x = module.input.clone()
                    x.view(*x.shape[:-1], cfg.n_heads, cfg.d_head)[:, :, site.head] = clean[(site.layer, "z")][
                        :, :, site.head
                    ]
                else:
                    module = lm.model.layers[site.layer].mlp.down_proj
                    x = module.input.clone()
                    x[:, :, site.neuron] = clean[(site.layer, site.component)][:, :, site.neuron]
                module.input = x
                outs.append(lm.lm_head.output[:, -1].save())
    answer, wrong = task.answer_tokens[:, None], task.wrong_tokens[:, None]
    return [float((o.gather(-1, answer) - o.gather(-1, wrong)).mean()) for o in outs]


def neuron_patch_setter(corrupted_activation, index, clean_activation):
    """TransformerLens has no setter for [layer, neuron]: this one, in the manner of its own."""
    _, neuron = index
    corrupted_activation[:, :, neuron] = clean_activation[:, :, neuron]
    return corrupted_activation


def race(model, layers: list[int], neurons: int, speed_rows: list[dict]) -> list[dict]:
    from patching_floor import flop_floor, matmul_rate  # beside this script (run as a script)
    from transformer_lens import patching as tl_patching

    from interp import metrics
    from interp.attribution import attribute_heads, attribute_neurons
    from interp.models import bundled_gguf_path
    from interp.nnsight_model import NNsightModel
    from interp.patching import patch_heads, patch_neurons
    from interp.patching.engine import normalised_site
    from interp.sites import Site

    task = capital_task(model, [dict(clean=c, corrupted=x, answer=a, wrong=w) for c, x, a, w in zip(*prompt_pairs())])
    nn_model = NNsightModel.from_pretrained(bundled_gguf_path())
    tl_metric = lambda logits: metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean()  # noqa: E731
    sweeps = {
        "heads (attn.hook_z, all positions)": (
            [Site(layer, "z", head=h) for layer in layers for h in range(model.cfg.n_heads)], lambda: patch_heads(task, layers=layers), lambda: attribute_heads(task, layers=layers),
            tl_patching.layer_head_vector_patch_setter, "z", pd.DataFrame([(layer, h) for layer in layers for h in range(model.cfg.n_heads)], columns=["layer", "head"]),
        ),
        f"neurons (mlp.hook_post, first {neurons} per layer)": (
            [Site(layer, "mlp_post", neuron=n) for layer in layers for n in range(neurons)], lambda: patch_neurons(task, layers=layers, neurons=range(neurons)),
            lambda: attribute_neurons(task, layers=layers, neurons=range(neurons)),
            neuron_patch_setter, "mlp_post",
            pd.DataFrame([(layer, n) for layer in layers for n in range(neurons)], columns=["layer", "neuron"]),
        ),
    }  # fmt: skip
    rows = []
    for name, (sites, exact_fn, atp_fn, setter, activation, index_df) in sweeps.items():
        from_speed = next(
            (r for r in speed_rows if r["sweep"] == name and r["threads"] == torch.get_num_threads()), None
        )
        ours_s, ours = time_call(exact_fn)
        if from_speed is None:
            with torch.no_grad():
                _, clean_cache = model.run_with_cache(task.clean_tokens)
                tl_s, tl_values = time_call(
                    lambda: tl_patching.generic_activation_patch(
                        model, task.corrupted_tokens, clean_cache, tl_metric, setter, activation, index_df=index_df
                    )
                )
            tl_diff = float(abs(ours.metric.to_numpy() - tl_values.numpy()).max())
        else:  # the speed section timed TransformerLens on these layers and prompts already
            tl_s, tl_diff = from_speed["transformer_lens_median_s"], from_speed["max_abs_diff"]
        atp_s, atp = time_call(atp_fn)
        nn_s, nn_values = time_call(lambda: nnsight_sweep(nn_model, task, sites))
        floor_s = min(floor_seconds(task, sites) for _ in range(3))
        flop = flop_floor(model, task, [normalised_site(model, s, task.seq_len) for s in sites], matmul_rate())
        row = dict(
            sweep=name, variants=len(sites), ours_s=ours_s, transformer_lens_s=tl_s, nnsight_s=nn_s, atp_s=atp_s, floor_s=floor_s,
            ours_vs_transformer_lens=tl_s / ours_s, ours_vs_nnsight=nn_s / ours_s, ours_over_floor=ours_s / floor_s, atp_vs_transformer_lens=tl_s / atp_s,
            atp_vs_transformer_lens_full_model=tl_s * model.cfg.n_layers / len(layers) / atp_s,
            max_abs_diff_transformer_lens=tl_diff, max_abs_diff_nnsight=float(abs(ours.metric.to_numpy() - nn_values).max()),
            max_abs_restoration_diff_atp=float((ours.restoration - atp.restoration).abs().max()),
            **flop, ours_over_flop_floor=ours_s / flop["flop_floor_s"], tl_over_flop_floor=tl_s / flop["flop_floor_s"],
        )  # fmt: skip
        print(
            f"  {name}: ours {ours_s:.1f}s, TL {tl_s:.1f}s ({row['ours_vs_transformer_lens']:.2f}x), nnsight {nn_s:.1f}s ({row['ours_vs_nnsight']:.2f}x), "
            f"floor {floor_s:.1f}s (ours {row['ours_over_floor']:.2f}x floor), AtP {atp_s:.2f}s ({row['atp_vs_transformer_lens']:.0f}x TL; "
            f"{row['atp_vs_transformer_lens_full_model']:.0f}x a full-model TL sweep); max diff TL {tl_diff:.1e}, nnsight {row['max_abs_diff_nnsight']:.1e}",
            flush=True,
        )
        rows.append(row)
    return rows


def neuron_memory_probe(layer: int, budget_mb: int) -> dict:
    """Runs in its own process: an exact sweep of every neuron of `layer` under a memory budget."""
    from scipy.stats import spearmanr

    from interp.attribution import attribute_neurons
    from interp.models import load_model
    from interp.patching import patch_neurons

    model = load_model()
    task = capital_task(model)
    patch_neurons(task, layers=[layer], neurons=range(4))  # warm-up
    Path("/proc/self/clear_refs").write_text("5")
    base = peak_rss_kib()
    seconds, exact = time_call(lambda: patch_neurons(task, layers=[layer], memory_budget=budget_mb << 20))
    peak_mb = (peak_rss_kib() - base) / 1024
    atp = attribute_neurons(task, layers=[layer])
    top = [set(f.restoration.abs().nlargest(20).index) for f in (exact, atp)]
    return dict(
        layer=layer, neurons=len(exact), budget_mb=budget_mb, seconds=seconds, peak_above_start_mb=peak_mb,
        atp_spearman=float(spearmanr(exact.restoration, atp.restoration).statistic), atp_recall_at_20=len(top[0] & top[1]) / 20,
    )  # fmt: skip


def neuron_memory(threads: int, layer: int, budget_mb: int) -> dict:
    cmd = [sys.executable, __file__, "--neuron-memory-probe", str(layer), str(budget_mb), "--threads", str(threads)]
    row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    print(
        f"  all {row['neurons']} neurons of layer {layer}, budget {budget_mb} MB: {row['seconds']:.1f}s, peak RSS above start {row['peak_above_start_mb']:.0f} MB; AtP Spearman {row['atp_spearman']:.3f}, recall@20 {row['atp_recall_at_20']:.2f}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/patching.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", default="4,11,18,25", help="comma-separated layers, or 'all'")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: timings on a shared machine stay stable)"
    )
    parser.add_argument(
        "--speed-threads",
        default=None,
        help="comma-separated thread counts the speed section runs at, each against the FLOP floor at that count (default: --threads)",
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--skip-race", action="store_true")
    parser.add_argument("--skip-neuron-memory", action="store_true")
    parser.add_argument(
        "--race-neurons",
        type=int,
        default=8,
        help="neurons per layer in the race's neuron sweep (TransformerLens runs one forward each)",
    )
    parser.add_argument(
        "--neuron-layer", type=int, default=29, help="layer of the bounded-memory sweep over all its neurons"
    )
    parser.add_argument("--neuron-budget-mb", type=int, default=256)
    parser.add_argument("--memory-probe", nargs=2, metavar=("HOOK", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--neuron-memory-probe", nargs=2, type=int, metavar=("LAYER", "BUDGET_MB"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    if args.neuron_memory_probe:
        print(json.dumps(neuron_memory_probe(*args.neuron_memory_probe)))
        return
    from interp.models import load_model

    model = load_model()
    layers = list(range(model.cfg.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    report = dict(
        command=" ".join([Path(sys.executable).name, *sys.argv]), machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        torch=torch.__version__, threads=args.threads, load_average=os.getloadavg(), layers=layers, repeats=args.repeats,
    )  # fmt: skip
    print(
        f"{model.cfg.model_name}: layers {layers}, {args.repeats} repeats, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    if not args.skip_speed:
        report["speed"] = []
        for threads in [int(t) for t in (args.speed_threads or str(args.threads)).split(",")]:
            torch.set_num_threads(threads)
            report["speed"] += speed(model, layers, args.repeats)
        torch.set_num_threads(args.threads)
    if not args.skip_memory:
        print("peak memory, caching one site over 64 x 128 tokens:")
        report["memory"] = memory(args.threads)
    if not args.skip_agreement:
        print("AtP vs exact patching, built-in capital pairs:")
        report["agreement"] = agreement(model)
    if not args.skip_race:
        print(f"the race on layers {layers}:")
        report["race"] = race(model, layers, args.race_neurons, report.get("speed", []))
    if not args.skip_neuron_memory:
        print("bounded-memory neuron sweep:")
        report["neuron_memory"] = neuron_memory(args.threads, args.neuron_layer, args.neuron_budget_mb)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
