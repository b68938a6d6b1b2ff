"""Circuit discovery speed on the bundled SmolLM2 (issue 18, point 5), ours against the plain ways, in one process.

    python benchmarks/circuit.py [--repeats 3] [--verify 200] [--loop-edges 8] [--out benchmarks/circuit.json]

Interleaved (each repeat times every item once, so the shared machine's load hits all alike); medians of wall-clock
and process CPU seconds (CPU is the fairer number under load). Items: the reference (one clean forward, one corrupted
forward and one backward: EAP's unit); EAP over every edge; EAP-IG with 5 steps; exact patching of EAP's top
`--verify` edges batched per receiver layer (interp.graph.patch_edges) against a per-edge loop of TransformerLens
hooks (patch_edges_loop: one whole forward per edge, timed on `--loop-edges` of them; same numbers); one ACDC test
(a circuit inside the top 300 EAP edges) by circuit_metrics_within against the dense all-edge circuit metric. The
peer library auto-circuit is tried first; its import error is recorded when it does not import.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.timing import timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verify", type=int, default=200)
    parser.add_argument("--loop-edges", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/circuit.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from experiments.circuit import _reference_seconds
    from interp.graph import ComputationGraph, attribute_edges, patch_edges, patch_edges_loop
    from interp.graph.candidate_circuits import circuit_metrics_within, corrupted_residuals
    from interp.graph.circuit_metrics import circuit_metrics_given, corrupted_senders
    from interp.models import load_model
    from interp.patching import PatchingTask
    from interp.patching.pairs import builtin_pairs

    try:
        import auto_circuit  # noqa: F401

        peer = "auto_circuit imports (not wired in: its graphs need TransformerLens model names)"
    except Exception as exc:  # record why the peer is absent
        peer = f"auto_circuit does not import: {type(exc).__name__}: {exc}"[:300]

    model = load_model()
    task = PatchingTask.from_pairs(model, builtin_pairs())
    graph = ComputationGraph(model)
    eap = attribute_edges(task, graph, method="eap")
    order = eap["effect"].abs().sort_values(ascending=False, kind="stable").index
    top = eap.loc[order[: args.verify]]
    candidates = order[:300].tolist()
    circuit = candidates[::3]  # one ACDC-style test: a third of the candidates kept
    corrupted, residuals = corrupted_senders(task, graph), corrupted_residuals(task, graph)

    items = {
        "reference": lambda: _reference_seconds(task),
        "eap": lambda: attribute_edges(task, graph, method="eap"),
        "eap-ig (5 steps)": lambda: attribute_edges(task, graph, method="eap-ig", steps=5),
        f"exact top {args.verify}, batched": lambda: patch_edges(task, graph, top),
        f"exact {args.loop_edges} edges, per-edge hook loop": lambda: patch_edges_loop(
            task, graph, top.iloc[: args.loop_edges]
        ),
        "acdc test, within 300 candidates": lambda: circuit_metrics_within(
            task, graph, [circuit], candidates, corrupted, residuals
        ),
        "acdc test, dense all-edge path": lambda: circuit_metrics_given(task, graph, [circuit], corrupted),
    }
    wall = {k: [] for k in items}
    cpu = {k: [] for k in items}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in items.items():
            outputs[name], w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    batched, looped = (
        outputs[f"exact top {args.verify}, batched"],
        outputs[f"exact {args.loop_edges} edges, per-edge hook loop"],
    )
    within = float(outputs["acdc test, within 300 candidates"][0])
    dense = float(outputs["acdc test, dense all-edge path"][0])
    loop_key = f"exact {args.loop_edges} edges, per-edge hook loop"
    result = {
        "machine": platform.platform(),
        "threads": args.threads,
        "repeats": args.repeats,
        "n_edges": len(graph),
        "wall_seconds_median": med,
        "cpu_seconds_median": med_cpu,
        "wall_seconds": wall,
        "ratios_cpu": {
            "eap_over_reference": med_cpu["eap"] / med_cpu["reference"],
            "eap-ig_over_reference": med_cpu["eap-ig (5 steps)"] / med_cpu["reference"],
            "eap-ig_over_eap": med_cpu["eap-ig (5 steps)"] / med_cpu["eap"],
            "exact_loop_per_edge_over_batched_per_edge": (med_cpu[loop_key] / args.loop_edges)
            / (med_cpu[f"exact top {args.verify}, batched"] / args.verify),
            "acdc_dense_over_within": med_cpu["acdc test, dense all-edge path"]
            / med_cpu["acdc test, within 300 candidates"],
        },
        "same_numbers": {
            "exact_loop_vs_batched_max_abs": float(
                np.abs(looped["effect"].to_numpy() - batched["effect"].to_numpy()[: args.loop_edges]).max()
            ),
            "acdc_within_vs_dense_abs": abs(within - dense),
        },
        "peer": peer,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios_cpu"], indent=2), json.dumps(result["same_numbers"]), peer)


if __name__ == "__main__":
    main()
