"""The single-step edge lookup as a dense training signal ("node -> one of its children", many queries per sequence).

Every format needs one skill first: given the edge list and a node u, emit a child of u (find the edges whose
source is u, copy a target: an associative-recall / induction read of the edge list). With one query per
sequence (the formats' own supervision) 2-layer models sit on a long plateau before that circuit forms (issue 14
diagnosis in FINDINGS.md). A dense lookup sequence asks many queries after one edge list, each preceded by [R]
as the root is in the real layout:

    BOS  s t | ... (n_edges)  [Q] c1 c2 [R] u1 v1 [R] u2 v2 ... [R] uK vK  <pad>...

u1..uK are distinct nodes with at least one child (fewer than K when the graph has fewer; the tail is padded),
v_i a child of u_i drawn at random; the loss is on every v_i (predicted at u_i's position), nothing else.
The first query sits exactly where the formats read the root, the later ones on the chain positions and beyond.
"""

from __future__ import annotations

import random

import torch
from jaxtyping import Float
from torch import Tensor

from circuits.reachability.graphs import Problem
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError

IGNORE = -100  # the label of an unsupervised position (torch's cross-entropy ignore_index)


def children_of(problem: Problem) -> dict[int, list[int]]:
    """Each node with at least one child -> its children, ascending."""
    out: dict[int, list[int]] = {}
    for a, b in problem.edges:
        out.setdefault(a, []).append(b)
    return {a: sorted(bs) for a, bs in out.items()}


def dense_lookup_length(layout: SequenceLayout, n_queries: int) -> int:
    """Tokens in a dense lookup sequence of n_queries queries (BOS .. [R] u1 v1, then 3 tokens per further query)."""
    if n_queries < 1:
        raise InterpError(f"n_queries={n_queries} must be >= 1.")
    return layout.root + 2 + 3 * (n_queries - 1)


def dense_lookup_sample(
    problem: Problem,
    layout: SequenceLayout,
    n_queries: int,
    rng: random.Random,
    n_visible: int | None = None,
    source_labels: bool = False,
) -> tuple[list[int], list[int]]:
    """(tokens, labels) of one dense lookup sequence, both dense_lookup_length(layout, n_queries) long; labels hold
    v_i at v_i's position and IGNORE elsewhere. Edge order and candidate order are reshuffled per sample.

    n_visible (the edge-count curriculum): show about n_visible edges, every edge of the queried nodes and random
    others; the hidden edges' slots hold <pad> <pad> <pad> (positions stay those of the full layout). Queries are
    added while their edges fit in n_visible (at least one query). None: every edge, min(n_queries, sources) queries.

    source_labels: also supervise, at each shown edge's target position, that edge's source (the label sits on the
    separator after it, as labels are read from the position before). The edge list is never generated, so this
    costs the formats nothing; it trains the previous-token read that the lookup's second layer keys on."""
    length = dense_lookup_length(layout, n_queries)
    children = children_of(problem)
    sources = sorted(children)
    rng.shuffle(sources)
    edges = list(problem.edges)
    rng.shuffle(edges)
    candidates = problem.candidates if rng.random() < 0.5 else problem.candidates[::-1]
    tokens = layout.head_tokens(problem, edges, candidates)[:-1]  # up to and including [R]
    queried = sources[:n_queries]
    if n_visible is not None and n_visible < len(edges):
        queried, used = [], 0
        for u in sources[:n_queries]:
            if queried and used + len(children[u]) > n_visible:
                break
            queried.append(u)
            used += len(children[u])
        others = [i for i, (a, _) in enumerate(edges) if a not in queried]
        for i in rng.sample(others, min(len(others), len(edges) - max(n_visible, used))):
            tokens[1 + 3 * i : 4 + 3 * i] = [layout.special("<pad>")] * 3
    labels = [IGNORE] * len(tokens)
    if source_labels:
        for e in range(layout.graph.n_edges):
            source, _, separator = layout.edge_positions(e)
            if tokens[source] != layout.special("<pad>"):
                labels[separator] = tokens[source]
    for i, u in enumerate(queried):
        if i:
            tokens.append(layout.special("[R]"))
            labels.append(IGNORE)
        v = rng.choice(children[u])
        tokens += [u, v]
        labels += [IGNORE, v]
    pad = length - len(tokens)
    return tokens + [layout.special("<pad>")] * pad, labels + [IGNORE] * pad


def query_edge_targets(tokens: Tensor, labels: Tensor, layout: SequenceLayout) -> Tensor:
    """[batch, pos, pos] float mask: for every query position q of a dense lookup batch (the label at q + 1 is
    supervised and q is past the edge list), 1 at the target positions of the edges whose source is tokens[b, q]."""
    batch, n = tokens.shape
    mask = torch.zeros(batch, n, n)
    n_edges = layout.graph.n_edges
    sources = tokens[:, 1 : 3 * n_edges : 3]  # [batch, n_edges]
    target_pos = torch.arange(n_edges) * 3 + 2
    queries = (labels[:, 1:] != IGNORE).nonzero().tolist()
    for b, q in queries:
        if q >= layout.question:  # a query, not a source label inside the edge list
            mask[b, q, target_pos[sources[b] == tokens[b, q]]] = 1.0
    return mask


def attention_lookup_loss(pattern: Float[Tensor, "batch pos pos"], mask: Float[Tensor, "batch pos pos"]) -> Tensor:
    """-mean over query positions of log(attention mass on the queried node's edge targets): attention supervision
    for one head (the lookup head: layer 2 reads the target whose previous token is the query)."""
    rows = mask.sum(-1) > 0
    if not rows.any():
        return pattern.new_zeros(())
    mass = (pattern * mask).sum(-1)[rows]
    return -torch.log(mass.clamp_min(1e-6)).mean()
