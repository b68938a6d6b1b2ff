"""Edge scores: exact edge patching, EAP and EAP-IG, and their agreement with exact patching. (The metric of a
whole circuit: interp.graph.circuit_metrics and interp.graph.candidate_circuits, re-exported here.)

Convention (noising, as ACDC and EAP): the CLEAN prompts run, and patching edge u -> v replaces u's
contribution to v's input by u's output on the CORRUPTED prompts: v's input becomes
clean input + (corrupted_u - clean_u), every other input stays clean, and everything downstream of v
recomputes. An edge's `effect` is the metric after the patch minus the clean metric (the metric is the
task's, averaged over prompts); `metric` is the metric after the patch and `restoration`
(metric - corrupted) / (clean - corrupted), as in the patching tables (1: the edge does not matter).

- exact ("exact"): one forward per edge, batched: every edge into the inputs of layer L runs in one
  batch that starts at block L from the clean run's resid_pre (edges into the logits need no block).
- EAP ("eap", Syed et al. 2023): effect ~ (corrupted_u - clean_u) . d metric / d(input of v), the
  gradient at the clean run: one clean forward, one corrupted forward, one backward for every edge.
- EAP-IG ("eap-ig", Hanna et al. 2024): the gradient averaged over `steps` points on the straight line
  from the clean to the corrupted embeddings (left Riemann sum: alpha = 0, 1/steps, ...), so steps=1
  is EAP exactly.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import spearmanr
from torch import Tensor
from tqdm.auto import tqdm

from interp.attribution.gradients import GRADIENT_FREE_METRICS
from interp.errors import InterpError, did_you_mean
from interp.graph.candidate_circuits import circuit_metrics_within, corrupted_residuals  # noqa: F401 (re-exported)
from interp.graph.circuit_metrics import (  # noqa: F401 (the circuit metrics lived here: their old import path)
    circuit_metric,
    circuit_metrics_given,
    corrupted_senders,
    faithfulness_curve,
)
from interp.graph.graph import ComputationGraph, sender_deltas, split_inputs
from interp.graph.graph import task_graph as _graph
from interp.hooks import capture
from interp.metrics import restoration
from interp.patching.engine import DEFAULT_MEMORY_BUDGET, variants_per_batch
from interp.patching.task import PatchingTask, last_position_logits

METHODS = ("exact", "eap", "eap-ig")
DEFAULT_STEPS = 5
DEFAULT_VERIFY_TOP = 200
DEFAULT_K = 20


def _ids(graph: ComputationGraph, edges) -> list[int]:
    return list(range(len(graph))) if edges is None else graph.edge_ids(edges)


def scores_frame(
    task: PatchingTask, graph: ComputationGraph, ids: Sequence[int], effects: np.ndarray, method: str
) -> pd.DataFrame:
    """The edge table's rows `ids` (index kept: the edge's id in graph.edges) with metric, effect, restoration and method."""
    frame = graph.edges.iloc[list(ids)].copy()
    metric = task.clean_metric + np.asarray(effects, dtype=float)
    frame["metric"] = metric
    frame["effect"] = np.asarray(effects, dtype=float)
    frame["restoration"] = restoration(torch.as_tensor(metric), task.clean_metric, task.corrupted_metric).numpy()
    frame["method"] = method
    frame.attrs.update(
        metric=task.metric_name, clean_metric=task.clean_metric, corrupted_metric=task.corrupted_metric, method=method
    )
    return frame


# ---------------------------------------------------------------- exact


def _add_deltas(entries: list[tuple[int, int | None, int]], n_variants: int, n_prompts: int, delta: Tensor):
    """A hook adding delta[sender] to variant i's input (head slice `head` where the input is split per head)."""
    variant = torch.tensor([e[0] for e in entries], device=delta.device)
    sender = torch.tensor([e[2] for e in entries], device=delta.device)
    per_head = entries[0][1] is not None
    head = torch.tensor([e[1] for e in entries], device=delta.device) if per_head else None

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone(memory_format=torch.contiguous_format)  # q/k/v inputs are broadcast views
        view = act.view(n_variants, n_prompts, *act.shape[1:])
        if per_head:
            view.permute(0, 3, 1, 2, 4).index_put_((variant, head), delta[sender].to(act.dtype), accumulate=True)
        else:
            view.index_put_((variant,), delta[sender].to(act.dtype), accumulate=True)
        return act

    return hook


