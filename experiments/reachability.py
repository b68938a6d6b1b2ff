"""Continuous chain of thought on graph reachability (Zhu et al. 2025; Coconut): config in, results dir out.

    from experiments.reachability import ReachabilityConfig, run
    run(ReachabilityConfig.quick(), Path("results/reachability-quick"))

    python -m experiments.reachability --out results/reachability          # full run: 3 processes, resumes
    python -m experiments.reachability --quick --out results/reachability-quick

The three formats train in parallel processes (`workers`), one torch thread each, with checkpoints under
out/checkpoints; a rerun with the same out dir resumes from them (a finished format is not retrained).
"""

from __future__ import annotations

import math
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from circuits.reachability.analysis import (
    acceptance_inner,
    answer_accuracy,
    chain_validity,
    example_frame,
    label_order_baseline,
    probe_tables,
    run_thoughts,
    thought_top_nodes,
)
from circuits.reachability.construction import ConstructionConfig, construction_model, reachable_set_vectors
from circuits.reachability.figures import (
    accuracy_curve_figure,
    accuracy_figure,
    example_graph_figure,
    grouped_by_step,
    loss_figure,
    probe_auc_figure,
)
from circuits.reachability.diagnostics import lookup_accuracy, teacher_forced_hops
from circuits.reachability.graphs import GraphConfig, Problem, make_problems, split_by_graph
from circuits.reachability.model import ModelConfig
from circuits.reachability.tokens import SequenceLayout
from circuits.reachability.train import MODES, TrainConfig, accuracy, layout_for, predict_answers, train
from dashboards import build_dashboard
from interp.errors import InterpError
from interp.results import ResultsDir
from interp.threads import torch_threads


@dataclass(frozen=True)
class ReachabilityConfig:
    analysis: str = "reachability"
    # branching graphs (issue 14): 2 nodes per level per component, 16 edges, node ids shuffled per graph
    graph: GraphConfig = field(
        default_factory=lambda: GraphConfig(n_node_ids=24, n_levels=3, min_width=2, max_width=2, n_edges=16)
    )
    # d_model 128 (the floor), d_mlp 512: measured in session 5 against d_model 64 at the same recipe and
    # 7,200 steps, 128 learns faster and ends higher (2,000 held-out graphs: continuous 0.9525 vs 0.9495, discrete CoT
    # 0.90 vs 0.855; FINDINGS.md); ~0.45 s a step per process on an idle core: the full run takes ~75 min of the 2-hour box
    model: ModelConfig = field(default_factory=lambda: ModelConfig(d_model=128, n_heads=4, d_mlp=512))
    # Deviation from the authors (issue 14, FINDINGS.md): the auxiliary dense lookup objective with attention
    # supervision (lookup_aux_queries=8, source labels, layer-2 head 0 onto the queried node's edge targets), alone for
    # the first 200 steps, then added to every step. Without it the one-hop lookup every format needs stays at ~0.30
    # (chance 0.13) for 6,000+ steps and all formats sit at chance; with it the lookup is at 0.88-0.96 by step 200.
    # Then 130 steps per pre-final stage and the final stage from step 590 (>= half the steps); constant lr (as the
    # authors), so `steps` can be cut or extended on resume. 7,200 steps (session 5): at 4,800 both curves were still
    # rising; by 7,200 the d_model-64 curves were flat over their last 20% (FINDINGS.md). The two long formats train in
    # parallel, no CoT after them (`no_cot_steps`), then the analysis.
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=7200,
            batch_size=64,
            lr=2e-3,
            warmup_steps=100,
            stage_steps=130,
            eval_every=200,
            checkpoint_every=100,
            lookup_aux_queries=8,
            lookup_aux_batch=64,
            lookup_pretrain_steps=200,
        )
    )
    construction: ConstructionConfig = field(default_factory=ConstructionConfig)
    # steps for no CoT (0: train.steps). no CoT cannot do a multi-hop search in 2 layers and sat at chance (0.50-0.52)
    # from step 400 to 1,200 in session 3; it trains after the two others (2 processes), so 1,000 steps keep the
    # long continuous / discrete CoT run inside the 2-hour box (FINDINGS.md)
    no_cot_steps: int = 1000
    n_problems: int = 100000  # before the split by graph; a large pool keeps the models from memorising graphs
    test_fraction: float = 0.1
    n_eval: int = 2000  # held-out problems for the acceptance numbers (accuracies, inner products, attention)
    n_curve: int = 500  # other held-out problems for the accuracy-vs-steps curves (the budget is chosen on these)
    n_construction: int = 10000
    n_probe: int = 1000  # training problems the linear probes are fitted on (scored on the n_eval set)
    seed: int = 0
    threads: int = 1  # torch threads per process; 1 is fastest on a shared 2-core machine
    workers: int = 2  # training processes (formats in parallel, at most 3); 1 trains in this process
    png: bool = True  # also PNG copies of the figures (needs Chromium; without it the run keeps the HTML/JSON figures and says so)
    under_trained: bool = False  # True for quick: written into metrics so nobody reads its numbers as results

    @classmethod
    def quick(cls) -> ReachabilityConfig:
        return cls(
            train=TrainConfig(
                steps=120,
                batch_size=32,
                lr=2e-3,
                warmup_steps=20,
                eval_every=40,
                lookup_aux_queries=8,
                lookup_aux_batch=32,
                lookup_pretrain_steps=40,
            ),
            model=ModelConfig(d_model=64, n_heads=4, d_mlp=256),
            no_cot_steps=0,
            n_problems=4000,
            n_eval=300,
            n_curve=100,
            n_construction=500,
            n_probe=150,
            workers=1,
            under_trained=True,
        )


