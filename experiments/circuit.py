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


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95% interval of a share."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


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


def node_results(config: CircuitConfig, task, graph) -> tuple[dict, pd.DataFrame]:
    """AtP and AtP* GradDrop node scores against exact node patching of every node, and the false-negative bound."""
    from interp.attribution.graddrop import attribute_nodes, false_negative_bound, patch_nodes
    from interp.graph import agreement

    seconds = {}
    start = time.perf_counter()
    exact = patch_nodes(task, graph)
    seconds["exact_nodes"] = time.perf_counter() - start
    frames, result = [exact], {"agreement": {}}
    for method in ("atp", "atp+graddrop"):
        start = time.perf_counter()
        frame = attribute_nodes(task, graph, method=method)
        seconds[method] = time.perf_counter() - start
        frame["exact_effect"] = exact["effect"].to_numpy()
        frames.append(frame)
        # magnitudes: GradDrop ranks by |effect| only; upstream/downstream stand in for the node name
        ranked = pd.DataFrame({"upstream": frame["node"], "downstream": "", "effect": frame["score"]})
        truth = pd.DataFrame({"upstream": exact["node"], "downstream": "", "effect": exact["effect"].abs()})
        result["agreement"][method] = agreement(ranked, truth, config.k)
        # the node a method misses most: the largest exact effect outside its top k
        top = set(frame["score"].nlargest(config.k).index)
        missed = exact.loc[[i for i in exact.index if i not in top], "effect"].abs()
        result["agreement"][method]["largest_missed_exact"] = float(missed.max()) if len(missed) else 0.0
    gd = frames[2]
    bounded = false_negative_bound(
        task,
        gd,
        graph,
        verify_top=min(config.bound_verify_top, len(gd)),
        n_subsets=config.bound_subsets,
        seed=config.seed,
    )
    rest = ~bounded["verified"]
    truth = exact["effect"].abs()[rest]
    tolerance = 1e-4 * abs(task.clean_metric - task.corrupted_metric)  # float noise between batch compositions
    covered = int((bounded.loc[rest, "bound"] >= truth - tolerance).sum())
    result["bound"] = {
        "verify_top": int(bounded["verified"].sum()),
        "n_unverified": int(rest.sum()),
        "n_patches": bounded.attrs["n_patches"],
        "max_bound": bounded.attrs["max_bound"],
        "largest_unverified_exact": float(truth.max()) if len(truth) else 0.0,
        "covered": covered,
        "coverage": covered / int(rest.sum()) if rest.any() else float("nan"),
        "coverage_95ci": wilson(covered, int(rest.sum())),
        "coverage_tolerance": tolerance,
    }
    result["seconds"] = seconds
    result["top_nodes"] = [
        {"node": n, "exact": float(e), "atp": float(a), "graddrop": float(g)}
        for n, e, a, g in zip(gd["node"], exact["effect"], frames[1]["effect"], gd["score"])
        if n in set(exact.loc[exact["effect"].abs().nlargest(10).index, "node"])
    ]
    nodes = pd.concat(frames, ignore_index=True)
    nodes["bound"] = np.nan
    nodes.loc[nodes["method"] == "atp+graddrop", "bound"] = bounded["bound"].to_numpy()
    return result, nodes


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


def acdc_results(config: CircuitConfig) -> tuple[dict, pd.DataFrame]:
    """Greedy ACDC pruning (exact patching) of the planted models, with the minimality of the circuit found."""
    from interp.graph import ComputationGraph, acdc, minimality
    from interp.graph.planted import PLANTED_EDGES, planted_model, planted_task

    results, tables = {}, []
    for leak in config.planted_leaks:
        task = planted_task(planted_model(leak, seed=config.seed), seed=config.seed)
        graph = ComputationGraph(task.model)
        start = time.perf_counter()
        circuit = acdc(task, graph, tau=config.acdc_tau)
        seconds = time.perf_counter() - start
        found = set(zip(circuit["upstream"], circuit["downstream"]))
        minimal = minimality(task, circuit.index.tolist(), graph) if len(circuit) else None
        results[f"leak={leak:g}"] = {
            "tau": config.acdc_tau,
            "n_edges": len(circuit),
            "n_planted_found": len(found & set(PLANTED_EDGES)),
            "n_planted": len(PLANTED_EDGES),
            "n_extra": len(found - set(PLANTED_EDGES)),
            "recovered": circuit.attrs["recovered"],
            "n_tests": circuit.attrs["n_tests"],
            "seconds": seconds,
            "minimality_min_drop": float(minimal["drop"].min()) if minimal is not None else None,
            "n_unneeded": int((minimal["drop"] < config.acdc_tau).sum()) if minimal is not None else 0,
        }
        if minimal is not None:
            tables.append(minimal.assign(leak=leak, damage=circuit["damage"].to_numpy(), method="acdc"))
    return results, (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame())


