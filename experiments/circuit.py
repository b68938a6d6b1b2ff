"""Circuit discovery: edge scores on prompt pairs (EAP, EAP-IG), each verified by exact edge patching on
its top edges, plus the planted-circuit ground truth (ROC AUC per method): config in, results dir out.

    python -m experiments.circuit --out results/circuit [--quick] [--pairs pairs.jsonl]

Results: edges.parquet (one row per edge and method, `exact_effect` where verified), faithfulness.parquet (metric
recovered by each method's top-n edges, every other edge patched to corrupted), planted_edges.parquet and
planted_faithfulness.parquet (the planted model, every method), metrics.json with `agreement` per approximate method
(`spearman`, `recall_at_20` against exact on the top `verify_top` edges it names), `planted_auc` per method
(leak 0: the structural ground truth), `planted` per leak (with the shuffled-label control), and timings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from interp.errors import InterpError, did_you_mean
from interp.patching.pairs import builtin_pairs, check_pair

APPROXIMATE = ("eap", "eap-ig")
METRICS = ("logit_diff", "answer_prob")


@dataclass(frozen=True)
class CircuitConfig:
    pairs: tuple[dict, ...] = field(default_factory=builtin_pairs)
    metric: str = "logit_diff"  # a differentiable metric (EAP takes its gradient at the clean run)
    align: bool = False
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    methods: tuple[str, ...] = APPROXIMATE  # approximate methods; each one's top edges are patched exactly
    steps: int = 5  # EAP-IG gradient points
    verify_top: int = 200  # how many of each method's top edges are patched exactly
    k: int = 20  # recall@k
    planted: bool = True  # also score the planted-circuit model (ground truth)
    planted_leaks: tuple[float, ...] = (0.0, 0.1)  # strength of the unplanted nodes (0: they carry nothing)
    shuffles: int = 200  # label permutations for the planted negative control
    curve_sizes: tuple[int, ...] = (
        0,
        10,
        20,
        50,
        100,
        200,
        500,
        1000,
        2000,
        5000,
    )  # circuit sizes (top-n edges) on the faithfulness curves
    planted_curve_sizes: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 20, 50, 190)
    loop_edges: int = (
        20  # edges timed through a plain per-edge loop of hooks (the speed baseline), among the verified ones
    )
    seed: int = 0
    analysis: str = "circuit"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise InterpError(
                f"metric: {self.metric!r} cannot be attributed by gradients.{did_you_mean(str(self.metric), METRICS)} Known: {', '.join(METRICS)}."
            )
        if not self.methods:
            raise InterpError("methods is empty: name at least one of 'eap', 'eap-ig'.")
        for method in self.methods:
            if method not in APPROXIMATE:
                raise InterpError(
                    f"methods: {method!r} is not an edge attribution method.{did_you_mean(str(method), APPROXIMATE)} Known: {', '.join(APPROXIMATE)} (exact patching verifies each)."
                )
        if self.steps < 1:
            raise InterpError(f"steps={self.steps}: EAP-IG needs at least 1 gradient point.")
        if (
            not self.curve_sizes
            or min(self.curve_sizes) < 0
            or not self.planted_curve_sizes
            or min(self.planted_curve_sizes) < 0
        ):
            raise InterpError(
                f"curve_sizes={self.curve_sizes}, planted_curve_sizes={self.planted_curve_sizes}: circuit sizes are numbers of edges >= 0."
            )
        if self.verify_top < 2 or self.k < 1:
            raise InterpError(f"verify_top={self.verify_top}, k={self.k}: need verify_top >= 2 and k >= 1.")
        if not self.pairs:
            raise InterpError("pairs is empty: give at least one clean/corrupted prompt pair.")
        for i, row in enumerate(self.pairs):
            check_pair(row, f"pairs[{i}]")
        for leak in self.planted_leaks:
            if not 0.0 <= leak < 1.0:
                raise InterpError(f"planted_leaks: {leak} must lie in [0, 1).")

    @classmethod
    def quick(cls) -> CircuitConfig:
        """About a minute at 1 thread: 4 capital pairs, EAP-IG with 3 steps, the top 60 edges verified."""
        return cls(pairs=builtin_pairs(4), steps=3, verify_top=60, shuffles=100, curve_sizes=(0, 20, 100, 500, 2000))


def _reference_seconds(task) -> float:
    """One clean forward, one corrupted forward and one backward of the plain model (the EAP budget's unit)."""
    import torch

    from interp.patching.task import last_position_logits

    start = time.perf_counter()
    with torch.no_grad():
        task.model(task.clean_tokens, attention_mask=task.clean_mask)
    with torch.enable_grad():
        resid = task.model(
            task.corrupted_tokens, attention_mask=task.corrupted_mask, stop_at_layer=task.model.cfg.n_layers
        )
        embed = [p for p in task.model.parameters() if p.requires_grad]
        score = task.score(last_position_logits(task.model, resid))[0]
        if score.requires_grad:
            torch.autograd.grad(score, embed[:1], allow_unused=True)
    return time.perf_counter() - start


def _top(frame: pd.DataFrame, n: int = 10) -> list[dict]:
    rows = frame.loc[frame["effect"].abs().sort_values(ascending=False).index[:n]]
    return [
        {"upstream": u, "downstream": v, "effect": float(e), **({"exact_effect": float(x)} if pd.notna(x) else {})}
        for u, v, e, x in zip(
            rows["upstream"],
            rows["downstream"],
            rows["effect"],
            rows.get("exact_effect", pd.Series(np.nan, index=rows.index)),
        )
    ]


def planted_results(config: CircuitConfig) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    from interp.graph import ComputationGraph, agreement, attribute_edges, faithfulness_curve, patch_edges
    from interp.graph.planted import planted_labels, planted_model, planted_task, roc_auc

    results, tables, curves = {}, [], []
    rng = np.random.default_rng(config.seed)
    for leak in config.planted_leaks:
        task = planted_task(planted_model(leak, seed=config.seed), seed=config.seed)
        graph = ComputationGraph(task.model)
        exact = patch_edges(task, graph)
        labels = planted_labels(exact)
        frames = {
            "exact": exact,
            **{m: attribute_edges(task, graph, method=m, steps=config.steps) for m in config.methods},
        }
        shuffled = [roc_auc(exact["effect"].abs(), rng.permutation(labels)) for _ in range(config.shuffles)]
        results[f"leak={leak:g}"] = {
            "auc": {m: roc_auc(f["effect"].abs(), labels) for m, f in frames.items()},
            "agreement": {m: agreement(f, exact, config.k) for m, f in frames.items() if m != "exact"},
            "shuffled_auc_mean": float(np.mean(shuffled)),
            "shuffled_auc_95": [float(np.quantile(shuffled, 0.025)), float(np.quantile(shuffled, 0.975))],
            "n_planted": int(labels.sum()),
            "n_edges": len(exact),
            "clean_metric": task.clean_metric,
            "corrupted_metric": task.corrupted_metric,
        }
        sizes = [n for n in config.planted_curve_sizes if n <= len(graph)]
        leak_curves = pd.concat(
            [faithfulness_curve(task, f, sizes, graph) for f in frames.values()], ignore_index=True
        ).assign(leak=leak)
        results[f"leak={leak:g}"]["faithfulness"] = {
            m: dict(zip(c["n_edges"].astype(str), c["recovered"].round(4))) for m, c in leak_curves.groupby("method")
        }
        curves.append(leak_curves)
        for f in frames.values():
            tables.append(f.assign(leak=leak, planted=labels))
    return results, pd.concat(tables, ignore_index=True), pd.concat(curves, ignore_index=True)


def run(config: CircuitConfig, out: Path, *, overwrite: bool = False) -> Path:
    """Edge scores of every method on the pairs (verified on their top edges) and the planted ground truth, into `out`."""
    from experiments.patching_sweep import check_task
    from interp.graph import ComputationGraph, score_edges
    from interp.models import load_model, require_hooked
    from interp.patching import PatchingTask
    from interp.results import ResultsDir

    title = "Circuit discovery: edge attribution verified by exact edge patching"
    ResultsDir.check_create(out, config, title=title, exist_ok=True, overwrite=overwrite)
    model = require_hooked(load_model(config.model), "interp circuit")
    task = PatchingTask.from_pairs(model, config.pairs, metric=config.metric, align=config.align)
    check_task(task, config.metric)
    run_dir = ResultsDir.create(out, config, title=title, exist_ok=True, overwrite=overwrite)
    with run_dir.failure_marker():
        graph = ComputationGraph(model)
        reference = min(_reference_seconds(task) for _ in range(2))
        metrics: dict = {
            "n_pairs": len(config.pairs),
            "metric": config.metric,
            "n_edges": len(graph),
            "clean_metric": task.clean_metric,
            "corrupted_metric": task.corrupted_metric,
            "agreement": {},
            "seconds": {"forward_backward_reference": reference},
            "top_edges": {},
        }
        frames = []
        for method in config.methods:
            start = time.perf_counter()
            frame = score_edges(
                task, method, graph, steps=config.steps, verify_top=min(config.verify_top, len(graph)), k=config.k
            )
            metrics["seconds"][method + "+verify"] = time.perf_counter() - start
            metrics["agreement"][method] = frame.attrs["agreement"]
            metrics["top_edges"][method] = _top(frame)
            frames.append(frame)
        for method in config.methods:  # the attribution alone, timed apart from the exact verification
            from interp.graph import attribute_edges

            start = time.perf_counter()
            attribute_edges(task, graph, method=method, steps=config.steps)
            metrics["seconds"][method] = time.perf_counter() - start
            metrics["seconds"][f"{method}_over_reference"] = metrics["seconds"][method] / reference
        run_dir.save_table("edges", pd.concat(frames))
        if config.loop_edges > 0:  # the speed baseline: the same exact numbers through one full forward per edge
            from interp.graph import patch_edges, patch_edges_loop

            verified = frames[0][frames[0]["exact_effect"].notna()]
            some = verified.iloc[: config.loop_edges]
            start = time.perf_counter()
            looped = patch_edges_loop(task, graph, some)
            loop_seconds = time.perf_counter() - start
            start = time.perf_counter()
            batched = patch_edges(task, graph, verified)
            batched_seconds = time.perf_counter() - start
            metrics["seconds"]["exact_loop_per_edge"] = loop_seconds / len(some)
            metrics["seconds"]["exact_batched_per_edge"] = batched_seconds / len(verified)
            metrics["exact_loop_max_abs_difference"] = float(
                (looped["effect"] - batched.loc[some.index, "effect"]).abs().max()
            )
        from interp.graph import faithfulness_curve

        start = time.perf_counter()
        sizes = [n for n in config.curve_sizes if n <= len(graph)]
        curves = pd.concat([faithfulness_curve(task, f, sizes, graph) for f in frames], ignore_index=True)
        metrics["seconds"]["faithfulness"] = time.perf_counter() - start
        metrics["faithfulness"] = {
            m: dict(zip(c["n_edges"].astype(str), c["recovered"].round(4))) for m, c in curves.groupby("method")
        }
        run_dir.save_table("faithfulness", curves)
        if config.planted:
            metrics["planted"], planted_table, planted_curves = planted_results(config)
            metrics["planted_auc"] = metrics["planted"][f"leak={config.planted_leaks[0]:g}"]["auc"]
            run_dir.save_table("planted_edges", planted_table)
            run_dir.save_table("planted_faithfulness", planted_curves)
        run_dir.write_metrics(metrics, merge=False)
    return run_dir.path


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run circuit`)
    from experiments.cli import script_main

    script_main("circuit")
