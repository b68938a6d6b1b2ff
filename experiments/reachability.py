"""Continuous chain of thought on graph reachability (Zhu et al. 2025; Coconut): config in, results dir out.

    from experiments.reachability import ReachabilityConfig, run
    run(ReachabilityConfig.quick(), Path("results/reachability-quick"))
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from circuits.reachability.analysis import answer_accuracy, example_frame, probe_tables, run_thoughts
from circuits.reachability.construction import ConstructionConfig, construction_model, reachable_set_vectors
from circuits.reachability.figures import accuracy_figure, example_graph_figure, grouped_by_step, loss_figure, probe_auc_figure
from circuits.reachability.graphs import GraphConfig, make_problems, split_by_graph
from circuits.reachability.model import ModelConfig
from circuits.reachability.tokens import SequenceLayout
from circuits.reachability.train import MODES, TrainConfig, accuracy, train
from dashboards import build_dashboard
from interp.errors import InterpError
from interp.results import ResultsDir
from interp.threads import torch_threads


@dataclass(frozen=True)
class ReachabilityConfig:
    analysis: str = "reachability"
    # one node per level per component and 2 extra edges: wider graphs (12+ edges) stayed at chance for 4,000 steps on one thread
    graph: GraphConfig = field(default_factory=lambda: GraphConfig(n_node_ids=12, n_levels=3, max_width=1, n_edges=8))
    model: ModelConfig = field(default_factory=lambda: ModelConfig(d_model=64, n_heads=4, d_mlp=256))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=8000, batch_size=64, lr=3e-3, warmup_steps=200))  # ~0.09 s/step on one thread: ~12 min per model
    construction: ConstructionConfig = field(default_factory=ConstructionConfig)
    n_problems: int = 100000  # before the split by graph; a large pool keeps the models from memorising graphs
    test_fraction: float = 0.1
    n_eval: int = 1000  # held-out problems for the accuracies
    n_construction: int = 10000
    n_probe: int = 1000  # probe problems: this many from train (fit) and from test (score)
    seed: int = 0
    threads: int = 1  # torch threads; 1 is fastest on a shared 2-core machine

    @classmethod
    def quick(cls) -> ReachabilityConfig:
        return cls(train=TrainConfig(steps=1200, batch_size=64, lr=3e-3, warmup_steps=50), n_problems=10000, n_eval=500, n_construction=2000, n_probe=300)


def _accuracy_row(method: str, acc: float, n: int) -> tuple:
    return method, acc, math.sqrt(max(acc * (1 - acc), 1e-12) / n), n


def run(config: ReachabilityConfig, out: Path) -> Path:
    """Train the three formats, check the construction, probe both; write the results dir and its dashboard."""
    if config.n_eval < 1 or config.n_probe < 2 or config.n_construction < 1:
        raise InterpError(f"n_eval={config.n_eval}, n_probe={config.n_probe}, n_construction={config.n_construction}: need n_eval >= 1, n_probe >= 2, n_construction >= 1.")
    with torch_threads(config.threads):
        return _run(config, Path(out))


def _run(config: ReachabilityConfig, out: Path) -> Path:
    started = time.perf_counter()
    results = ResultsDir.create(out, config, title="Continuous chain of thought on graph reachability", exist_ok=True)
    layout = SequenceLayout(config.graph, config.graph.n_levels)
    train_problems, test_problems = split_by_graph(make_problems(config.graph, config.n_problems, config.seed), config.test_fraction, config.seed)
    if len(test_problems) < config.n_eval or len(train_problems) < config.n_probe:
        raise InterpError(f"n_problems={config.n_problems} with test_fraction={config.test_fraction} gives {len(test_problems)} test problems; raise n_problems to cover n_eval={config.n_eval}.")
    eval_problems = test_problems[: config.n_eval]
    metrics: dict[str, float] = {}

    accuracies, curves, models = [], [], {}
    for mode in MODES:
        begin = time.perf_counter()
        models[mode], curve = train(mode, train_problems, layout, config.model, config.train)
        metrics[f"train_seconds_{mode}"] = time.perf_counter() - begin
        metrics[f"acc_{mode}"] = accuracy(models[mode], mode, eval_problems, layout)
        accuracies.append(_accuracy_row(mode, metrics[f"acc_{mode}"], len(eval_problems)))
        curves.append(curve.assign(method=mode))

    constructed = construction_model(layout, config.construction)
    construction_problems = make_problems(config.graph, config.n_construction, config.seed + 1)
    begin = time.perf_counter()
    thought_run = run_thoughts(constructed, construction_problems, layout)
    errors = (thought_run.thoughts - reachable_set_vectors(constructed, construction_problems, layout.n_chain)).norm(dim=-1)  # [n, step]
    metrics["construction_seconds"] = time.perf_counter() - begin
    metrics["construction_acc"] = answer_accuracy(thought_run, construction_problems, layout)
    metrics["construction_max_error"] = errors.max().item()
    metrics["construction_tolerance"] = 1e-3  # |thought - |V_c|^(-1/2) sum u_v|, the bound the tests assert
    metrics["construction_within_tolerance"] = (errors <= 1e-3).float().mean().item()
    metrics["n_construction_problems"] = config.n_construction
    accuracies.append(_accuracy_row("construction", metrics["construction_acc"], config.n_construction))
    construction_errors = pd.DataFrame({"step": torch.arange(1, layout.n_chain + 1).repeat(len(errors)).numpy(), "error": errors.flatten().numpy()})

    probe_rng = random.Random(config.seed)
    probe_fit, probe_score = probe_rng.sample(train_problems, config.n_probe), test_problems[: config.n_probe]
    tables = [probe_tables(m, probe_fit, probe_score, layout, label) for label, m in (("continuous", models["continuous"]), ("construction", constructed))]
    tables = {name: pd.concat([t[name] for t in tables], ignore_index=True) for name in tables[0]}
    for prefix, label in (("", "continuous"), ("construction_", "construction")):
        for measure, table in (("inner", tables["inner_products"]), ("attention", tables["edge_attention"])):
            for row in table[table["model"] == label].itertuples():
                metrics[f"{prefix}{measure}_{row.group}_step{row.step}"] = row.mean
        for step, auc in tables["probe_auc"][tables["probe_auc"]["model"] == label].groupby("step")["auc"].mean().items():
            metrics[f"{prefix}probe_auc_step{step}"] = auc

    example = next(p for p in test_problems if len(p.path) == layout.n_chain + 1)
    example_nodes = pd.concat([example_frame(m, example, layout, label) for label, m in (("continuous", models["continuous"]), ("construction", constructed))], ignore_index=True)
    example_edges = pd.DataFrame(example.edges, columns=["source", "target"]).assign(root=example.root, answer=example.answer, decoy=[c for c in example.candidates if c != example.answer][0])

    accuracy_table = pd.DataFrame(accuracies, columns=["method", "accuracy", "sem", "n"])
    curves_table = pd.concat(curves, ignore_index=True)
    for name, table in {"accuracy": accuracy_table, "loss_curves": curves_table, "construction_errors": construction_errors,
                        "example_nodes": example_nodes, "example_edges": example_edges, **tables}.items():
        results.save_table(name, table)
    figures = {"accuracy": accuracy_figure(accuracy_table), "loss": loss_figure(curves_table), "probe_auc": probe_auc_figure(tables["probe_auc"])}
    for label in ("continuous", "construction"):
        figures[f"inner_products_{label}"] = grouped_by_step(tables["inner_products"], label, "<thought, node embedding>")
        figures[f"edge_attention_{label}"] = grouped_by_step(tables["edge_attention"], label, "Layer-2 attention mass per edge")
        figures[f"example_graph_{label}"] = example_graph_figure(example_nodes, example_edges, label)
    metrics["seconds"] = time.perf_counter() - started
    results.write_metrics(metrics)
    results.save_figures(figures, png=True)
    build_dashboard(results)  # the page's sections come from dashboards/reachability.py
    return results.path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(run(ReachabilityConfig.quick() if args.quick else ReachabilityConfig(), args.out))
