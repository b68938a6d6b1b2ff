"""Probes of continuous thoughts: layer-2 attention on edges, inner products with node embeddings, linear read-out.

Step c (1..D) is the thought t_c that should hold V_c, the nodes within c steps of the root.
Groups (nested, as in the paper): reachable = distance <= c, frontier = distance == c,
optimal = the c-th node of the shortest path to the answer, not_reachable = the graph's other nodes.
For attention, step c is the position that produces t_c (the root for c = 1, else latent c - 1),
and an edge's group is its source's group relative to V_{c-1}; the optimal edge is path[c-1] -> path[c].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float
from scipy.stats import rankdata
from torch import Tensor
from transformer_lens import HookedTransformer

from circuits.reachability.graphs import Problem
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError, ShapeMismatchError
from interp.sites import Site

GROUPS = ("reachable", "not_reachable", "frontier", "optimal")


def node_groups(problems: list[Problem], n_steps: int, n_node_ids: int) -> Bool[Tensor, "batch n_steps n_node_ids 4"]:
    """Membership of each node id in each group at each step (all False for ids not in the graph)."""
    masks = torch.zeros(len(problems), n_steps, n_node_ids, len(GROUPS), dtype=torch.bool)
    for b, p in enumerate(problems):
        for c in range(1, n_steps + 1):
            for v in p.nodes:
                dist = p.distance.get(v)
                near = dist is not None and dist <= c
                masks[b, c - 1, v, 0] = near
                masks[b, c - 1, v, 1] = not near
                masks[b, c - 1, v, 2] = dist == c
            if c < len(p.path):
                masks[b, c - 1, p.path[c], 3] = True
    return masks


def edge_groups(problems: list[Problem], n_steps: int) -> Bool[Tensor, "batch n_steps n_edges 4"]:
    """Group of each edge at the position producing thought c, judged by its source against V_{c-1}."""
    n_edges = len(problems[0].edges)
    masks = torch.zeros(len(problems), n_steps, n_edges, len(GROUPS), dtype=torch.bool)
    for b, p in enumerate(problems):
        for c in range(1, n_steps + 1):
            for i, (source, target) in enumerate(p.edges):
                dist = p.distance.get(source)
                near = dist is not None and dist <= c - 1
                masks[b, c - 1, i, 0] = near
                masks[b, c - 1, i, 1] = not near
                masks[b, c - 1, i, 2] = dist == c - 1
                masks[b, c - 1, i, 3] = c < len(p.path) and (source, target) == (p.path[c - 1], p.path[c])
    return masks


def group_means(values: Float[Tensor, "batch n_steps n_items"], masks: Bool[Tensor, "batch n_steps n_items 4"], measure: str) -> pd.DataFrame:
    """Tidy frame (step, group, measure, mean, sem, n): the mean over every (problem, item) in the group."""
    if values.shape != masks.shape[:3]:
        raise ShapeMismatchError(f"values has shape {tuple(values.shape)} but masks has {tuple(masks.shape[:3])} (batch, step, item).")
    rows = []
    for c in range(values.shape[1]):
        for g, group in enumerate(GROUPS):
            picked = values[:, c][masks[:, c, :, g]].double()
            n = picked.numel()
            sem = (picked.std() / n**0.5).item() if n > 1 else float("nan")
            rows.append((c + 1, group, measure, picked.mean().item() if n else float("nan"), sem, n))
    return pd.DataFrame(rows, columns=["step", "group", "measure", "mean", "sem", "n"])


def inner_products(model: HookedTransformer, thoughts: Float[Tensor, "batch n_steps d_model"], n_node_ids: int) -> Float[Tensor, "batch n_steps n_node_ids"]:
    """<t_c, u_v> for every node id v, with u_v the token embedding W_E[v]."""
    return thoughts.detach() @ model.W_E[:n_node_ids].detach().T


@torch.no_grad()
def edge_attention(
    model: HookedTransformer, residual: Float[Tensor, "batch pos d_model"], layout: SequenceLayout, n_steps: int, head: int | None = None
) -> Float[Tensor, "batch n_steps n_edges"]:
    """Layer-2 attention from the position producing thought c to each edge's three tokens, summed per edge (head None: mean over heads)."""
    site = Site(model.cfg.n_layers - 1, "pattern", head=head).check(model)
    _, cache = model.run_with_cache(residual, start_at_layer=0, names_filter=site.hook_name, return_type=None)
    pattern = cache[site.hook_name][site.index()]
    pattern = pattern.mean(1) if head is None else pattern  # [batch, query, key]
    queries = [layout.root + c - 1 for c in range(1, n_steps + 1)]
    edge_tokens = torch.tensor([layout.edge_positions(i) for i in range(layout.graph.n_edges)])  # [n_edges, 3]
    return pattern[:, queries][:, :, edge_tokens].sum(-1)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula; ties count one half."""
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise InterpError(f"roc_auc needs both classes; got {n_pos} positives and {n_neg} negatives.")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reachable_set_probe(
    train_thoughts: Float[Tensor, "n_train n_steps d_model"], train_sets: Bool[Tensor, "n_train n_steps n_node_ids"],
    test_thoughts: Float[Tensor, "n_test n_steps d_model"], test_sets: Bool[Tensor, "n_test n_steps n_node_ids"],
    steps: int = 300, weight_decay: float = 1e-3, seed: int = 0,
) -> pd.DataFrame:
    """Per step, a logistic-regression read-out of 'v in V_c' for every node; per-node AUC on held-out graphs.

    Returns (step, node, auc); nodes whose test labels are all one class are left out.
    """
    rows = []
    for c in range(train_thoughts.shape[1]):
        x, y = train_thoughts[:, c].detach().float(), train_sets[:, c].float()
        mean, std = x.mean(0), x.std(0) + 1e-6
        torch.manual_seed(seed)
        probe = torch.nn.Linear(x.shape[1], y.shape[1])
        optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(probe((x - mean) / std), y) + weight_decay * probe.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            scores = probe((test_thoughts[:, c].float() - mean) / std).numpy()
        labels = test_sets[:, c].numpy()
        for v in range(labels.shape[1]):
            if 0 < labels[:, v].sum() < len(labels):
                rows.append((c + 1, v, roc_auc(scores[:, v], labels[:, v])))
    return pd.DataFrame(rows, columns=["step", "node", "auc"])


def reachable_sets(problems: list[Problem], n_steps: int, n_node_ids: int) -> Bool[Tensor, "batch n_steps n_node_ids"]:
    return node_groups(problems, n_steps, n_node_ids)[..., 0]
