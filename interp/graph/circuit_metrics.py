"""Circuit metrics: the task's metric when a circuit's edges stay clean and every other edge carries its sender's
output on the corrupted prompts (noising, as in interp.graph.scores), for many circuits in one batched forward;
and the faithfulness curve of an edge ranking (the metric recovered by its top-n edges).

Every edge is patched at once: each receiver's input gets, per variant, the sum over its ablated edges of
(corrupted_u - u's output in this run), so everything downstream recomputes. The cost grows with the graph;
interp.graph.candidate_circuits computes the same numbers over a small candidate set of edges.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError
from interp.graph.graph import (
    ComputationGraph,
    sender_deltas,
    sender_slices,
    split_inputs,
    stack_senders,
)
from interp.graph.graph import task_graph as _graph
from interp.patching.engine import DEFAULT_MEMORY_BUDGET
from interp.patching.task import PatchingTask, last_position_logits


def receivers_by_hook(graph: ComputationGraph) -> dict[str, list[int]]:
    """Receiver indices grouped by the hook that carries their input (a layer's query heads share one hook)."""
    by_hook: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(graph.receivers):
        by_hook[r.hook_name].append(j)
    return by_hook


def score_variants(task: PatchingTask, graph: ComputationGraph, n_variants: int, hooks: list) -> Tensor:
    """Metric per variant: the clean prompts repeated `n_variants` times, run through every block with `hooks`."""
    model = task.model
    tokens = task.clean_tokens.repeat(n_variants, 1)
    mask = None if task.clean_mask is None else task.clean_mask.repeat(n_variants, 1)
    with split_inputs(model):
        resid = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks, stop_at_layer=graph.n_layers)
    return task.score(last_position_logits(model, resid))


def _circuit_metrics(task: PatchingTask, graph: ComputationGraph, ablated: Tensor, corrupted: Tensor) -> Tensor:
    """Metric per variant when, in variant c, every edge (u, v) with ablated[c, v, u] carries corrupted_u instead
    of u's output in that run (all the variant's ablations at once; everything recomputes)."""
    model, n_variants, n_prompts = task.model, ablated.shape[0], task.n_prompts
    current = torch.zeros((len(graph.senders), n_variants * n_prompts, *corrupted.shape[2:]), dtype=corrupted.dtype)
    corrupted_rep = corrupted.repeat(1, n_variants, 1, 1)
    weight = ablated.to(corrupted.dtype)
    slices = sender_slices(graph)

    def record(act: Tensor, hook) -> None:
        start, stop = slices[hook.name]
        if hook.name.endswith("hook_z"):
            layer = int(hook.name.split(".")[1])
            current[start:stop] = torch.einsum("bphk,hkd->hbpd", act, model.blocks[layer].attn.W_O)
        else:
            current[start] = act

    def patch(receivers: list[int]):
        def hook(act: Tensor, hook) -> Tensor:
            n_up = graph.receivers[receivers[0]].n_upstream
            diff = (corrupted_rep[:n_up] - current[:n_up]).view(n_up, n_variants, n_prompts, *act.shape[1:2], -1)
            added = torch.einsum("cvu,ucbpd->cbvpd", weight[:, receivers, :n_up], diff).flatten(
                0, 1
            )  # [variants*batch, receivers, pos, d]
            if graph.receivers[receivers[0]].head is None:
                return act + added[:, 0]
            return act + added.transpose(1, 2)

        return hook

    # the logits' input is the last block's output: its hook comes after that block's MLP output was recorded
    hooks = [(name, record) for name in slices] + [(name, patch(js)) for name, js in receivers_by_hook(graph).items()]
    return score_variants(task, graph, n_variants, hooks)


