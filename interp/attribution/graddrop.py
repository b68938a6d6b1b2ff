"""AtP*'s second half for node scores: GradDrop (Kramar et al. 2024, arXiv 2403.00745), exact node
patching to check it, and a subsampling bound on the effects of the nodes left unverified.

Nodes are the senders of `interp.graph.ComputationGraph` (the embeddings, every query head's output,
every MLP's output). Convention (noising, as the paper and interp.graph): the CLEAN prompts run and
node n's output is replaced by its output on the CORRUPTED prompts in every input that reads it; the
node's `effect` is the metric after the patch minus the clean metric.

- AtP ("atp"): effect ~ (corrupted_n - clean_n) . d metric / d n at the clean run (one backward).
- GradDrop ("atp+graddrop"): a node's direct and indirect effects can cancel in the gradient (the sum
  is near zero) although the patch moves the metric, because the cancellation is only first-order.
  For each layer l the backward pass is run again with the gradient through layer l's residual
  contributions (its attention and MLP outputs) dropped, giving AtP_l(n); the score is
  (1 / (L - 1)) * sum_l |AtP_l(n)|. For a node of layer l_n the term l = l_n is zero (its own output is
  dropped), so L - 1 terms remain and a node without cancellation scores |AtP(n)|. The embeddings sit
  below every layer: all L terms count for them. The score is a magnitude (a ranking), not a signed
  estimate; the table keeps plain AtP's signed `effect` beside it. L extra backward passes.
- `false_negative_bound`: verify the top nodes by score with exact patching; patch random subsets of
  the rest together. Assuming no cancellation inside a subset (the effects of its nodes add and share a
  sign), |c(n)| <= |c(S)| for every S containing n, so bound(n) = min over sampled S that contain n of
  |c(S)|, and the largest bound is a bound on the largest effect left unverified. Subsets are drawn
  within groups of nodes that share the sign of their AtP estimate, their kind and their layer: nodes
  of one layer do not read each other, while patching a node together with one that reads it does not
  add (the reader's corrupted output already carries the first node's effect), which breaks the
  assumption even for small patches. The paper's own text was not at hand (PAPERS.md has no AtP*
  section); this is our reading of its subsampling diagnostic, and the tests measure where it holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from interp.attribution.gradients import GRADIENT_FREE_METRICS
from interp.errors import InterpError
from interp.graph.graph import ComputationGraph
from interp.graph.graph import task_graph as _graph
from interp.hooks import capture
from interp.metrics import restoration
from interp.patching.engine import DEFAULT_MEMORY_BUDGET, variants_per_batch
from interp.patching.task import PatchingTask, last_position_logits

NODE_METHODS = ("atp", "atp+graddrop")
NODE_COLUMNS = ["node", "component", "layer", "head"]


def node_hooks(graph: ComputationGraph) -> list[str]:
    """The hook each kind of node is read and patched at: embeddings, per-layer z (heads), MLP outputs."""
    return ["blocks.0.hook_resid_pre"] + [
        f"blocks.{layer}.{name}" for layer in range(graph.n_layers) for name in ("attn.hook_z", "hook_mlp_out")
    ]


def _node_hook(graph: ComputationGraph, i: int) -> tuple[str, int | None]:
    s = graph.senders[i]
    if s.component == "embed":
        return "blocks.0.hook_resid_pre", None
    if s.component == "head":
        return f"blocks.{s.layer}.attn.hook_z", s.head
    return f"blocks.{s.layer}.hook_mlp_out", None


def _node_ids(graph: ComputationGraph, nodes) -> list[int]:
    if nodes is None:
        return list(range(len(graph.senders)))
    if isinstance(nodes, str):
        nodes = [nodes]
    ids = [graph.sender_index(n) if isinstance(n, str) else int(n) for n in nodes]
    bad = [i for i in ids if not 0 <= i < len(graph.senders)]
    if bad:
        raise InterpError(f"nodes: ids {bad[:5]} are out of range; the graph has nodes 0..{len(graph.senders) - 1}.")
    if not ids:
        raise InterpError("nodes is empty: name at least one node ('embed', 'a{L}.h{H}', 'm{L}').")
    return ids


def nodes_frame(
    task: PatchingTask, graph: ComputationGraph, ids: Sequence[int], effects: np.ndarray, method: str
) -> pd.DataFrame:
    """One row per node: node, component, layer, head, metric, effect, restoration, method."""
    senders = [graph.senders[i] for i in ids]
    effects = np.asarray(effects, dtype=float)
    metric = task.clean_metric + effects
    frame = pd.DataFrame(
        {
            "node": [s.name for s in senders],
            "component": [s.component for s in senders],
            "layer": pd.array([s.layer for s in senders], dtype="Int64"),
            "head": pd.array([s.head for s in senders], dtype="Int64"),
            "metric": metric,
            "effect": effects,
            "restoration": restoration(torch.as_tensor(metric), task.clean_metric, task.corrupted_metric).numpy(),
            "method": method,
        },
        index=pd.Index(list(ids), name="node_id"),
    )
    frame.attrs.update(
        metric=task.metric_name, clean_metric=task.clean_metric, corrupted_metric=task.corrupted_metric, method=method
    )
    return frame


# ---------------------------------------------------------------- exact


def patch_node_sets(
    task: PatchingTask,
    graph: ComputationGraph | None = None,
    node_sets: Sequence[Sequence] = (),
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """The metric when every node of a set carries its corrupted output (the clean run otherwise), one per set."""
    graph = _graph(task, graph)
    if len(node_sets) == 0:
        raise InterpError("node_sets is empty: pass at least one set of nodes to patch together.")
    if memory_budget <= 0:
        raise InterpError(f"memory_budget={memory_budget}: must be a positive number of bytes.")
    sets = [_node_ids(graph, s) for s in node_sets]
    model, n = task.model, task.n_prompts
    hooks = node_hooks(graph)
    first = [min(-1 if graph.senders[i].layer is None else graph.senders[i].layer for i in ids) for ids in sets]
    resid_hooks = {f"blocks.{layer}.hook_resid_pre" for layer in set(first) if layer >= 0}
    with torch.no_grad():
        corrupted = capture(
            model,
            task.corrupted_tokens,
            hooks,
            attention_mask=task.corrupted_mask,
            stop_at_layer=graph.n_layers,
        )
        clean = capture(
            model, task.clean_tokens, resid_hooks, attention_mask=task.clean_mask, stop_at_layer=graph.n_layers
        )
    per_batch = variants_per_batch(task, memory_budget)
    values = np.empty(len(sets))
    by_start: dict[int, list[int]] = defaultdict(list)
    for k, layer in enumerate(first):
        by_start[layer].append(k)
    batches = [
        (layer, ks[s : s + per_batch]) for layer, ks in sorted(by_start.items()) for s in range(0, len(ks), per_batch)
    ]
    for layer, ks in batches:
        by_hook: dict[str, list[tuple[int, int | None]]] = defaultdict(list)
        for v, k in enumerate(ks):
            for i in sets[k]:
                name, head = _node_hook(graph, i)
                by_hook[name].append((v, head))

        def patch(entries, name):
            def hook(act: Tensor, hook) -> Tensor:
                for v, head in entries:
                    rows = slice(v * n, (v + 1) * n)
                    if head is None:
                        act[rows] = corrupted[name]
                    else:
                        act[rows, :, head] = corrupted[name][:, :, head]
                return act

            return hook

        mask = None if task.clean_mask is None else task.clean_mask.repeat(len(ks), 1)
        fwd = [(name, patch(entries, name)) for name, entries in by_hook.items()]
        with torch.no_grad():
            if layer < 0:  # the embeddings are patched: the whole model runs
                resid = model.run_with_hooks(
                    task.clean_tokens.repeat(len(ks), 1),
                    attention_mask=mask,
                    stop_at_layer=graph.n_layers,
                    fwd_hooks=fwd,
                )
            else:  # every earlier layer is as in the clean run: start at this layer from its clean input
                resid = clean[f"blocks.{layer}.hook_resid_pre"].repeat(len(ks), 1, 1)
                with model.hooks(fwd_hooks=fwd):
                    for block in model.blocks[layer:]:
                        resid = block(resid, attention_mask=mask)
            values[ks] = task.score(last_position_logits(model, resid)).double().cpu().numpy()
    return values


def patch_nodes(
    task: PatchingTask, graph: ComputationGraph | None = None, nodes=None, *, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> pd.DataFrame:
    """Exact node patching: each node's output made corrupted in the clean run (nodes: names or ids; None: all)."""
    graph = _graph(task, graph)
    ids = _node_ids(graph, nodes)
    values = patch_node_sets(task, graph, [[i] for i in ids], memory_budget=memory_budget)
    return nodes_frame(task, graph, ids, values - task.clean_metric, "exact")


