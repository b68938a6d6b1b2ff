"""SAE-feature nodes: one node of the graph (an MLP's output, or the embeddings) replaced by the latents of an SAE
plus one error node, with EAP edge scores from each latent and from the error to every receiver downstream.

Sites an SAE may replace: an MLP node 'm{L}' (blocks.L.hook_mlp_out), the embeddings 'embed'
(blocks.0.hook_resid_pre) and a whole attention layer 'a{L}' (blocks.L.hook_attn_out: the sum of layer L's heads
and b_O, so its latents replace all of that layer's head nodes together; an SAE per head is not supported). A
residual-stream SAE is no node of this graph (the stream is the sum of every upstream node).

At the site, output = sum_i f_i W_dec[i] + b_dec + error (error = output - SAE reconstruction, so the split is
exact). b_dec is the same in every run, so it is no node (as b_O is none for heads). Latent i's change between
the runs is (f_i(corrupted) - f_i(clean)) W_dec[i] and the error's is error(corrupted) - error(clean); these add up
to the node's change, so the latents' and the error's EAP scores into a receiver add up to the node's own EAP
score there (EAP is linear in the sender's change).

The SAE is any object with `encode(x)` ([..., d_in] -> [..., d_sae]), `W_dec` [d_sae, d_in] and `b_dec` [d_in]:
the toolkit's sae/ SAEs and SAELens SAEs (`sae_lens.SAE.load_from_disk`) both are. Only latents whose activation
differs between the runs somewhere get rows (the others' scores are exactly zero).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError
from interp.graph.graph import ComputationGraph
from interp.graph.scores import _graph, receiver_gradients
from interp.hooks import capture
from interp.patching.engine import DEFAULT_MEMORY_BUDGET, variants_per_batch
from interp.patching.task import PatchingTask, last_position_logits

SITE_HOOKS = {"embed": "blocks.0.hook_resid_pre"}


def site_hook(graph: ComputationGraph, node: str) -> str:
    """The hook whose activation is `node`'s output (an MLP node 'm{L}', 'embed', or a whole attention layer 'a{L}')."""
    if isinstance(node, str) and re.fullmatch(r"a\d+", node):
        layer = int(node[1:])
        if not 0 <= layer < graph.n_layers:
            raise InterpError(
                f"node={node!r}: attention layer {layer} is out of range; this model has layers 0..{graph.n_layers - 1}."
            )
        return f"blocks.{layer}.hook_attn_out"
    i = graph.sender_index(node)  # unknown names raise here
    sender = graph.senders[i]
    if sender.component == "mlp":
        return f"blocks.{sender.layer}.hook_mlp_out"
    if sender.component == "embed":
        return SITE_HOOKS["embed"]
    raise InterpError(
        f"node={node!r}: SAE nodes replace an MLP node ('m{{L}}'), 'embed' or a whole attention layer ('a{{L}}', an SAE on "
        "blocks.L.hook_attn_out); one head's output is not one activation an SAE reads."
    )


def _check_sae(sae, d_model: int, node: str, hook: str) -> None:
    for attribute in ("encode", "W_dec", "b_dec"):
        if not hasattr(sae, attribute):
            raise InterpError(
                f"sae: has no {attribute!r}; pass an SAE with encode(x), W_dec [d_sae, d_in] and b_dec (sae/ SAEs, SAELens SAEs)."
            )
    d_in = int(sae.W_dec.shape[-1])
    if d_in != d_model:
        raise InterpError(
            f"sae: its d_in is {d_in} but node {node!r} writes {d_model} values per token ({hook}); use an SAE trained on {hook}."
        )


