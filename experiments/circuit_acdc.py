"""Circuit discovery's ACDC runs (experiments.circuit): greedy ACDC pruning with exact patching on the planted models
(the planted edges it finds, its circuit's minimality) and on the model inside the top EAP edges, chosen and pruned on
half the pairs and judged on the other half next to the top-n edges of each approximate method and random n-edge draws."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from experiments.circuit import CircuitConfig


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