def circuit_metric(
    task: PatchingTask,
    graph: ComputationGraph | None = None,
    circuits: Sequence = (),
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """The metric of each circuit: its edges stay clean, every other edge carries the sender's corrupted output.

    circuits: a list of edge selections (rows of graph.edges, (upstream, downstream) pairs, or edge ids as a
    list of ints; an empty selection ablates every edge). Returns one metric per circuit: the whole graph gives
    the clean metric, the empty circuit the corrupted one.
    """
    if memory_budget <= 0:
        raise InterpError(
            f"memory_budget={memory_budget}: must be a positive number of bytes (default {DEFAULT_MEMORY_BUDGET})."
        )
    graph = _graph(task, graph)
    if len(circuits) == 0:
        raise InterpError("circuits is empty: pass at least one circuit (a selection of edges to keep clean).")
    kept = []
    for c, circuit in enumerate(circuits):
        if isinstance(circuit, (list, tuple, np.ndarray)) and all(isinstance(x, (int, np.integer)) for x in circuit):
            ids = [int(x) for x in circuit]
            bad = [x for x in ids if not 0 <= x < len(graph)]
            if bad:
                raise InterpError(
                    f"circuits[{c}]: edge ids {bad[:5]} are out of range; the graph has edges 0..{len(graph) - 1}."
                )
        else:
            ids = graph.edge_ids(circuit) if len(circuit) else []
        kept.append(ids)
    return circuit_metrics_given(task, graph, kept, corrupted_senders(task, graph), memory_budget=memory_budget)


def corrupted_senders(task: PatchingTask, graph: ComputationGraph) -> Float[Tensor, "senders batch pos d_model"]:
    """Every sender's output on the corrupted prompts (what an ablated edge carries)."""
    delta, clean = sender_deltas(task, graph)
    return delta + stack_senders(graph, clean)


def circuit_metrics_given(
    task: PatchingTask,
    graph: ComputationGraph,
    kept: Sequence[Sequence[int]],
    corrupted: Tensor,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """`circuit_metric` for lists of edge ids, with the corrupted senders computed once by the caller."""
    up, down = graph.edges["upstream_index"].to_numpy(), graph.edges["downstream_index"].to_numpy()
    per_batch = max(
        1, memory_budget // (3 * corrupted[:, 0].numel() * corrupted.element_size() * task.n_prompts)
    )  # every sender's output, thrice, per variant
    values = np.empty(len(kept))
    with torch.no_grad():
        for s in range(0, len(kept), per_batch):
            chunk = kept[s : s + per_batch]
            ablated = torch.ones((len(chunk), len(graph.receivers), len(graph.senders)), dtype=torch.bool)
            for c, ids in enumerate(chunk):
                ablated[c, down[ids], up[ids]] = False
            values[s : s + len(chunk)] = _circuit_metrics(task, graph, ablated, corrupted).double().cpu().numpy()
    return values


def faithfulness_curve(
    task: PatchingTask,
    scores: pd.DataFrame,
    sizes: Sequence[int],
    graph: ComputationGraph | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> pd.DataFrame:
    """Metric recovered by the top-n edges of `scores` (by |effect|), the rest patched to corrupted, for each n in `sizes`.

    Rows: n_edges, metric, recovered ((metric - corrupted) / (clean - corrupted): 1 is the whole model's behaviour), method.
    """
    graph = _graph(task, graph)
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 0:
        raise InterpError(f"sizes={sizes}: give circuit sizes (numbers of edges) >= 0.")
    order = scores["effect"].abs().sort_values(ascending=False, kind="stable").index
    ids = graph.edge_ids(scores.loc[order])
    metric = circuit_metric(task, graph, [ids[:n] for n in sizes], memory_budget=memory_budget)
    gap = task.clean_metric - task.corrupted_metric
    return pd.DataFrame(
        {
            "n_edges": sizes,
            "metric": metric,
            "recovered": (metric - task.corrupted_metric) / gap if gap else np.nan,
            "method": scores.attrs.get("method", scores["method"].iloc[0] if "method" in scores else ""),
        }
    )
