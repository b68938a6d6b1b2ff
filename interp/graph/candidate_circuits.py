"""Circuit metrics within a small candidate set of edges: every edge outside the candidates is ablated in every
circuit, so each receiver reads the corrupted run's residual stream plus its kept candidate edges'
(output - corrupted output). The same numbers as interp.graph.circuit_metrics up to float rounding, at a cost that
grows with the number of candidates, not with the graph: what ACDC on a large graph's top edges needs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor

from interp.errors import InterpError
from interp.graph.circuit_metrics import corrupted_senders, receivers_by_hook, score_variants
from interp.graph.graph import ComputationGraph, sender_slices
from interp.hooks import capture
from interp.patching.engine import DEFAULT_MEMORY_BUDGET
from interp.patching.task import PatchingTask


def corrupted_residuals(task: PatchingTask, graph: ComputationGraph) -> dict[str, Tensor]:
    """The corrupted run's residual stream where each receiver reads it (resid_pre per layer for q / k / v, resid_mid
    for the MLP input, the last resid_post for the logits): what a receiver reads when every edge into it is ablated."""
    hooks = {f"blocks.{layer}.hook_resid_pre" for layer in range(graph.n_layers)}
    hooks |= {f"blocks.{layer}.hook_resid_mid" for layer in range(graph.n_layers)}
    hooks.add(f"blocks.{graph.n_layers - 1}.hook_resid_post")
    with torch.no_grad():
        return capture(
            task.model, task.corrupted_tokens, hooks, attention_mask=task.corrupted_mask, stop_at_layer=graph.n_layers
        )


def _base_hook(graph: ComputationGraph, hook_name: str) -> str:
    """The residual-stream hook a receiver input copies (q / k / v: resid_pre; MLP input: resid_mid; logits itself)."""
    layer, name = hook_name.split(".")[1], hook_name.split(".")[-1]
    if name in ("hook_q_input", "hook_k_input", "hook_v_input"):
        return f"blocks.{layer}.hook_resid_pre"
    if name == "hook_mlp_in":
        return f"blocks.{layer}.hook_resid_mid"
    return hook_name  # the logits' input: the last resid_post


def _sparse_metrics(
    task: PatchingTask,
    graph: ComputationGraph,
    kept: Bool[Tensor, "variants candidates"],
    candidates: Sequence[int],
    corrupted: Tensor,
    residuals: dict[str, Tensor],
) -> Tensor:
    """Metric per variant: every receiver reads the corrupted run's residual stream plus, for each candidate edge
    (u, v) the variant keeps, u's output in this run minus its corrupted output (so kept edges carry u's own output,
    every other edge the corrupted one: the same circuit as `_circuit_metrics`, computed over the kept edges only)."""
    model, n_variants, n_prompts = task.model, kept.shape[0], task.n_prompts
    up = graph.edges["upstream_index"].to_numpy()[list(candidates)]
    down = graph.edges["downstream_index"].to_numpy()[list(candidates)]
    involved = sorted(set(int(u) for u in up))
    slot = {u: s for s, u in enumerate(involved)}
    current: dict[int, Tensor] = {}
    weight = kept.to(corrupted.dtype)
    by_receiver: dict[int, list[int]] = defaultdict(list)  # receiver -> positions in `candidates`
    for n, j in enumerate(down):
        by_receiver[int(j)].append(n)
    slices = sender_slices(graph)
    record_hooks = [name for name, (start, stop) in slices.items() if any(start <= u < stop for u in involved)]

    def record(act: Tensor, hook) -> None:
        start, stop = slices[hook.name]
        if hook.name.endswith("hook_z"):
            layer = int(hook.name.split(".")[1])
            out = torch.einsum("bphk,hkd->hbpd", act, model.blocks[layer].attn.W_O)
            for u in range(start, stop):
                if u in slot:
                    current[u] = out[u - start]
        else:
            current[start] = act

    def contribution(j: int) -> Tensor:
        """Sum over receiver j's kept candidate edges of (this run's u - corrupted u), per variant: [V*B, pos, d]."""
        positions = by_receiver[j]
        diff = torch.stack(
            [
                current[int(up[n])].view(n_variants, n_prompts, *corrupted.shape[2:]) - corrupted[int(up[n])]
                for n in positions
            ]
        )  # [edges, V, B, pos, d]
        return torch.einsum("cn,ncbpd->cbpd", weight[:, positions], diff).flatten(0, 1)

    def patch(receivers: list[int], base_name: str):
        base = residuals[base_name].repeat(n_variants, 1, 1)  # [V*B, pos, d]

        def hook(act: Tensor, hook) -> Tensor:
            if graph.receivers[receivers[0]].head is None:
                new = base.clone()
                if receivers[0] in by_receiver:
                    new += contribution(receivers[0])
                return new
            new = base[:, :, None, :].repeat(1, 1, len(receivers), 1)
            for k, j in enumerate(receivers):
                if j in by_receiver:
                    new[:, :, k] += contribution(j)
            return new

        return hook

    hooks = [(name, record) for name in record_hooks] + [
        (name, patch(js, _base_hook(graph, name))) for name, js in receivers_by_hook(graph).items()
    ]
    return score_variants(task, graph, n_variants, hooks)


def circuit_metrics_within(
    task: PatchingTask,
    graph: ComputationGraph,
    kept: Sequence[Sequence[int]],
    candidates: Sequence[int],
    corrupted: Tensor | None = None,
    residuals: dict[str, Tensor] | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """`circuit_metric` for circuits inside a set of candidate edges (every edge outside `candidates` is ablated in
    every circuit), at a cost that grows with the number of candidates, not with the graph: each receiver reads the
    corrupted run's residual stream plus its kept edges' (output - corrupted output). The same numbers as
    `circuit_metrics_given` up to float rounding (tests/test_graph_discovery.py); what ACDC on a large graph's top
    edges needs. kept: per circuit, edge ids, each one of `candidates`. corrupted / residuals: `corrupted_senders`
    and `corrupted_residuals`, computed once by the caller (None: here)."""
    candidates = [int(e) for e in candidates]
    if not candidates:
        raise InterpError("candidates is empty: give at least one edge a circuit may keep.")
    position = {e: n for n, e in enumerate(candidates)}
    if len(position) != len(candidates):
        raise InterpError("candidates: an edge id is given twice; pass each candidate edge once.")
    bad = [e for e in candidates if not 0 <= e < len(graph)]
    if bad:
        raise InterpError(f"candidates: edge ids {bad[:5]} are out of range; the graph has edges 0..{len(graph) - 1}.")
    corrupted = corrupted_senders(task, graph) if corrupted is None else corrupted
    residuals = corrupted_residuals(task, graph) if residuals is None else residuals
    masks = torch.zeros((len(kept), len(candidates)), dtype=torch.bool)
    for c, ids in enumerate(kept):
        outside = [int(e) for e in ids if int(e) not in position]
        if outside:
            raise InterpError(
                f"kept[{c}]: edges {outside[:5]} are not among the candidates; a circuit keeps candidate edges only."
            )
        masks[c, [position[int(e)] for e in ids]] = True
    n_involved = len(set(graph.edges["upstream_index"].to_numpy()[candidates].tolist()))
    per_batch = max(
        1, memory_budget // (3 * max(1, n_involved) * corrupted[0].numel() * corrupted.element_size())
    )  # the involved senders' outputs, thrice, per variant
    values = np.empty(len(kept))
    with torch.no_grad():
        for s in range(0, len(kept), per_batch):
            values[s : s + per_batch] = (
                _sparse_metrics(task, graph, masks[s : s + per_batch], candidates, corrupted, residuals)
                .double()
                .cpu()
                .numpy()
            )
    return values
