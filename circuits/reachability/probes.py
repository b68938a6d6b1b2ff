"""Probes of continuous thoughts: layer-2 attention on edges, inner products with node embeddings, linear read-out.

Step c (1..D) is the thought t_c that should hold V_c, the nodes within c steps of the root.
Nested groups (as in the paper): reachable = distance <= c, frontier = distance == c,
optimal = the c-th node of the shortest path to the answer, not_reachable = the graph's other nodes.
Separate groups (issue 14; disjoint, so the frontier's own nodes are not hidden behind the optimal ones):
    optimal_path            distance == c and on some shortest root -> answer path (the curriculum's targets)
    frontier_minus_optimal  distance == c, on no shortest path to the answer
    visited                 distance < c (already in V_{c-1})
    reachable_minus_frontier  reachable from the root, but distance > c (not yet reached)
    never_reachable         not reachable from the root at all (the decoy component)
A thought c exists only for problems whose answer is at least c hops away (the authors' final stage gives a
problem as many thoughts as its path is long); its masks are all False otherwise.
For attention, step c is the position that produces t_c (the root for c = 1, else latent c - 1),
and an edge's group is its source's group relative to step c - 1; a separate-group optimal edge goes from
an optimal_path node of step c - 1 (the root for c = 1) to one of step c.
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
SEPARATE_GROUPS = ("optimal_path", "frontier_minus_optimal", "visited", "reachable_minus_frontier", "never_reachable")


def valid_steps(problems: list[Problem], n_steps: int) -> Bool[Tensor, "batch n_steps"]:
    """Thought c exists for a problem iff c <= its answer's distance."""
    return torch.tensor([[c <= p.n_hops for c in range(1, n_steps + 1)] for p in problems], dtype=torch.bool).reshape(
        len(problems), n_steps
    )


def _separate_node_group(p: Problem, v: int, c: int) -> int:
    dist = p.distance.get(v)
    if dist is None:
        return 4
    if dist == c:
        return 0 if v in p.on_shortest_paths(c) else 1
    return 2 if dist < c else 3


def separate_node_groups(
    problems: list[Problem], n_steps: int, n_node_ids: int
) -> Bool[Tensor, "batch n_steps n_node_ids 5"]:
    """Membership of each node id in each SEPARATE_GROUPS group at each step (all False for ids not in the graph and steps past the answer)."""
    masks = torch.zeros(len(problems), n_steps, n_node_ids, len(SEPARATE_GROUPS), dtype=torch.bool)
    for b, p in enumerate(problems):
        for c in range(1, min(n_steps, p.n_hops) + 1):
            for v in p.nodes:
                masks[b, c - 1, v, _separate_node_group(p, v, c)] = True
    return masks


def separate_edge_groups(problems: list[Problem], n_steps: int) -> Bool[Tensor, "batch n_steps n_edges 5"]:
    """Group of each edge at the position producing thought c: its source's separate group at step c - 1
    (the root counts as optimal_path at step 0); a frontier edge is optimal only if its target is optimal_path at step c."""
    n_edges = len(problems[0].edges)
    masks = torch.zeros(len(problems), n_steps, n_edges, len(SEPARATE_GROUPS), dtype=torch.bool)
    for b, p in enumerate(problems):
        for c in range(1, min(n_steps, p.n_hops) + 1):
            for i, (source, target) in enumerate(p.edges):
                dist = p.distance.get(source)
                if dist is None:
                    g = 4
                elif dist == c - 1:
                    g = 0 if source in p.on_shortest_paths(c - 1) | {p.root} and target in p.on_shortest_paths(c) else 1
                else:
                    g = 2 if dist < c - 1 else 3
                masks[b, c - 1, i, g] = True
    return masks


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


def group_means(
    values: Float[Tensor, "batch n_steps n_items"],
    masks: Bool[Tensor, "batch n_steps n_items n_groups"],
    measure: str,
    groups: tuple[str, ...] = GROUPS,
) -> pd.DataFrame:
    """Tidy frame (step, group, measure, mean, sem, n): the mean over every (problem, item) in the group."""
    if values.shape != masks.shape[:3]:
        raise ShapeMismatchError(
            f"values has shape {tuple(values.shape)} but masks has {tuple(masks.shape[:3])} (batch, step, item)."
        )
    if masks.shape[3] != len(groups):
        raise ShapeMismatchError(f"masks has {masks.shape[3]} groups but groups names {len(groups)}: {groups}.")
    rows = []
    for c in range(values.shape[1]):
        for g, group in enumerate(groups):
            picked = values[:, c][masks[:, c, :, g]].double()
            n = picked.numel()
            sem = (picked.std() / n**0.5).item() if n > 1 else float("nan")
            rows.append((c + 1, group, measure, picked.mean().item() if n else float("nan"), sem, n))
    return pd.DataFrame(rows, columns=["step", "group", "measure", "mean", "sem", "n"])


def inner_products(
    model: HookedTransformer, thoughts: Float[Tensor, "batch n_steps d_model"], n_node_ids: int
) -> Float[Tensor, "batch n_steps n_node_ids"]:
    """<t_c, u_v> for every node id v, with u_v the token embedding W_E[v]."""
    return thoughts.detach() @ model.W_E[:n_node_ids].detach().T