def _accuracy_row(method: str, acc: float, n: int) -> tuple:
    return method, acc, math.sqrt(max(acc * (1 - acc), 1e-12) / n), n


def two_proportion_z(p1: float, n1: int, p2: float, n2: int) -> float:
    """Pooled two-proportion z statistic of p1 - p2."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    return (p1 - p2) / se


def _data(config: ReachabilityConfig) -> tuple[list[Problem], list[Problem], list[Problem]]:
    """(train, eval, curve) problems; eval and curve are disjoint held-out graphs."""
    train_problems, test_problems = split_by_graph(
        make_problems(config.graph, config.n_problems, config.seed), config.test_fraction, config.seed
    )
    if len(test_problems) < config.n_eval + config.n_curve or len(train_problems) < config.n_probe:
        raise InterpError(
            f"n_problems={config.n_problems} with test_fraction={config.test_fraction} gives {len(test_problems)} test problems; raise n_problems to cover n_eval + n_curve = {config.n_eval + config.n_curve}."
        )
    return train_problems, test_problems[: config.n_eval], test_problems[config.n_eval : config.n_eval + config.n_curve]


def mode_train_config(config: ReachabilityConfig, mode: str) -> TrainConfig:
    """The training config of one format: `no_cot_steps` (when set) replaces the steps of no CoT."""
    if mode == "no_cot" and config.no_cot_steps:
        return replace(config.train, steps=config.no_cot_steps)
    return config.train


def _train_mode(config: ReachabilityConfig, mode: str, checkpoints: Path, progress: bool):
    with torch_threads(config.threads):
        train_problems, _, curve_problems = _data(config)
        layout = SequenceLayout(config.graph, config.graph.n_levels)
        return train(
            mode,
            train_problems,
            layout,
            config.model,
            mode_train_config(config, mode),
            progress=progress,
            eval_problems=curve_problems,
            checkpoint=checkpoints / f"{mode}.pt",
        )


def _train_worker(config: ReachabilityConfig, mode: str, checkpoints: Path) -> None:
    _train_mode(config, mode, checkpoints, progress=False)


def run(config: ReachabilityConfig, out: Path) -> Path:
    """Train the three formats, check the construction, probe both; write the results dir and its dashboard."""
    if config.n_eval < 1 or config.n_probe < 2 or config.n_construction < 1 or config.n_curve < 1:
        raise InterpError(
            f"n_eval={config.n_eval}, n_curve={config.n_curve}, n_probe={config.n_probe}, n_construction={config.n_construction}: need n_eval, n_curve, n_construction >= 1 and n_probe >= 2."
        )
    if config.workers < 1:
        raise InterpError(f"workers={config.workers} must be >= 1.")
    if config.no_cot_steps < 0:
        raise InterpError(f"no_cot_steps={config.no_cot_steps} must be >= 0 (0: train.steps).")
    with torch_threads(config.threads):
        return _run(config, Path(out))


def _run(config: ReachabilityConfig, out: Path) -> Path:
    started = time.perf_counter()
    results = ResultsDir.create(out, config, title="Continuous chain of thought on graph reachability", exist_ok=True)
    layout = SequenceLayout(config.graph, config.graph.n_levels)
    checkpoints = results.path / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    if (
        config.workers > 1
    ):  # one process per format; each resumes from its checkpoint (this process holds no data meanwhile)
        with ProcessPoolExecutor(
            max_workers=min(config.workers, len(MODES)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            for future in [pool.submit(_train_worker, config, mode, checkpoints) for mode in MODES]:
                future.result()
    train_problems, eval_problems, curve_problems = _data(config)
    metrics: dict[str, float] = {
        "under_trained": config.under_trained,
        "n_eval": len(eval_problems),
        "n_curve": len(curve_problems),
    }
    accuracies, curves, acc_curves, models = [], [], [], {}
    for mode in MODES:  # loads a finished checkpoint, or trains here (workers == 1)
        models[mode], curve, acc_curve = _train_mode(config, mode, checkpoints, progress=config.workers == 1)
        metrics[f"train_seconds_{mode}"] = curve.attrs.get("train_seconds", float("nan"))
        metrics[f"steps_trained_{mode}"] = curve.attrs.get("steps_trained", mode_train_config(config, mode).steps)
        metrics[f"acc_{mode}"] = accuracy(models[mode], mode, eval_problems, layout)
        # by the answer's distance (where continuous and discrete CoT differ), and on training graphs (under-fitting
        # vs over-fitting: a held-out shortfall that training problems share is not memorisation)
        correct = predict_answers(models[mode], mode, eval_problems, layout) == torch.tensor(
            [p.answer for p in eval_problems]
        )
        hops = torch.tensor([p.n_hops for p in eval_problems])
        for h in sorted(set(hops.tolist())):
            metrics[f"acc_{mode}_hops{h}"] = correct[hops == h].float().mean().item()
            metrics[f"n_eval_hops{h}"] = int((hops == h).sum())
        seen = random.Random(config.seed + 3).sample(train_problems, min(len(train_problems), config.n_eval))
        metrics[f"train_acc_{mode}"] = accuracy(models[mode], mode, seen, layout)
        # the one-hop lookup every format needs (a child of the node in the root slot), held out
        lookup = lookup_accuracy(models[mode], eval_problems, layout_for(mode, layout))
        metrics[f"lookup_acc_{mode}"], metrics["lookup_acc_chance"] = lookup
        accuracies.append(_accuracy_row(mode, metrics[f"acc_{mode}"], len(eval_problems)))
        curves.append(curve.assign(method=mode))
        acc_curves.append(acc_curve.assign(method=mode))
        metrics |= _flatness(acc_curve, mode)
    n = len(eval_problems)
    metrics["continuous_minus_discrete"] = metrics["acc_continuous"] - metrics["acc_discrete_cot"]
    metrics["continuous_minus_discrete_z"] = two_proportion_z(
        metrics["acc_continuous"], n, metrics["acc_discrete_cot"], n
    )
    metrics["z"] = metrics["continuous_minus_discrete_z"]  # the name for it

    # the graphs: how often the frontier branches, and the label-order shortcut as a baseline
    for c in range(1, layout.n_chain + 1):
        metrics[f"frontier_gt1_fraction_step{c}"] = sum(len(p.frontier(c)) > 1 for p in eval_problems) / n
    metrics["frontier_gt1_fraction"] = min(
        metrics["frontier_gt1_fraction_step1"], metrics["frontier_gt1_fraction_step2"] if layout.n_chain > 1 else 1.0
    )
    baseline = label_order_baseline(train_problems, eval_problems)
    metrics["label_order_shortcut_acc"], metrics["label_order_shortcut_rule"] = baseline
    ordered = make_problems(replace(config.graph, shuffle_ids=False), len(train_problems[: 4 * n]) + n, config.seed + 2)
    metrics["label_order_shortcut_acc_unshuffled_ids"] = label_order_baseline(ordered[n:], ordered[:n])[0]
    accuracies.append(_accuracy_row("label-order shortcut", metrics["label_order_shortcut_acc"], n))

    constructed = construction_model(layout, config.construction)
    construction_problems = make_problems(config.graph, config.n_construction, config.seed + 1)
    begin = time.perf_counter()
    thought_run = run_thoughts(constructed, construction_problems, layout, fixed=True)
    errors = (thought_run.thoughts - reachable_set_vectors(constructed, construction_problems, layout.n_chain)).norm(
        dim=-1
    )  # [n, step]
    metrics["construction_seconds"] = time.perf_counter() - begin
    metrics["construction_acc"] = answer_accuracy(thought_run, construction_problems, layout)
    metrics["construction_max_error"] = errors.max().item()
    metrics["construction_tolerance"] = 1e-3  # |thought - |V_c|^(-1/2) sum u_v|, the bound the tests assert
    metrics["construction_within_tolerance"] = (errors <= 1e-3).float().mean().item()
    metrics["n_construction_problems"] = config.n_construction
    accuracies.append(_accuracy_row("construction", metrics["construction_acc"], config.n_construction))
    construction_errors = pd.DataFrame(
        {"step": torch.arange(1, layout.n_chain + 1).repeat(len(errors)).numpy(), "error": errors.flatten().numpy()}
    )

    probe_fit = random.Random(config.seed).sample(train_problems, config.n_probe)
    tables = [
        probe_tables(m, probe_fit, eval_problems, layout, label, fixed=label == "construction")
        for label, m in (("continuous", models["continuous"]), ("construction", constructed))
    ]
    tables = {name: pd.concat([t[name] for t in tables], ignore_index=True) for name in tables[0]}
    for prefix, label in (("", "continuous"), ("construction_", "construction")):
        for measure, table in (
            ("inner", tables["inner_products"]),
            ("attention", tables["edge_attention"]),
            ("inner", tables["inner_products_separate"]),
            ("attention", tables["edge_attention_separate"]),
        ):
            for row in table[table["model"] == label].itertuples():
                metrics[f"{prefix}{measure}_{row.group}_step{row.step}"] = row.mean
        for step, auc in (
            tables["probe_auc"][tables["probe_auc"]["model"] == label].groupby("step")["auc"].mean().items()
        ):
            metrics[f"{prefix}probe_auc_step{step}"] = auc
        for row in tables["probe_group_auc"][tables["probe_group_auc"]["model"] == label].itertuples():
            metrics[f"{prefix}probe_auc_{row.group}_step{row.step}"] = row.auc
    acceptance = acceptance_inner(models["continuous"], eval_problems, layout, steps=(1, 2))
    for c, (share, z, n_graphs) in acceptance.items():
        metrics[f"frontier_minus_optimal_gap_share_step{c}"] = share
        metrics[f"frontier_minus_optimal_z_step{c}"] = z
        metrics[f"frontier_minus_optimal_n_graphs_step{c}"] = n_graphs

    # edge following, chance-matched: does thought c's top node lie in the frontier; is the discrete chain a path
    for c, (share, chance, n_c) in thought_top_nodes(models["continuous"], eval_problems, layout).items():
        metrics[f"thought_top_in_frontier_step{c}"], metrics[f"thought_top_in_frontier_chance_step{c}"] = share, chance
    metrics["discrete_first_hop_valid"], metrics["discrete_chain_valid_to_answer"] = chain_validity(
        models["discrete_cot"], eval_problems, layout
    )
    metrics["discrete_first_hop_valid_chance"] = (
        sum(sum(a == p.root for a, _ in p.edges) / (len(p.nodes) - 1) for p in eval_problems) / n
    )
    # the skill every format needs first (the single-step edge lookup), teacher-forced on a gold shortest path
    for c, row in teacher_forced_hops(models["discrete_cot"], eval_problems, layout).items():
        for key in ("child", "child_chance", "on_shortest_path", "on_shortest_path_chance"):
            metrics[f"discrete_teacher_forced_hop{c}_{key}"] = row[key]

    example = _example(eval_problems, layout)
    example_nodes = pd.concat(
        [
            example_frame(m, example, layout, label, fixed=label == "construction")
            for label, m in (("continuous", models["continuous"]), ("construction", constructed))
        ],
        ignore_index=True,
    )
    example_edges = pd.DataFrame(example.edges, columns=["source", "target"]).assign(
        root=example.root, answer=example.answer, decoy=[c for c in example.candidates if c != example.answer][0]
    )

    accuracy_table = pd.DataFrame(accuracies, columns=["method", "accuracy", "sem", "n"])
    curves_table = pd.concat(curves, ignore_index=True)
    acc_curves_table = pd.concat(acc_curves, ignore_index=True)
    for name, table in {
        "accuracy": accuracy_table,
        "loss_curves": curves_table,
        "accuracy_curves": acc_curves_table,
        "construction_errors": construction_errors,
        "example_nodes": example_nodes,
        "example_edges": example_edges,
        **tables,
    }.items():
        results.save_table(name, table)
    figures = {
        "accuracy": accuracy_figure(accuracy_table),
        "accuracy_curves": accuracy_curve_figure(acc_curves_table),
        "loss": loss_figure(curves_table),
        "probe_auc": probe_auc_figure(tables["probe_auc"]),
    }
    for label in ("continuous", "construction"):
        figures[f"inner_products_{label}"] = grouped_by_step(
            tables["inner_products_separate"], label, "<thought, node embedding>"
        )
        figures[f"edge_attention_{label}"] = grouped_by_step(
            tables["edge_attention_separate"], label, "Layer-2 attention mass per edge (sum over heads)"
        )
        figures[f"example_graph_{label}"] = example_graph_figure(example_nodes, example_edges, label)
    metrics["seconds"] = time.perf_counter() - started
    results.save_figures(
        figures, png=config.png
    )  # without a browser: JSON and HTML only, PNGs listed in figures/PNG_SKIPPED.txt
    results.write_metrics(metrics)
    build_dashboard(results)  # the page's sections come from dashboards/reachability.py
    return results.path


def _flatness(curve: pd.DataFrame, mode: str) -> dict[str, float]:
    """Held-out (curve set) accuracy at the end and at the last evaluation at or before steps / 1.2 (the issue's rule:
    flat = under 1 point gained over the last 20% of steps), and, since that rule compares two noisy points, the
    least-squares slope over the last 40% of the steps (accuracy per 1,000 steps: 0.01 is a point) with its binomial
    standard error."""
    if curve.empty:
        return {}
    last = curve.iloc[-1]
    earlier = curve[curve["step"] <= last["step"] / 1.2]
    before = earlier.iloc[-1] if len(earlier) else curve.iloc[0]
    out = {
        f"curve_acc_{mode}": float(last["accuracy"]),
        f"curve_acc_{mode}_at_step_over_1.2": float(before["accuracy"]),
        f"curve_gain_last_20pct_{mode}": float(last["accuracy"] - before["accuracy"]),
        f"curve_flat_{mode}": bool(abs(last["accuracy"] - before["accuracy"]) < 0.01),
    }
    tail = curve[curve["step"] >= 0.6 * last["step"]]
    if len(tail) >= 3:
        slope, se = _slope(tail["step"].to_numpy(float), tail["accuracy"].to_numpy(float), tail["n"].to_numpy(float))
        out |= {f"curve_slope_per_1k_{mode}": 1000 * slope, f"curve_slope_se_per_1k_{mode}": 1000 * se}
    return out


def _slope(steps: np.ndarray, acc: np.ndarray, n: np.ndarray) -> tuple[float, float]:
    """Ordinary least-squares slope of accuracy on steps and its standard error from each point's binomial variance
    p (1 - p) / n (the points are independent evaluations of different checkpoints on the same graphs)."""
    x = steps - steps.mean()
    weights = x / (x @ x)
    variance = acc * (1 - acc) / n
    return float(weights @ acc), float(np.sqrt(weights**2 @ variance))


def _example(problems: list[Problem], layout: SequenceLayout) -> Problem:
    """A held-out graph with the deepest answer whose frontier branches at every step before the answer."""
    for p in problems:
        if p.n_hops == layout.n_chain and all(len(p.frontier(c)) > 1 for c in range(1, p.n_hops)):
            return p
    return max(problems, key=lambda p: p.n_hops)


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run reachability`)
    from experiments.cli import script_main

    script_main("reachability")