# ---------------------------------------------------------------- AtP and GradDrop


def _atp_per_node(task: PatchingTask, graph: ComputationGraph, dropped_layer: int | None, deltas) -> np.ndarray:
    """AtP estimate of every node with the gradient through `dropped_layer`'s attention and MLP outputs dropped."""
    model = task.model
    hooks = node_hooks(graph)
    store: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> Tensor:
        if not act.requires_grad:
            act = act.detach().requires_grad_(True)
        store[hook.name] = act
        return act

    def drop(act: Tensor, hook) -> Tensor:
        return act.detach()  # the forward value unchanged, no gradient through this layer's contribution

    fwd = [(name, keep) for name in hooks]
    if dropped_layer is not None:
        fwd += [(f"blocks.{dropped_layer}.hook_attn_out", drop), (f"blocks.{dropped_layer}.hook_mlp_out", drop)]
    with torch.enable_grad():
        resid = model.run_with_hooks(
            task.clean_tokens, attention_mask=task.clean_mask, stop_at_layer=graph.n_layers, fwd_hooks=fwd
        )
        score = task.score(last_position_logits(model, resid))[0]
        if not score.requires_grad:
            raise InterpError(f"metric {task.metric_name!r} does not depend differentiably on the logits.")
        grads = torch.autograd.grad(score, [store[name] for name in hooks], allow_unused=True)
    grad = {name: (torch.zeros_like(store[name]) if g is None else g.detach()) for name, g in zip(hooks, grads)}
    out = np.empty(len(graph.senders))
    for i in range(len(graph.senders)):
        name, head = _node_hook(graph, i)
        d, g = deltas[name].double(), grad[name].double()
        out[i] = float((d[:, :, head] * g[:, :, head]).sum() if head is not None else (d * g).sum())
    return out