@torch.no_grad()
def edge_attention(
    model: HookedTransformer,
    residual: Float[Tensor, "batch pos d_model"],
    layout: SequenceLayout,
    n_steps: int,
    head: int | None = None,
) -> Float[Tensor, "batch n_steps n_edges"]:
    """Layer-2 attention from the position producing thought c to each edge's three tokens, summed per edge
    (head None: summed over heads, as the authors' notebook does)."""
    site = Site(model.cfg.n_layers - 1, "pattern", head=head).check(model)
    _, cache = model.run_with_cache(residual, start_at_layer=0, names_filter=site.hook_name, return_type=None)
    pattern = cache[site.hook_name][site.index()]
    pattern = pattern.sum(1) if head is None else pattern  # [batch, query, key]
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


def probe_scores(
    train_thoughts: Float[Tensor, "n_train n_steps d_model"],
    train_sets: Bool[Tensor, "n_train n_steps n_node_ids"],
    test_thoughts: Float[Tensor, "n_test n_steps d_model"],
    train_valid: Bool[Tensor, "n_train n_steps"] | None = None,
    steps: int = 300,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> Float[Tensor, "n_test n_steps n_node_ids"]:
    """Per step, a logistic-regression read-out of 'v in V_c' for every node, fitted on the valid training thoughts; its test logits."""
    scores = []
    for c in range(train_thoughts.shape[1]):
        keep = train_valid[:, c] if train_valid is not None else torch.ones(len(train_thoughts), dtype=torch.bool)
        x, y = train_thoughts[keep, c].detach().float(), train_sets[keep, c].float()
        if len(x) < 2:
            raise InterpError(
                f"step {c + 1}: {len(x)} training thoughts; the probe needs at least 2 problems whose answer is that far."
            )
        mean, std = x.mean(0), x.std(0) + 1e-6
        torch.manual_seed(seed)
        probe = torch.nn.Linear(x.shape[1], y.shape[1])
        optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(probe((x - mean) / std), y)
                + weight_decay * probe.weight.square().sum()
            )
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            scores.append(probe((test_thoughts[:, c].detach().float() - mean) / std))
    return torch.stack(scores, 1)


def reachable_set_probe(
    train_thoughts: Float[Tensor, "n_train n_steps d_model"],
    train_sets: Bool[Tensor, "n_train n_steps n_node_ids"],
    test_thoughts: Float[Tensor, "n_test n_steps d_model"],
    test_sets: Bool[Tensor, "n_test n_steps n_node_ids"],
    steps: int = 300,
    weight_decay: float = 1e-3,
    seed: int = 0,
    train_valid: Bool[Tensor, "n_train n_steps"] | None = None,
    test_valid: Bool[Tensor, "n_test n_steps"] | None = None,
) -> pd.DataFrame:
    """Per step, a logistic-regression read-out of 'v in V_c' for every node; per-node AUC on held-out graphs.

    Returns (step, node, auc); nodes whose test labels are all one class are left out, and so are thoughts
    marked invalid (a problem whose answer is nearer than c).
    """
    scores = probe_scores(train_thoughts, train_sets, test_thoughts, train_valid, steps, weight_decay, seed).numpy()
    rows = []
    for c in range(train_thoughts.shape[1]):
        keep = test_valid[:, c].numpy() if test_valid is not None else np.ones(len(test_thoughts), dtype=bool)
        labels = test_sets[keep, c].numpy()
        for v in range(labels.shape[1]):
            if 0 < labels[:, v].sum() < len(labels):
                rows.append((c + 1, v, roc_auc(scores[keep, c, v], labels[:, v])))
    return pd.DataFrame(rows, columns=["step", "node", "auc"])


def group_auc(
    scores: Float[Tensor, "n n_steps n_node_ids"],
    masks: Bool[Tensor, "n n_steps n_node_ids n_groups"],
    groups: tuple[str, ...] = SEPARATE_GROUPS,
    negative: str = "never_reachable",
) -> pd.DataFrame:
    """Per step and group, the AUC of the probe's score separating that group's nodes from the `negative` group's (pooled over graphs)."""
    rows = []
    neg = groups.index(negative)
    for c in range(scores.shape[1]):
        negatives = scores[:, c][masks[:, c, :, neg]].numpy()
        for g, group in enumerate(groups):
            positives = scores[:, c][masks[:, c, :, g]].numpy()
            if g == neg or not len(positives) or not len(negatives):
                continue
            values = np.concatenate([positives, negatives])
            labels = np.concatenate([np.ones(len(positives), bool), np.zeros(len(negatives), bool)])
            rows.append((c + 1, group, roc_auc(values, labels), len(positives), len(negatives)))
    return pd.DataFrame(rows, columns=["step", "group", "auc", "n_positive", "n_negative"])


def reachable_sets(problems: list[Problem], n_steps: int, n_node_ids: int) -> Bool[Tensor, "batch n_steps n_node_ids"]:
    return node_groups(problems, n_steps, n_node_ids)[..., 0]