def node_of_hook(graph: ComputationGraph, hook_name: str) -> str:
    """The graph node an SAE trained on `hook_name` replaces: 'm{L}' (blocks.L.hook_mlp_out), 'a{L}'
    (blocks.L.hook_attn_out) or 'embed' (blocks.0.hook_resid_pre)."""
    match = re.fullmatch(r"blocks\.(\d+)\.(hook_mlp_out|hook_attn_out|hook_resid_pre)", str(hook_name))
    if match is None or (match.group(2) == "hook_resid_pre" and match.group(1) != "0"):
        raise InterpError(
            f"sae: it reads {hook_name!r}, which is no node of the graph; SAE nodes replace blocks.L.hook_mlp_out (an MLP), "
            "blocks.L.hook_attn_out (an attention layer) or blocks.0.hook_resid_pre (the embeddings). A residual-stream "
            "SAE at a later layer sums every upstream node, so it has no place in the graph."
        )
    layer, kind = int(match.group(1)), match.group(2)
    if not 0 <= layer < graph.n_layers:
        raise InterpError(f"sae: it reads {hook_name!r}, but this model has layers 0..{graph.n_layers - 1}.")
    return "embed" if kind == "hook_resid_pre" else f"{'m' if kind == 'hook_mlp_out' else 'a'}{layer}"


def check_sae_site(graph: ComputationGraph, sae, hook_name: str) -> str:
    """The node an SAE read at `hook_name` replaces, after checking that its d_in fits that node's output."""
    node = node_of_hook(graph, hook_name)
    _check_sae(sae, graph.model.cfg.d_model, node, hook_name)
    return node


def site_sender(graph: ComputationGraph, node: str) -> int:
    """The index of the (first) sender whose output the site holds: the node itself, or head 0 of an attention layer."""
    return graph.sender_index(f"{node}.h0" if re.fullmatch(r"a\d+", node) else node)


def site_layer(graph: ComputationGraph, node: str) -> int:
    """The first block that reads nothing but the clean run before the site (0 for the embeddings)."""
    layer = graph.senders[site_sender(graph, node)].layer
    return 0 if layer is None else int(layer)


def downstream_receivers(graph: ComputationGraph, node: str) -> list[int]:
    """The receivers that read the site's output through the residual stream."""
    i = site_sender(graph, node)
    return [j for j, r in enumerate(graph.receivers) if r.n_upstream > i]


def sae_split(
    sae, acts: Float[Tensor, "batch pos d_model"]
) -> tuple[Float[Tensor, "batch pos d_sae"], Float[Tensor, "batch pos d_model"]]:
    """(latent activations, error) of `acts`: acts = f @ W_dec + b_dec + error exactly."""
    with torch.no_grad():
        dtype = sae.W_dec.dtype
        f = sae.encode(acts.to(dtype))
        error = acts.to(dtype) - (f @ sae.W_dec + sae.b_dec)
    return f, error


def sae_edge_scores(task: PatchingTask, node: str, sae, graph: ComputationGraph | None = None) -> pd.DataFrame:
    """EAP scores of every edge from `node`'s SAE latents and its error node to the receivers downstream of it.

    Rows: upstream ("{node}.f{i}" or "{node}.err"), downstream (receiver), latent (i, or -1 for the error),
    effect (the EAP estimate), method "eap". attrs: the site's hook and how many latents changed.
    """
    graph = _graph(task, graph)
    hook = site_hook(graph, node)
    _check_sae(sae, task.model.cfg.d_model, node, hook)
    model = task.model
    with torch.no_grad():
        clean = capture(model, task.clean_tokens, [hook], attention_mask=task.clean_mask, stop_at_layer=graph.n_layers)
        corrupted = capture(
            model, task.corrupted_tokens, [hook], attention_mask=task.corrupted_mask, stop_at_layer=graph.n_layers
        )
    f_clean, e_clean = sae_split(sae, clean[hook])
    f_corrupted, e_corrupted = sae_split(sae, corrupted[hook])
    df = (f_corrupted - f_clean).double()  # [batch, pos, d_sae]
    d_error = (e_corrupted - e_clean).double()
    changed = torch.nonzero(df.abs().amax((0, 1)) > 0).flatten()
    downstream = downstream_receivers(graph, node)
    grads = receiver_gradients(task, graph, [0.0])[downstream].double()  # [receivers, batch, pos, d_model]
    w = sae.W_dec.detach().double()[changed]  # [changed, d_model]
    latent_scores = torch.einsum("bpc,vbpc->cv", df[..., changed], torch.einsum("vbpd,cd->vbpc", grads, w))
    error_scores = torch.einsum("bpd,vbpd->v", d_error, grads)
    names = [graph.receivers[j].name for j in downstream]
    rows = [
        (f"{node}.f{int(c)}", v, int(c), float(latent_scores[k, n]))
        for k, c in enumerate(changed)
        for n, v in enumerate(names)
    ]
    rows += [(f"{node}.err", v, -1, float(error_scores[n])) for n, v in enumerate(names)]
    frame = pd.DataFrame(rows, columns=["upstream", "downstream", "latent", "effect"])
    frame["method"] = "eap"
    frame.attrs.update(hook=hook, node=node, n_changed_latents=len(changed), d_sae=int(sae.W_dec.shape[0]))
    return frame