def _run_layer(
    task: PatchingTask,
    graph: ComputationGraph,
    layer: int,
    variants: list[tuple[int, int]],
    resid_pre: Tensor,
    delta: Tensor,
) -> Tensor:
    """Metric per variant (sender, receiver), every receiver at `layer`, as one batch from block `layer`."""
    model, n_variants, n_prompts = task.model, len(variants), task.n_prompts
    by_hook: dict[str, list[tuple[int, int | None, int]]] = defaultdict(list)
    for v, (i, j) in enumerate(variants):
        r = graph.receivers[j]
        by_hook[r.hook_name].append((v, r.head, i))
    resid = resid_pre.repeat(n_variants, 1, 1)
    mask = None if task.clean_mask is None else task.clean_mask.repeat(n_variants, 1)
    with (
        split_inputs(model),
        model.hooks(
            fwd_hooks=[(name, _add_deltas(entries, n_variants, n_prompts, delta)) for name, entries in by_hook.items()]
        ),
    ):
        for block in model.blocks[layer:]:
            resid = block(resid, attention_mask=mask)
    return task.score(last_position_logits(model, resid))


def _run_logits(task: PatchingTask, variants: list[tuple[int, int]], final: Tensor, delta: Tensor) -> Tensor:
    senders = torch.tensor([i for i, _ in variants], device=delta.device)
    resid = (final[None, :, -1:] + delta[senders][:, :, -1:]).flatten(0, 1)
    return task.score(last_position_logits(task.model, resid))


