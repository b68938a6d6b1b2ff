"""Circuit discovery: edge scores on prompt pairs (EAP, EAP-IG), each verified by exact edge patching on
its top edges, plus the planted-circuit ground truth (ROC AUC per method): config in, results dir out.

    python -m experiments.circuit --out results/circuit [--quick] [--pairs pairs.jsonl]

Results: edges.parquet (one row per edge and method, `exact_effect` where verified), faithfulness.parquet (metric
recovered by each method's top-n edges, every other edge patched to corrupted; in sample: the same pairs ranked the
edges), heldout_faithfulness.parquet (edges ranked on half the pairs, curves on the other half and, for comparison,
on the ranking half), nodes.parquet (exact node patching, AtP and AtP* GradDrop node scores, the false-negative
bound), the same tables prefixed copy_ for the in-context-copy task, planted_edges.parquet,
planted_faithfulness.parquet and planted_acdc.parquet (the planted model: every method, ACDC's circuit with each
edge's minimality drop), metrics.json with `agreement` per approximate method (`spearman`, `recall_at_20` against
exact on the top `verify_top` edges it names), `planted_auc` per method (leak 0: the structural ground truth),
`planted` per leak (with the shuffled-label control), `acdc` per leak, `heldout_faithfulness`, `nodes`, `copy`
(the copy task's metrics, same keys) and timings.

The ACDC runs live in experiments.circuit_acdc, the SAE-latent nodes in experiments.circuit_sae and the GradDrop node
scores in experiments.circuit_nodes; this module holds the config, the edge scores per task and `run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.circuit_acdc import acdc_model_results, acdc_results
from experiments.circuit_nodes import node_results, wilson  # noqa: F401 (wilson: its old import path)
from experiments.circuit_sae import load_circuit_sae, sae_results
from interp.errors import InterpError, did_you_mean
from interp.patching.pairs import builtin_pairs, check_pair

APPROXIMATE = ("eap", "eap-ig")
EDGE_METHODS = (
    *APPROXIMATE,
    "exact",
)  # exact: every edge patched (one batched group per receiver layer; hours on SmolLM2)
METRICS = ("logit_diff", "answer_prob")


@dataclass(frozen=True)
class CircuitConfig:
    pairs: tuple[dict, ...] = field(default_factory=builtin_pairs)
    metric: str = "logit_diff"  # a differentiable metric (EAP takes its gradient at the clean run)
    align: bool = False
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    methods: tuple[str, ...] = APPROXIMATE  # eap / eap-ig (each one's top edges patched exactly) and exact (every edge)
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
    copy_task: bool = True  # also the in-context-copy task (random words, repeated; the copied word changed)
    copy_pairs: int = 8  # in-context-copy pairs (15 tokens each at copy_length 8)
    copy_length: int = 8  # words in each copied sequence
    heldout: bool = True  # rank edges on half the pairs, draw the faithfulness curves on the other half
    graddrop: bool = True  # AtP / AtP* GradDrop node scores, exact node patching, the false-negative bound
    bound_verify_top: int = 20  # nodes verified exactly before the false-negative bound
    bound_subsets: int = 16  # random subsets per group of unverified nodes for the bound
    acdc_tau: float = 0.01  # ACDC pruning threshold (share of the clean - corrupted gap), planted model and SmolLM2
    # ACDC on the model: candidates = the top-n edges by EAP on the ranking half of the pairs (every other edge
    # ablated), pruned there, judged on the held-out half next to top-n EAP. 0: off
    acdc_candidates: int = 300
    # an SAE directory (`interp sae train` output or SAELens files) whose cfg.json metadata.hook_name is
    # blocks.L.hook_mlp_out, blocks.L.hook_attn_out or blocks.0.hook_resid_pre: that node becomes the SAE's latents
    # plus an error node on the capital pairs, with the top latents' corpus contexts. None: off
    sae: str | None = None
    sae_top_latents: int = 8  # latents (largest |exact effect|) shown with their top-activating corpus contexts
    sae_context_seqs: int = 256  # corpus sequences (128 tokens) scanned for top-activating contexts (resumable)
    sae_contexts: int = 5  # top-activating contexts shown per latent
    seed: int = 0
    analysis: str = "circuit"

    def __post_init__(self):
        if self.metric not in METRICS:
            raise InterpError(
                f"metric: {self.metric!r} cannot be attributed by gradients.{did_you_mean(str(self.metric), METRICS)} Known: {', '.join(METRICS)}."
            )
        if not self.methods:
            raise InterpError("methods is empty: name at least one of 'eap', 'eap-ig', 'exact'.")
        for method in self.methods:
            if method not in EDGE_METHODS:
                raise InterpError(
                    f"methods: {method!r} is not an edge scoring method.{did_you_mean(str(method), EDGE_METHODS)} Known: {', '.join(EDGE_METHODS)} (exact patching also verifies each approximate method's top edges)."
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
        if self.copy_pairs < 1 or self.copy_length < 2:
            raise InterpError(
                f"copy_pairs={self.copy_pairs}, copy_length={self.copy_length}: need at least 1 pair of at least 2 words."
            )
        if self.bound_verify_top < 0 or self.bound_subsets < 1:
            raise InterpError(
                f"bound_verify_top={self.bound_verify_top}, bound_subsets={self.bound_subsets}: need >= 0 and >= 1."
            )
        if not self.acdc_tau >= 0:
            raise InterpError(f"acdc_tau={self.acdc_tau}: the ACDC threshold is a share of the gap, >= 0.")
        if self.acdc_candidates < 0:
            raise InterpError(
                f"acdc_candidates={self.acdc_candidates}: a number of top EAP edges >= 0 (0: no ACDC on the model)."
            )
        if self.sae is not None and not str(self.sae).strip():
            raise InterpError("sae: an empty path; give an SAE directory or leave it None.")
        if self.sae_top_latents < 1 or self.sae_context_seqs < 1 or self.sae_contexts < 1:
            raise InterpError(
                f"sae_top_latents={self.sae_top_latents}, sae_context_seqs={self.sae_context_seqs}, sae_contexts={self.sae_contexts}: each must be >= 1."
            )

    @classmethod
    def quick(cls) -> CircuitConfig:
        """About a minute at 1 thread: 4 capital pairs, 4 short copy pairs, EAP-IG with 3 steps, the top 60 edges
        verified, no node scores (GradDrop's exact node check patches every node: minutes), no ACDC on the model
        (minutes) and no SAE nodes (the SAE is a path the user gives)."""
        return cls(
            pairs=builtin_pairs(4),
            steps=3,
            verify_top=60,
            shuffles=100,
            curve_sizes=(0, 20, 100, 500, 2000),
            copy_pairs=4,
            copy_length=4,
            graddrop=False,
            acdc_candidates=0,
        )


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
            **{m: attribute_edges(task, graph, method=m, steps=config.steps) for m in config.methods if m != "exact"},
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


def _curves_dict(curves: pd.DataFrame) -> dict:
    return {m: dict(zip(c["n_edges"].astype(str), c["recovered"].round(4))) for m, c in curves.groupby("method")}


def split_pairs(config: CircuitConfig, pairs) -> tuple[list, list]:
    """(ranking half, held-out half) of the pairs, by a permutation seeded with config.seed."""
    order = np.random.default_rng(config.seed).permutation(len(pairs))
    half = len(pairs) // 2
    return [pairs[i] for i in order[:half]], [pairs[i] for i in order[half:]]


def heldout_curves(config: CircuitConfig, model, graph, pairs) -> tuple[dict, pd.DataFrame]:
    """Edges ranked on one half of the pairs (seeded split); faithfulness curves of that ranking on the other half
    (held out) and on the ranking half (in sample)."""
    from interp.graph import attribute_edges, faithfulness_curve, patch_edges
    from interp.patching import PatchingTask

    rank_pairs, eval_pairs = split_pairs(config, pairs)
    rank_task = PatchingTask.from_pairs(model, rank_pairs, metric=config.metric, align=config.align)
    eval_task = PatchingTask.from_pairs(model, eval_pairs, metric=config.metric, align=config.align)
    sizes = [n for n in config.curve_sizes if n <= len(graph)]
    tables = []
    for method in config.methods:
        ranking = (
            patch_edges(rank_task, graph)
            if method == "exact"
            else attribute_edges(rank_task, graph, method=method, steps=config.steps)
        )
        for split, task in (("heldout", eval_task), ("insample", rank_task)):
            tables.append(faithfulness_curve(task, ranking, sizes, graph).assign(split=split))
    curves = pd.concat(tables, ignore_index=True)
    result = {split: _curves_dict(curves[curves["split"] == split]) for split in ("heldout", "insample")} | {
        "n_rank_pairs": len(rank_pairs),
        "n_eval_pairs": len(eval_pairs),
    }
    return result, curves


def task_results(config: CircuitConfig, task, graph, pairs, *, timings: bool) -> tuple[dict, dict]:
    """One task's edge scores (verified), faithfulness curves, held-out curves and node scores: (metrics, tables)."""
    from interp.graph import agreement, attribute_edges, faithfulness_curve, patch_edges, score_edges

    metrics: dict = {
        "n_pairs": len(pairs),
        "metric": config.metric,
        "n_edges": len(graph),
        "clean_metric": task.clean_metric,
        "corrupted_metric": task.corrupted_metric,
        "agreement": {},
        "seconds": {},
        "top_edges": {},
    }
    if timings:
        metrics["seconds"]["forward_backward_reference"] = min(_reference_seconds(task) for _ in range(2))
    frames = []
    approximate = [m for m in config.methods if m != "exact"]
    exact_all = None
    if "exact" in config.methods:  # every edge patched: the ground truth for the whole graph, not only the top edges
        start = time.perf_counter()
        exact_all = patch_edges(task, graph)
        metrics["seconds"]["exact"] = time.perf_counter() - start
        metrics["top_edges"]["exact"] = _top(exact_all)
        metrics["agreement_all_edges"] = {}
    for method in approximate:
        start = time.perf_counter()
        frame = score_edges(
            task, method, graph, steps=config.steps, verify_top=min(config.verify_top, len(graph)), k=config.k
        )
        metrics["seconds"][method + "+verify"] = time.perf_counter() - start
        metrics["agreement"][method] = frame.attrs["agreement"]
        metrics["top_edges"][method] = _top(frame)
        if exact_all is not None:  # judged on every edge: an edge the method misses entirely counts against it
            metrics["agreement_all_edges"][method] = agreement(frame, exact_all, config.k)
        frames.append(frame)
    if exact_all is not None:
        frames.append(exact_all)
    if timings:
        reference = metrics["seconds"]["forward_backward_reference"]
        for method in approximate:  # the attribution alone, timed apart from the exact verification
            start = time.perf_counter()
            attribute_edges(task, graph, method=method, steps=config.steps)
            metrics["seconds"][method] = time.perf_counter() - start
            metrics["seconds"][f"{method}_over_reference"] = metrics["seconds"][method] / reference
    tables = {"edges": pd.concat(frames)}
    if (
        timings and config.loop_edges > 0 and approximate
    ):  # the speed baseline: the same exact numbers through one forward per edge
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
    start = time.perf_counter()
    sizes = [n for n in config.curve_sizes if n <= len(graph)]
    curves = pd.concat([faithfulness_curve(task, f, sizes, graph) for f in frames], ignore_index=True)
    metrics["seconds"]["faithfulness"] = time.perf_counter() - start
    metrics["faithfulness"] = _curves_dict(curves)  # in sample: the pairs that ranked the edges
    tables["faithfulness"] = curves
    if config.heldout and len(pairs) >= 2:
        start = time.perf_counter()
        metrics["heldout_faithfulness"], tables["heldout_faithfulness"] = heldout_curves(
            config, task.model, graph, pairs
        )
        metrics["seconds"]["heldout_faithfulness"] = time.perf_counter() - start
    if config.graddrop:
        start = time.perf_counter()
        metrics["nodes"], tables["nodes"] = node_results(config, task, graph)
        metrics["seconds"]["nodes"] = time.perf_counter() - start
    return metrics, tables


def run(config: CircuitConfig, out: Path, *, overwrite: bool = False) -> Path:
    """Edge scores of every method on the pairs (verified on their top edges), the in-context-copy task, node scores
    with GradDrop, held-out faithfulness curves and the planted ground truth (AUC, ACDC), into `out`."""
    from experiments.patching_sweep import check_task
    from interp.graph import ComputationGraph
    from interp.models import load_model, require_hooked
    from interp.patching import PatchingTask
    from interp.results import ResultsDir

    title = "Circuit discovery: edge attribution verified by exact edge patching"
    ResultsDir.check_create(out, config, title=title, exist_ok=True, overwrite=overwrite)
    model = require_hooked(load_model(config.model), "interp circuit")
    task = PatchingTask.from_pairs(model, config.pairs, metric=config.metric, align=config.align)
    check_task(task, config.metric)
    graph = ComputationGraph(model)
    sae_site = None
    if config.sae is not None:  # before the long run: a wrong SAE fails here, not after the edge scores
        from interp.graph.sae_nodes import check_sae_site

        sae_site = load_circuit_sae(config.sae)
        check_sae_site(graph, sae_site[0], sae_site[1])
    run_dir = ResultsDir.create(out, config, title=title, exist_ok=True, overwrite=overwrite)
    with run_dir.failure_marker():
        metrics, tables = task_results(config, task, graph, list(config.pairs), timings=True)
        for name, table in tables.items():
            run_dir.save_table(name, table.assign(task="pairs"))
        if config.acdc_candidates > 0 and len(config.pairs) >= 2:
            rank_pairs, eval_pairs = split_pairs(config, list(config.pairs))
            rank_task = PatchingTask.from_pairs(model, rank_pairs, metric=config.metric, align=config.align)
            eval_task = PatchingTask.from_pairs(model, eval_pairs, metric=config.metric, align=config.align)
            metrics["acdc_model"], acdc_tables = acdc_model_results(config, rank_task, eval_task, graph)
            for name, table in acdc_tables.items():
                run_dir.save_table(name, table)
        if sae_site is not None:
            from interp.corpus import corpus_tokens

            sae, hook, corpus_fvu = sae_site
            tokens = corpus_tokens(model, config.sae_context_seqs, 128)
            metrics["sae"], sae_tables = sae_results(
                config, task, graph, sae, hook, tokens, run_dir.path / "sae_latent_pass.pt", corpus_fvu=corpus_fvu
            )
            for name, table in sae_tables.items():
                run_dir.save_table(name, table)
        if config.copy_task:
            from interp.graph.tasks import copy_pairs

            pairs = copy_pairs(model.tokenizer, config.copy_pairs, config.copy_length, seed=config.seed)
            copy_task = PatchingTask.from_pairs(model, pairs, metric=config.metric, align=config.align)
            check_task(copy_task, config.metric)
            metrics["copy"], copy_tables = task_results(config, copy_task, graph, list(pairs), timings=False)
            metrics["copy"]["example"] = pairs[0]
            for name, table in copy_tables.items():
                run_dir.save_table(f"copy_{name}", table.assign(task="copy"))
        if config.planted:
            metrics["planted"], planted_table, planted_curves = planted_results(config)
            metrics["planted_auc"] = metrics["planted"][f"leak={config.planted_leaks[0]:g}"]["auc"]
            run_dir.save_table("planted_edges", planted_table)
            run_dir.save_table("planted_faithfulness", planted_curves)
            metrics["acdc"], acdc_table = acdc_results(config)
            if len(acdc_table):
                run_dir.save_table("planted_acdc", acdc_table)
        run_dir.write_metrics(metrics, merge=False)
    return run_dir.path


if __name__ == "__main__":  # pragma: no cover  (the same command and options as `interp run circuit`)
    from experiments.cli import script_main

    script_main("circuit")
