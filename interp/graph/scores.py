"""Edge scores: exact edge patching, EAP and EAP-IG, and their agreement with exact patching.

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
from jaxtyping import Bool, Float
from scipy.stats import spearmanr
from torch import Tensor
from tqdm.auto import tqdm

from interp.attribution.gradients import GRADIENT_FREE_METRICS
from interp.errors import InterpError, did_you_mean
from interp.graph.graph import (
    ComputationGraph,
    sender_hooks,
    sender_outputs,
    split_inputs,
    stack_senders,
)
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


def _deltas(
    task: PatchingTask, graph: ComputationGraph, extra_clean_hooks: Sequence[str] = ()
) -> tuple[Tensor, dict[str, Tensor]]:
    """corrupted - clean output of every sender, and the clean run's activations at `extra_clean_hooks`."""
    with torch.no_grad():
        clean = capture(
            task.model,
            task.clean_tokens,
            set(sender_hooks(graph)) | set(extra_clean_hooks),
            attention_mask=task.clean_mask,
            stop_at_layer=graph.n_layers,
        )
        delta = sender_outputs(graph, task.corrupted_tokens, task.corrupted_mask) - stack_senders(graph, clean)
    return delta, clean


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
    delta, clean = _deltas(task, graph, resid_hooks | {final_hook})
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
    delta, _ = _deltas(task, graph)
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
    delta, _ = _deltas(task, graph)
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


# ---------------------------------------------------------------- circuits: many edges patched at once


def _sender_slices(graph: ComputationGraph) -> dict[str, tuple[int, int]]:
    """Per sender hook, the range of sender indices it produces (embedding, a layer's heads, a layer's MLP)."""
    slices, i = {"blocks.0.hook_resid_pre": (0, 1)}, 1
    for layer in range(graph.n_layers):
        slices[f"blocks.{layer}.attn.hook_z"] = (i, i + graph.n_heads)
        slices[f"blocks.{layer}.hook_mlp_out"] = (i + graph.n_heads, i + graph.n_heads + 1)
        i += graph.n_heads + 1
    return slices


def _circuit_metrics(task: PatchingTask, graph: ComputationGraph, ablated: Tensor, corrupted: Tensor) -> Tensor:
    """Metric per variant when, in variant c, every edge (u, v) with ablated[c, v, u] carries corrupted_u instead
    of u's output in that run (all the variant's ablations at once; everything recomputes)."""
    model, n_variants, n_prompts = task.model, ablated.shape[0], task.n_prompts
    current = torch.zeros((len(graph.senders), n_variants * n_prompts, *corrupted.shape[2:]), dtype=corrupted.dtype)
    corrupted_rep = corrupted.repeat(1, n_variants, 1, 1)
    weight = ablated.to(corrupted.dtype)
    slices = _sender_slices(graph)

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

    by_hook: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(graph.receivers):
        by_hook[r.hook_name].append(j)
    hooks = [(name, record) for name in slices] + [(name, patch(js)) for name, js in by_hook.items()]
    tokens = task.clean_tokens.repeat(n_variants, 1)
    mask = None if task.clean_mask is None else task.clean_mask.repeat(n_variants, 1)
    # the logits' input is the last block's output: its hook comes after that block's MLP output was recorded
    with split_inputs(model):
        resid = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks, stop_at_layer=graph.n_layers)
    return task.score(last_position_logits(model, resid))


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
    delta, clean = _deltas(task, graph)
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


# ---------------------------------------------------------------- circuits within a small candidate set


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
    slices = _sender_slices(graph)
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

    by_hook: dict[str, list[int]] = defaultdict(list)
    for j, r in enumerate(graph.receivers):
        by_hook[r.hook_name].append(j)
    hooks = [(name, record) for name in record_hooks] + [
        (name, patch(js, _base_hook(graph, name))) for name, js in by_hook.items()
    ]
    tokens = task.clean_tokens.repeat(n_variants, 1)
    mask = None if task.clean_mask is None else task.clean_mask.repeat(n_variants, 1)
    with split_inputs(model):
        resid = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=hooks, stop_at_layer=graph.n_layers)
    return task.score(last_position_logits(model, resid))


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