def acdc_model_results(config: CircuitConfig, rank_task, eval_task, graph) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Greedy ACDC (exact patching) inside the top `acdc_candidates` edges by EAP, chosen and pruned on `rank_task`;
    its circuit's metric on `eval_task` (held out) and `rank_task` (in sample) next to the top-n edges by each
    approximate method (n = the ACDC circuit's size) and the whole candidate set; the circuit's minimality."""
    from interp.graph import acdc, attribute_edges, circuit_metric, minimality

    start = time.perf_counter()
    rankings = {
        m: attribute_edges(rank_task, graph, method=m, steps=config.steps) for m in config.methods if m != "exact"
    }
    ranking = rankings.get("eap")
    if ranking is None:
        ranking = attribute_edges(rank_task, graph, method="eap")
    order = {
        m: f["effect"].abs().sort_values(ascending=False, kind="stable").index.tolist() for m, f in rankings.items()
    }
    top_eap = ranking["effect"].abs().sort_values(ascending=False, kind="stable").index.tolist()
    candidates = top_eap[: min(config.acdc_candidates, len(graph))]
    rank_seconds = time.perf_counter() - start
    start = time.perf_counter()
    circuit = acdc(rank_task, graph, tau=config.acdc_tau, candidates=candidates)
    acdc_seconds = time.perf_counter() - start
    kept = circuit.index.tolist()
    n = len(kept)
    minimal = minimality(rank_task, kept, graph) if n else None
    rng = np.random.default_rng(config.seed)
    random_draws = [sorted(rng.choice(candidates, n, replace=False).tolist()) for _ in range(5)] if n else []
    circuits = {
        "acdc": kept,
        **{f"{m} top-n": o[:n] for m, o in order.items()},
        "candidates": candidates,
        **{f"random-n {d}": ids for d, ids in enumerate(random_draws)},  # n of the candidates at random (baseline)
    }
    rows = []
    for split, task in (("heldout", eval_task), ("insample", rank_task)):
        values = circuit_metric(task, graph, list(circuits.values()))
        gap = task.clean_metric - task.corrupted_metric
        for (name, ids), value in zip(circuits.items(), values):
            rows.append(
                {
                    "split": split,
                    "circuit": name,
                    "n_edges": len(ids),
                    "metric": float(value),
                    "recovered": float((value - task.corrupted_metric) / gap),
                }
            )
    table = pd.DataFrame(rows)
    result = {
        "tau": config.acdc_tau,
        "n_candidates": len(candidates),
        "n_edges": n,
        "n_tests": circuit.attrs["n_tests"],
        "n_rank_pairs": rank_task.n_prompts,
        "n_eval_pairs": eval_task.n_prompts,
        "recovered": {
            split: {
                r["circuit"]: round(r["recovered"], 4)
                for r in rows
                if r["split"] == split and "random" not in r["circuit"]
            }
            | _random_summary([r["recovered"] for r in rows if r["split"] == split and "random" in r["circuit"]])
            for split in ("heldout", "insample")
        },
        "n_unneeded": int((minimal["drop"] < config.acdc_tau).sum()) if minimal is not None else 0,
        "minimality_min_drop": float(minimal["drop"].min()) if minimal is not None else None,
        "seconds": {"ranking": rank_seconds, "acdc": acdc_seconds},
        "edges": [
            {"upstream": u, "downstream": v, "damage": None if pd.isna(d) else float(d)}
            for u, v, d in zip(circuit["upstream"], circuit["downstream"], circuit["damage"])
        ][:50],
    }
    tables = {"acdc_model": table}
    if minimal is not None:
        tables["acdc_model_circuit"] = minimal.assign(damage=circuit["damage"].to_numpy(), method="acdc")
    return result, tables


def _random_summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {
        "random-n mean": round(float(np.mean(values)), 4),
        "random-n range": [round(min(values), 4), round(max(values), 4)],
    }


def _context_text(example: dict) -> str:
    """A context window as text, its top-activating token in brackets."""
    return "".join(f"[{t}]" if i == example["focus"] else t for i, t in enumerate(example["tokens"])).replace("\n", "⏎")


def sae_results(
    config: CircuitConfig, task, graph, sae, hook: str, tokens, state_path: Path, *, corpus_fvu: float | None = None
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The SAE's site split into latents + an error node on `task`: every changed latent's EAP and exact effect
    (interp.graph.sae_nodes), the error's share of the site's effect, the latents' EAP edges, and the top
    `sae_top_latents` latents' top-activating contexts over `tokens` (sae.latent_pass, resumable at `state_path`)."""
    import torch

    from interp.graph import agreement
    from interp.graph.sae_nodes import node_of_hook, sae_edge_scores, sae_node_effects, sae_split
    from interp.hooks import capture
    from sae.latent_pass import latent_cards, latent_pass

    node = node_of_hook(graph, hook)
    start = time.perf_counter()
    effects = sae_node_effects(task, node, sae, graph)
    edges = sae_edge_scores(task, node, sae, graph)
    seconds = {"scores": time.perf_counter() - start}
    with torch.no_grad():
        acts = capture(task.model, task.clean_tokens, [hook], attention_mask=task.clean_mask)[hook]
        f, error = sae_split(sae, acts)
    x = acts.reshape(-1, acts.shape[-1]).double()
    fvu_prompts = float(error.reshape(-1, x.shape[-1]).double().pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    latents = effects[effects["kind"] == "latent"]
    whole = effects.set_index("kind")
    top = latents.loc[
        latents["exact"].abs().sort_values(ascending=False, kind="stable").index[: config.sae_top_latents]
    ]
    start = time.perf_counter()
    result = latent_pass(task.model, sae, hook, tokens, state_path, top=max(config.sae_contexts, 1))
    cards = latent_cards(
        task.model, sae, hook, tokens, result, [int(j) for j in top["latent"]], contexts=config.sae_contexts
    )
    seconds["contexts"] = time.perf_counter() - start
    rows = []
    for rank, (card, (_, row)) in enumerate(zip(cards, top.iterrows())):
        for example in card["examples"] or [None]:
            rows.append(
                {
                    "rank": rank,
                    "node": row["upstream"],
                    "latent": int(row["latent"]),
                    "exact": float(row["exact"]),
                    "eap": float(row["eap"]),
                    "density": card["density"],
                    "activation": None if example is None else example["activation"],
                    "context": "(never active in the corpus pass)" if example is None else _context_text(example),
                    "seq": None if example is None else example["seq"],
                    "pos": None if example is None else example["pos"],
                }
            )
    contexts = pd.DataFrame(rows)
    ranked = pd.DataFrame({"upstream": latents["upstream"], "downstream": "", "effect": latents["eap"]})
    truth = pd.DataFrame({"upstream": latents["upstream"], "downstream": "", "effect": latents["exact"]})
    metrics = {
        "path": str(config.sae),
        "hook": hook,
        "node": node,
        "d_sae": int(sae.W_dec.shape[0]),
        "fvu_corpus": corpus_fvu,
        "fvu_prompts": fvu_prompts,
        "l0_prompts": float((f > 0).sum(-1).double().mean()),
        "n_changed_latents": effects.attrs["n_changed_latents"],
        "node_exact": float(whole.loc["node", "exact"]),
        "node_eap": float(whole.loc["node", "eap"]),
        "error_exact": float(whole.loc["error", "exact"]),
        "error_eap": float(whole.loc["error", "eap"]),
        "latents_exact": float(whole.loc["latents", "exact"]),
        "latents_eap": float(whole.loc["latents", "eap"]),
        "error_share_exact": effects.attrs["error_share_exact"],
        "error_share_eap": effects.attrs["error_share_eap"],
        "latent_sum_exact": float(latents["exact"].sum()),
        "agreement": agreement(ranked, truth, config.k) if len(latents) >= 2 else None,
        "context_tokens": int(result.n_tokens),
        "top_latents": [
            {
                "latent": int(j),
                "exact": float(e),
                "eap": float(a),
                "top_context": next(iter(c["examples"]), {}).get("tokens"),
            }
            for j, e, a, c in zip(top["latent"], top["exact"], top["eap"], cards)
        ],
        "seconds": seconds,
    }
    return metrics, {"sae_nodes": effects, "sae_edges": edges, "sae_contexts": contexts}


def load_circuit_sae(path: str):
    """(SAE, the hook it reads, its FVU from the training run's metrics.json if there) for CircuitConfig.sae."""
    import json

    from sae.io import load_sae, read_sae_config

    directory = Path(path)
    sae_dir = directory / "sae" if (directory / "sae").is_dir() else directory
    hook = (read_sae_config(sae_dir).get("metadata") or {}).get("hook_name")
    if not hook:
        raise InterpError(
            f"sae={path!r}: its cfg.json has no metadata.hook_name, so the node it replaces is unknown; save it with a hook name."
        )
    fvu = None
    metrics = sae_dir.parent / "metrics.json"
    if metrics.is_file():
        fvu = json.loads(metrics.read_text()).get("fvu")
    return load_sae(sae_dir), hook, fvu


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
