"""Circuit discovery by greedy pruning with exact patching (ACDC, Conmy et al. 2023) and minimality checks.

ACDC: start from the whole graph (or a candidate set of edges, every other edge already carrying its
corrupted sender). Visit the receivers from the logits backwards (reverse topological order); for each
edge into the receiver, remove it tentatively (it carries the corrupted sender's output, as in
`circuit_metric`) and keep the removal when the circuit's metric gets worse by less than `tau` times the
clean - corrupted gap (improvements count as no damage, as in ACDC). A receiver whose node no longer
sends any edge cannot matter, so its incoming edges go without a test. Every test is one exact forward;
the decisions are sequential, so the cost is one forward per candidate edge. A forward's cost grows with the
number of candidates, not with the graph (`circuit_metrics_within`: every receiver reads the corrupted run's
residual stream plus its kept candidate edges' output - corrupted output), so ACDC runs on a large model's graph
restricted to, e.g., its top edges by EAP.

Minimality (`minimality`): for each kept edge, the share of the gap lost when that edge alone is also
removed from the final circuit (one batched run for all): an edge whose removal costs nothing is not
needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from interp.errors import InterpError
from interp.graph.graph import LOGITS, ComputationGraph
from interp.graph.graph import task_graph as _graph
from interp.graph.candidate_circuits import circuit_metrics_within, corrupted_residuals
from interp.graph.circuit_metrics import corrupted_senders
from interp.patching.engine import DEFAULT_MEMORY_BUDGET
from interp.patching.task import PatchingTask


def _gap(task: PatchingTask) -> float:
    gap = task.clean_metric - task.corrupted_metric
    if not abs(gap) > 0:
        raise InterpError(
            f"the task's clean and corrupted metrics are equal ({task.clean_metric:.4g}): nothing for a circuit to recover."
        )
    return gap


def _receiver_node(graph: ComputationGraph, j: int) -> list[int]:
    """The senders whose computation reads receiver j (its head(s) or MLP; the logits: none)."""
    r = graph.receivers[j]
    if r.component == LOGITS:
        return []
    if r.component == "mlp_in":
        return [graph.sender_index(f"m{r.layer}")]
    return [graph.sender_index(f"a{r.layer}.h{h}") for h in r.query_heads]


def acdc(
    task: PatchingTask,
    graph: ComputationGraph | None = None,
    *,
    tau: float = 0.01,
    candidates=None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> pd.DataFrame:
    """Greedy ACDC pruning: the kept edges (rows of graph.edges, with `damage`: the gap share lost by removing
    each when it was tested, NaN for edges dropped without a test) and attrs: metric, recovered, n_tests, tau.

    candidates: the edges to decide on (rows of graph.edges, name pairs, or edge ids); None: every edge.
    Edges outside `candidates` carry their corrupted sender throughout.
    """
    graph = _graph(task, graph)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0:
        raise InterpError(f"tau={tau!r}: the pruning threshold is a share of the clean - corrupted gap, >= 0.")
    gap = _gap(task)
    if candidates is None:
        ids = list(range(len(graph)))
    elif isinstance(candidates, (list, tuple, np.ndarray)) and all(
        isinstance(x, (int, np.integer)) for x in candidates
    ):
        ids = sorted({int(x) for x in candidates})
        if ids and not 0 <= ids[0] <= ids[-1] < len(graph):
            raise InterpError(f"candidates: edge ids must lie in 0..{len(graph) - 1}.")
    else:
        ids = sorted(set(graph.edge_ids(candidates)))
    if not ids:
        raise InterpError("candidates is empty: give at least one edge to decide on.")
    corrupted, residuals = corrupted_senders(task, graph), corrupted_residuals(task, graph)
    down = graph.edges["downstream_index"].to_numpy()
    up = graph.edges["upstream_index"].to_numpy()
    kept = set(ids)

    def metric_of(edges) -> float:
        return float(
            circuit_metrics_within(
                task, graph, [sorted(edges)], ids, corrupted, residuals, memory_budget=memory_budget
            )[0]
        )

    current = metric_of(kept)
    damage: dict[int, float] = {}
    n_tests = 0
    for j in reversed(range(len(graph.receivers))):
        incoming = [e for e in ids if down[e] == j and e in kept]
        if not incoming:
            continue
        readers = _receiver_node(graph, j)
        if readers and not any(up[e] in readers for e in kept):
            kept -= set(incoming)  # its node sends nothing any more: the input cannot matter
            continue
        for e in sorted(incoming, key=lambda e: -up[e]):  # the nearest senders first, as ACDC
            trial = metric_of(kept - {e})
            n_tests += 1
            loss = (current - trial) / gap
            damage[e] = loss
            if loss < tau:
                kept.discard(e)
                current = trial
    frame = graph.edges.loc[sorted(kept)].copy()
    frame["damage"] = [damage.get(e, np.nan) for e in frame.index]
    frame["method"] = "acdc"
    frame.attrs.update(
        tau=float(tau),
        metric=current,
        recovered=(current - task.corrupted_metric) / gap,
        n_tests=n_tests,
        n_candidates=len(ids),
        clean_metric=task.clean_metric,
        corrupted_metric=task.corrupted_metric,
    )
    return frame


def minimality(
    task: PatchingTask, circuit, graph: ComputationGraph | None = None, *, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> pd.DataFrame:
    """For each edge of `circuit`, the circuit's metric with that edge also removed and `drop`: the share of the
    clean - corrupted gap lost by removing it (0: the edge is not needed). attrs: metric and recovered of the
    whole circuit."""
    graph = _graph(task, graph)
    gap = _gap(task)
    if isinstance(circuit, (list, tuple, np.ndarray)) and all(isinstance(x, (int, np.integer)) for x in circuit):
        ids = [int(x) for x in circuit]
    else:
        ids = graph.edge_ids(circuit)
    if not ids:
        raise InterpError("circuit is empty: minimality needs at least one kept edge.")
    if len(set(ids)) != len(ids):
        raise InterpError("circuit: an edge is listed twice; pass each kept edge once.")
    variants: list[Sequence[int]] = [ids] + [[x for x in ids if x != e] for e in ids]
    values = circuit_metrics_within(task, graph, variants, ids, memory_budget=memory_budget)
    frame = graph.edges.loc[ids].copy()
    frame["metric"] = values[1:]
    frame["drop"] = (values[0] - values[1:]) / gap
    frame.attrs.update(metric=float(values[0]), recovered=float((values[0] - task.corrupted_metric) / gap))
    return frame
