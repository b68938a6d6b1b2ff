"""SAE-feature nodes: one node of the graph (an MLP's output, or the embeddings) replaced by the latents of an SAE
plus one error node, with EAP edge scores from each latent and from the error to every receiver downstream.

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

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import InterpError
from interp.graph.graph import ComputationGraph
from interp.graph.scores import _graph, receiver_gradients
from interp.hooks import capture
from interp.patching.task import PatchingTask

SITE_HOOKS = {"embed": "blocks.0.hook_resid_pre"}


def site_hook(graph: ComputationGraph, node: str) -> str:
    """The hook whose activation is `node`'s output (an MLP node 'm{L}' or 'embed')."""
    i = graph.sender_index(node)  # unknown names raise here
    sender = graph.senders[i]
    if sender.component == "mlp":
        return f"blocks.{sender.layer}.hook_mlp_out"
    if sender.component == "embed":
        return SITE_HOOKS["embed"]
    raise InterpError(
        f"node={node!r}: SAE nodes replace an MLP node ('m{{L}}') or 'embed'; a head's output is not one activation an SAE reads."
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
    i = graph.sender_index(node)
    downstream = [j for j, r in enumerate(graph.receivers) if r.n_upstream > i]
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