def latent_node_scores(frame: pd.DataFrame, top: int | None = None) -> pd.DataFrame:
    """Per latent (and the error), the sum of |EAP| over its outgoing edges, largest first (a ranking of features)."""
    out = (
        frame.assign(abs_effect=frame["effect"].abs())
        .groupby(["upstream", "latent"], as_index=False)["abs_effect"]
        .sum()
        .sort_values("abs_effect", ascending=False, kind="stable")
    )
    return out if top is None else out.head(top)


def check_decomposition(task: PatchingTask, node: str, sae, graph: ComputationGraph | None = None) -> float:
    """max |sum_i f_i W_dec[i] + b_dec + error - output| over both runs (0 up to float error: the split is exact)."""
    graph = _graph(task, graph)
    hook = site_hook(graph, node)
    _check_sae(sae, task.model.cfg.d_model, node, hook)
    worst = 0.0
    for tokens, mask in ((task.clean_tokens, task.clean_mask), (task.corrupted_tokens, task.corrupted_mask)):
        acts = capture(task.model, tokens, [hook], attention_mask=mask, stop_at_layer=graph.n_layers)[hook]
        f, error = sae_split(sae, acts)
        with torch.no_grad():
            total = f @ sae.W_dec + sae.b_dec + error
        worst = max(worst, float((total - acts.to(total.dtype)).abs().max()))
    return float(np.float64(worst))


def _site_changes(task: PatchingTask, graph: ComputationGraph, node: str, sae):
    """(hook, clean f, corrupted - clean f, corrupted - clean error) at the site, both runs captured once."""
    hook = site_hook(graph, node)
    _check_sae(sae, task.model.cfg.d_model, node, hook)
    with torch.no_grad():
        clean = capture(
            task.model, task.clean_tokens, [hook], attention_mask=task.clean_mask, stop_at_layer=graph.n_layers
        )
        corrupted = capture(
            task.model, task.corrupted_tokens, [hook], attention_mask=task.corrupted_mask, stop_at_layer=graph.n_layers
        )
    f_clean, e_clean = sae_split(sae, clean[hook])
    f_corrupted, e_corrupted = sae_split(sae, corrupted[hook])
    return hook, f_clean, f_corrupted - f_clean, e_corrupted - e_clean