def attribute_nodes(
    task: PatchingTask, graph: ComputationGraph | None = None, *, method: str = "atp+graddrop"
) -> pd.DataFrame:
    """AtP ('atp') or AtP* GradDrop ('atp+graddrop') scores of every node.

    Columns as `patch_nodes` (effect: plain AtP's signed estimate) plus `score`: the ranking magnitude
    (|AtP| for 'atp'; the GradDrop mean of |AtP_l| for 'atp+graddrop') and, for GradDrop, `graddrop_l{l}`
    (the signed AtP_l per dropped layer).
    """
    if method not in NODE_METHODS:
        raise InterpError(f"method={method!r} is not a node attribution method. Known: {', '.join(NODE_METHODS)}.")
    if task.metric_name in GRADIENT_FREE_METRICS:
        raise InterpError(
            f"metric={task.metric_name!r} is piecewise constant (zero gradient); use metric='logit_diff' or 'answer_prob', or patch_nodes."
        )
    graph = _graph(task, graph)
    hooks = node_hooks(graph)
    with torch.no_grad():
        clean = capture(
            task.model, task.clean_tokens, hooks, attention_mask=task.clean_mask, stop_at_layer=graph.n_layers
        )
        corrupted = capture(
            task.model, task.corrupted_tokens, hooks, attention_mask=task.corrupted_mask, stop_at_layer=graph.n_layers
        )
    deltas = {name: corrupted[name] - clean[name] for name in hooks}
    atp = _atp_per_node(task, graph, None, deltas)
    frame = nodes_frame(task, graph, range(len(graph.senders)), atp, method)
    if method == "atp":
        frame["score"] = np.abs(atp)
        return frame
    if graph.n_layers < 2:
        raise InterpError("GradDrop needs a model with at least 2 layers (it averages over L - 1 dropped layers).")
    per_layer = np.stack([_atp_per_node(task, graph, layer, deltas) for layer in range(graph.n_layers)], axis=1)
    frame["score"] = np.abs(per_layer).sum(1) / (graph.n_layers - 1)
    for layer in range(graph.n_layers):
        frame[f"graddrop_l{layer}"] = per_layer[:, layer]
    return frame