def patch_edges(
    task: PatchingTask,
    graph: ComputationGraph | None = None,
    edges=None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Exact edge patching: one variant per edge (u's contribution to v's input made corrupted, all else clean).

    edges: rows of graph.edges (a DataFrame) or (upstream, downstream) name pairs; None: every edge.
    Rows come back in the order given, with the edge table's columns plus metric, effect, restoration, method.
    """
    if memory_budget <= 0:
        raise InterpError(
            f"memory_budget={memory_budget}: must be a positive number of bytes (default {DEFAULT_MEMORY_BUDGET})."
        )
    graph = _graph(task, graph)
    ids = _ids(graph, edges)
    up = graph.edges["upstream_index"].to_numpy()[ids]
    down = graph.edges["downstream_index"].to_numpy()[ids]
    by_layer: dict[int | None, list[int]] = defaultdict(list)
    for k, j in enumerate(down):
        by_layer[graph.receivers[j].layer].append(k)
    final_hook = f"blocks.{graph.n_layers - 1}.hook_resid_post"
    resid_hooks = {f"blocks.{layer}.hook_resid_pre" for layer in by_layer if layer is not None}
    delta, clean = sender_deltas(task, graph, resid_hooks | {final_hook})
    per_batch = variants_per_batch(task, memory_budget)
    batches = [
        (layer, ks[s : s + per_batch])
        for layer, ks in sorted(by_layer.items(), key=lambda x: -1 if x[0] is None else x[0])
        for s in range(0, len(ks), per_batch)
    ]
    values = np.empty(len(ids))
    with torch.no_grad():
        for layer, ks in tqdm(
            batches, desc="edge patching", disable=not (progress if progress is not None else len(batches) > 8)
        ):
            variants = [(int(up[k]), int(down[k])) for k in ks]
            if layer is None:
                out = _run_logits(task, variants, clean[final_hook], delta)
            else:
                out = _run_layer(task, graph, layer, variants, clean[f"blocks.{layer}.hook_resid_pre"], delta)
            values[ks] = out.double().cpu().numpy()
    return scores_frame(task, graph, ids, values - task.clean_metric, "exact")


def patch_edges_loop(task: PatchingTask, graph: ComputationGraph | None = None, edges=None) -> pd.DataFrame:
    """The same numbers as `patch_edges` from the plain way: one whole forward of the model per edge, with
    one TransformerLens hook adding the edge's corrupted - clean output to its receiver's input. The
    benchmarks' baseline (what a per-edge loop costs); use `patch_edges`."""
    graph = _graph(task, graph)
    ids = _ids(graph, edges)
    delta, _ = sender_deltas(task, graph)
    values = np.empty(len(ids))
    model = task.model
    with torch.no_grad(), split_inputs(model):
        for k, e in enumerate(ids):
            i, j = int(graph.edges["upstream_index"].iat[e]), int(graph.edges["downstream_index"].iat[e])
            r = graph.receivers[j]
            hook = _add_deltas([(0, r.head, i)], 1, task.n_prompts, delta)
            logits = model.run_with_hooks(
                task.clean_tokens, attention_mask=task.clean_mask, fwd_hooks=[(r.hook_name, hook)]
            )
            values[k] = float(task.score(logits[:, -1:])[0])
    return scores_frame(task, graph, ids, values - task.clean_metric, "exact-loop")


# ---------------------------------------------------------------- gradients


def _check_differentiable(task: PatchingTask) -> None:
    if task.metric_name in GRADIENT_FREE_METRICS:
        raise InterpError(
            f"metric={task.metric_name!r} is piecewise constant, so its gradient is zero and EAP cannot estimate edges. "
            "Build the PatchingTask with metric='logit_diff' or 'answer_prob', or use method='exact'."
        )


def receiver_gradients(
    task: PatchingTask, graph: ComputationGraph, alphas: Sequence[float]
) -> Float[Tensor, "receivers batch pos d_model"]:
    """d metric / d(input of each receiver), averaged over runs whose embeddings are clean + alpha (corrupted - clean)."""
    _check_differentiable(task)
    if task.metric_name == "kl_div" and 0.0 in [float(a) for a in alphas]:
        raise InterpError(
            "metric='kl_div' is KL(clean || patched): zero with zero gradient at the clean run, where EAP takes its gradient, "
            "so EAP cannot rank edges. Use metric='logit_diff' or 'answer_prob', or method='exact'."
        )
    model = task.model
    with torch.no_grad():
        embed = {
            name: capture(model, tokens, ["blocks.0.hook_resid_pre"], attention_mask=mask, stop_at_layer=1)[
                "blocks.0.hook_resid_pre"
            ]
            for name, tokens, mask in (
                ("clean", task.clean_tokens, task.clean_mask),
                ("corrupted", task.corrupted_tokens, task.corrupted_mask),
            )
        }
    hook_names = sorted({r.hook_name for r in graph.receivers})
    total: dict[str, Tensor] = {}
    for alpha in alphas:
        store: dict[str, Tensor] = {}

        def interpolate(act: Tensor, hook, alpha=alpha) -> Tensor:
            return (embed["clean"] + alpha * (embed["corrupted"] - embed["clean"])).detach().requires_grad_(True)

        def keep(act: Tensor, hook) -> Tensor:
            store[hook.name] = act
            return act

        with split_inputs(model), torch.enable_grad():
            resid = model.run_with_hooks(
                task.clean_tokens,
                attention_mask=task.clean_mask,
                stop_at_layer=graph.n_layers,
                fwd_hooks=[("blocks.0.hook_resid_pre", interpolate)] + [(name, keep) for name in hook_names],
            )
            score = task.score(last_position_logits(model, resid))[0]
            if not score.requires_grad:
                raise InterpError(
                    f"metric {task.metric_name!r} does not depend differentiably on the logits; EAP needs a differentiable metric."
                )
            grads = torch.autograd.grad(score, [store[name] for name in hook_names], allow_unused=True)
        for name, g in zip(hook_names, grads):
            g = torch.zeros_like(store[name]) if g is None else g.detach()
            total[name] = total[name] + g if name in total else g
    rows = []
    for r in graph.receivers:
        g = total[r.hook_name] / len(alphas)
        rows.append(g if r.head is None else g[:, :, r.head])
    return torch.stack(rows)


def attribute_edges(
    task: PatchingTask,
    graph: ComputationGraph | None = None,
    edges=None,
    *,
    method: str = "eap",
    steps: int = DEFAULT_STEPS,
) -> pd.DataFrame:
    """EAP (method='eap') or EAP-IG (method='eap-ig', `steps` gradient points) estimates of every edge's effect."""
    if method not in ("eap", "eap-ig"):
        raise InterpError(
            f"method={method!r} is not an edge attribution method.{did_you_mean(str(method), METHODS)} Known: 'eap', 'eap-ig' (exact: patch_edges)."
        )
    if method == "eap-ig" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise InterpError(f"steps={steps!r}: EAP-IG needs a whole number of gradient points >= 1 (steps=1 is EAP).")
    graph = _graph(task, graph)
    ids = _ids(graph, edges)
    delta, _ = sender_deltas(task, graph)
    alphas = [0.0] if method == "eap" else [k / steps for k in range(steps)]
    grads = receiver_gradients(task, graph, alphas)
    up = torch.as_tensor(graph.edges["upstream_index"].to_numpy()[ids])
    down = torch.as_tensor(graph.edges["downstream_index"].to_numpy()[ids])
    matrix = torch.einsum("ubpd,vbpd->uv", delta.double(), grads.double())
    gap = abs(task.clean_metric - task.corrupted_metric)
    if not float(matrix.abs().max()) > 1e-6 * max(gap, 1e-6):
        raise InterpError(
            f"metric {task.metric_name!r}: its gradient is zero at every receiver (the metric is flat there; the clean - corrupted gap is {gap:.3g}), "
            "so EAP cannot rank edges. Use metric='logit_diff' or 'answer_prob', or method='exact'."
        )
    frame = scores_frame(task, graph, ids, matrix[up, down].numpy(), method)
    if method == "eap-ig":
        frame.attrs.update(steps=steps)
    return frame


# ---------------------------------------------------------------- agreement


def agreement(approximate: pd.DataFrame, exact: pd.DataFrame, k: int = DEFAULT_K) -> dict:
    """How well `approximate` ranks the edges both tables score, judged by `exact`'s effects.

    spearman: rank correlation of the signed effects; recall_at_{k}: the share of the k edges with the
    largest |exact effect| that are among the k with the largest |approximate effect| (k shrinks to the
    number of edges when fewer); n_edges: how many edges both score.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InterpError(f"k={k!r}: recall@k needs a whole number k >= 1.")
    for name, frame in (("approximate", approximate), ("exact", exact)):
        if not {"upstream", "downstream", "effect"} <= set(frame.columns):
            raise InterpError(f"{name}: needs columns upstream, downstream, effect (an edge-scores table).")
    merged = approximate[["upstream", "downstream", "effect"]].merge(
        exact[["upstream", "downstream", "effect"]], on=["upstream", "downstream"], suffixes=("_approx", "_exact")
    )
    if len(merged) < 2:
        raise InterpError(
            f"approximate and exact share {len(merged)} edge(s); agreement needs at least 2 edges scored by both."
        )
    a, e = merged["effect_approx"].to_numpy(), merged["effect_exact"].to_numpy()
    rho = float(spearmanr(a, e).statistic) if np.ptp(a) > 0 and np.ptp(e) > 0 else float("nan")
    n = min(k, len(merged))
    top_exact = set(np.argsort(-np.abs(e), kind="stable")[:n])
    top_approx = set(np.argsort(-np.abs(a), kind="stable")[:n])
    return {
        "spearman": rho,
        f"recall_at_{k}": len(top_exact & top_approx) / n,
        "n_edges": int(len(merged)),
        "k": int(n),
    }


def score_edges(
    task: PatchingTask,
    method: str = "eap",
    graph: ComputationGraph | None = None,
    *,
    steps: int = DEFAULT_STEPS,
    verify_top: int | None = DEFAULT_VERIFY_TOP,
    k: int = DEFAULT_K,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> pd.DataFrame:
    """Every edge's score by `method`; an approximate method's top `verify_top` edges (by |effect|) are also
    patched exactly: column `exact_effect` (NaN where not verified) and attrs['agreement'] (see `agreement`).
    verify_top=None verifies every edge."""
    if method not in METHODS:
        raise InterpError(
            f"method={method!r} is not a circuit-discovery method.{did_you_mean(str(method), METHODS)} Known: {', '.join(METHODS)}."
        )
    if verify_top is not None and (isinstance(verify_top, bool) or not isinstance(verify_top, int) or verify_top < 2):
        raise InterpError(
            f"verify_top={verify_top!r}: the number of top edges to patch exactly must be a whole number >= 2 (None: every edge)."
        )
    graph = _graph(task, graph)
    if method == "exact":
        return patch_edges(task, graph, memory_budget=memory_budget)
    frame = attribute_edges(task, graph, method=method, steps=steps)
    top = (
        frame
        if verify_top is None
        else frame.loc[frame["effect"].abs().sort_values(ascending=False, kind="stable").index[:verify_top]]
    )
    exact = patch_edges(task, graph, top, memory_budget=memory_budget)
    frame["exact_effect"] = np.nan
    frame.loc[exact.index, "exact_effect"] = exact["effect"].to_numpy()
    frame.attrs["agreement"] = agreement(top, exact, k)
    frame.attrs["verified"] = len(exact)
    return frame