def patch_site_changes(
    task: PatchingTask,
    graph: ComputationGraph,
    node: str,
    changes: Float[Tensor, "variants batch pos d_model"],
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """The metric of the clean run with the site's output plus changes[v], one value per variant; every block from the
    site's on recomputes (earlier blocks are as in the clean run, so each batch starts at the site's layer)."""
    hook, layer, model = site_hook(graph, node), site_layer(graph, node), task.model
    with torch.no_grad():
        start = capture(
            model,
            task.clean_tokens,
            [f"blocks.{layer}.hook_resid_pre"],
            attention_mask=task.clean_mask,
            stop_at_layer=graph.n_layers,
        )[f"blocks.{layer}.hook_resid_pre"]
    per_batch = variants_per_batch(task, memory_budget)
    values = np.empty(len(changes))
    for s in range(0, len(changes), per_batch):
        chunk = changes[s : s + per_batch]

        def add(act: Tensor, hook, chunk=chunk) -> Tensor:
            return act + chunk.to(act.dtype).flatten(0, 1)

        mask = None if task.clean_mask is None else task.clean_mask.repeat(len(chunk), 1)
        resid = start.repeat(len(chunk), 1, 1)
        with torch.no_grad(), model.hooks(fwd_hooks=[(hook, add)]):
            for block in model.blocks[layer:]:
                resid = block(resid, attention_mask=mask)
            values[s : s + len(chunk)] = task.score(last_position_logits(model, resid)).double().cpu().numpy()
    return values


def sae_node_effects(
    task: PatchingTask,
    node: str,
    sae,
    graph: ComputationGraph | None = None,
    *,
    latents: Sequence[int] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> pd.DataFrame:
    """Per SAE-feature node of the site: its EAP node score (the sum of its edges' EAP scores: its change times the
    metric's gradient at the site) and its exact effect (the site's output moved by that latent's change alone,
    (f_i(corrupted) - f_i(clean)) W_dec[i], everything downstream recomputed; metric minus the clean metric).

    Rows: one per latent (`latents`; None: every latent that changes between the runs), the error node ("err",
    latent -1), all latents together ("latents", -2) and the whole node ("node", -3: latents + error, which is the
    node's own exact patch). Columns: upstream, latent, kind, eap, exact, method "sae". attrs: hook, node,
    n_changed_latents, d_sae, and the error's share of the node's effect (exact and EAP).
    """
    graph = _graph(task, graph)
    hook, f_clean, df, d_error = _site_changes(task, graph, node, sae)
    d_sae = int(sae.W_dec.shape[0])
    changed = torch.nonzero(df.abs().amax((0, 1)) > 0).flatten().tolist()
    if latents is None:
        chosen = changed
    else:
        chosen = [int(c) for c in latents]
        bad = [c for c in chosen if not 0 <= c < d_sae]
        if bad:
            raise InterpError(
                f"latents: {bad[:5]} are out of range; this SAE has d_sae={d_sae} latents, 0..{d_sae - 1}."
            )
    w = sae.W_dec.detach().to(df.dtype)
    latent_changes = (
        torch.einsum("bpc,cd->cbpd", df[..., chosen], w[chosen]) if chosen else df.new_zeros((0, *d_error.shape))
    )
    all_latents = df @ w
    changes = torch.cat([latent_changes, d_error[None], all_latents[None], (all_latents + d_error)[None]])
    grads = receiver_gradients(task, graph, [0.0])[downstream_receivers(graph, node)].sum(0).double()
    eap = torch.einsum("vbpd,bpd->v", changes.double(), grads).numpy()
    exact = patch_site_changes(task, graph, node, changes, memory_budget=memory_budget) - task.clean_metric
    names = [f"{node}.f{c}" for c in chosen] + [f"{node}.err", f"{node}.latents", node]
    frame = pd.DataFrame(
        {
            "upstream": names,
            "latent": chosen + [-1, -2, -3],
            "kind": ["latent"] * len(chosen) + ["error", "latents", "node"],
            "eap": eap,
            "exact": exact,
        }
    )
    frame["method"] = "sae"
    whole = frame.iloc[-1]
    frame.attrs.update(
        hook=hook,
        node=node,
        n_changed_latents=len(changed),
        d_sae=d_sae,
        error_share_exact=float(exact[-3] / whole["exact"]) if whole["exact"] else float("nan"),
        error_share_eap=float(eap[-3] / whole["eap"]) if whole["eap"] else float("nan"),
        clean_metric=task.clean_metric,
        corrupted_metric=task.corrupted_metric,
    )
    return frame