# ---------------------------------------------------------------- the false-negative bound


def false_negative_bound(
    task: PatchingTask,
    scores: pd.DataFrame,
    graph: ComputationGraph | None = None,
    *,
    verify_top: int = 10,
    n_subsets: int = 32,
    include_probability: float = 0.25,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> pd.DataFrame:
    """Verify the top `verify_top` nodes of `scores` (by `score`) exactly and bound the effect of every other node.

    The unverified nodes are split by the sign of their AtP estimate (`effect`), kind and layer; within each part,
    `n_subsets` random subsets (each node in with `include_probability`; a node drawn by none gets a
    subset of its own) are patched together. Returns `scores` with `verified`, `exact_effect` (verified
    nodes), `bound` (unverified nodes: min over subsets containing the node of |metric change|) and
    attrs['max_bound'] (the bound on the largest unverified effect), attrs['n_patches'] and attrs['subsets'] (the
    node names of each subset patched together, so that every bound can be checked).
    """
    graph = _graph(task, graph)
    for name, value in (("verify_top", verify_top), ("n_subsets", n_subsets)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InterpError(f"{name}={value!r}: must be a whole number >= 0.")
    if not 0.0 < include_probability <= 1.0:
        raise InterpError(f"include_probability={include_probability!r}: must lie in (0, 1].")
    if not {"node", "score", "effect"} <= set(scores.columns):
        raise InterpError("scores: needs columns node, score, effect (a table from attribute_nodes).")
    out = scores.copy()
    order = out["score"].sort_values(ascending=False, kind="stable").index
    top, rest = list(order[:verify_top]), list(order[verify_top:])
    out["verified"] = out.index.isin(top)
    out["exact_effect"] = np.nan
    if top:
        exact = patch_node_sets(task, graph, [[graph.sender_index(n)] for n in out.loc[top, "node"]])
        out.loc[top, "exact_effect"] = exact - task.clean_metric
    out["bound"] = np.nan
    rng = np.random.default_rng(seed)
    subsets: list[list[str]] = []
    parts: dict[tuple, list] = defaultdict(list)
    for i in rest:
        sender = graph.senders[graph.sender_index(out.at[i, "node"])]
        parts[(np.sign(out.at[i, "effect"]) or 1.0, sender.component, sender.layer)].append(i)
    for part in parts.values():
        drawn = [[i for i in part if rng.random() < include_probability] for _ in range(n_subsets)]
        drawn = [s for s in drawn if s]
        covered = {i for s in drawn for i in s}
        drawn += [[i] for i in part if i not in covered]
        subsets += drawn
    if subsets:
        metrics = patch_node_sets(
            task,
            graph,
            [[graph.sender_index(out.at[i, "node"]) for i in s] for s in subsets],
            memory_budget=memory_budget,
        )
        change = np.abs(metrics - task.clean_metric)
        best: dict = {}
        for s, c in zip(subsets, change):
            for i in s:
                best[i] = min(best.get(i, np.inf), float(c))
        out.loc[list(best), "bound"] = pd.Series(best)
    out.attrs.update(
        scores.attrs,
        max_bound=float(out["bound"].max()) if out["bound"].notna().any() else 0.0,
        n_patches=len(top) + len(subsets),
        verify_top=verify_top,
        subsets=[[str(out.at[i, "node"]) for i in s] for s in subsets],
    )
    return out
