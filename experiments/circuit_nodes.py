"""Circuit discovery's node scores (experiments.circuit, CircuitConfig.graddrop): AtP and AtP* GradDrop against exact
patching of every node, and the false-negative bound on the unverified nodes with its coverage (Wilson interval)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from experiments.circuit import CircuitConfig


def wilson(successes: int, n: int, z: float = 1.96) -> list[float]:
    """Wilson score 95% interval of a share."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [float(centre - half), float(centre + half)]


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
