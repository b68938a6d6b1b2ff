"""One model's probe tables: thoughts on held-out graphs, grouped inner products and attention, linear read-out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.reachability.graphs import Problem
from circuits.reachability.model import ThoughtRun, continuous_forward
from circuits.reachability.probes import (
    GROUPS,
    SEPARATE_GROUPS,
    edge_attention,
    edge_groups,
    group_auc,
    group_means,
    inner_products,
    node_groups,
    probe_scores,
    reachable_set_probe,
    separate_edge_groups,
    separate_node_groups,
    valid_steps,
)
from circuits.reachability.tokens import SequenceLayout
from circuits.reachability.train import eval_tokens


@torch.no_grad()
def run_thoughts(
    model: HookedTransformer,
    problems: list[Problem],
    layout: SequenceLayout,
    batch_size: int = 500,
    fixed: bool = False,
) -> ThoughtRun:
    """continuous_forward on the evaluation prompts, in batches.

    fixed=False (trained models): each problem gets as many thoughts as its answer is far, then [A] (the
    authors' final stage); thoughts past that are padding (see probes.valid_steps). fixed=True (the
    construction): every chain slot is a thought, [A] at layout.answer_marker.
    """
    runs = []
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        if fixed:
            runs.append(
                continuous_forward(
                    model, layout.encode_batch(chunk, layout.n_chain), layout.chain.start, layout.n_chain
                )
            )
        else:
            tokens, counts = eval_tokens("continuous", chunk, layout)
            runs.append(continuous_forward(model, tokens, layout.chain.start, counts))
    if not fixed:  # every run is padded to the layout's n_chain thoughts
        runs = [
            ThoughtRun(
                r.logits,
                torch.nn.functional.pad(r.thoughts, (0, 0, 0, layout.n_chain - r.thoughts.shape[1])),
                r.residual,
            )
            for r in runs
        ]
    return ThoughtRun(*(torch.cat(parts) for parts in zip(*runs)))


def answer_accuracy(run: ThoughtRun, problems: list[Problem], layout: SequenceLayout) -> float:
    """Accuracy of a fixed-layout run (the construction): the argmax at [A]."""
    predicted = run.logits[:, layout.answer_marker].argmax(-1)
    return (predicted == torch.tensor([p.answer for p in problems])).float().mean().item()


def probe_tables(
    model: HookedTransformer,
    probe_train: list[Problem],
    probe_test: list[Problem],
    layout: SequenceLayout,
    label: str,
    fixed: bool = False,
) -> dict[str, pd.DataFrame]:
    """inner_products / edge_attention (nested groups) and their _separate versions (step, group, mean, sem, n),
    probe_auc (step, node, auc) and probe_group_auc (step, group, auc, ...), each with a `model` column."""
    n_steps, n_nodes = layout.n_chain, layout.n_node_ids
    train_run, test_run = (
        run_thoughts(model, probe_train, layout, fixed=fixed),
        run_thoughts(model, probe_test, layout, fixed=fixed),
    )
    valid = valid_steps(probe_test, n_steps)
    nested = node_groups(probe_test, n_steps, n_nodes) & valid[:, :, None, None]
    separate = separate_node_groups(probe_test, n_steps, n_nodes)
    products = inner_products(model, test_run.thoughts, n_nodes)
    residual = test_run.residual
    attention = torch.cat(
        [edge_attention(model, residual[i : i + 250], layout, n_steps) for i in range(0, len(residual), 250)]
    )
    train_sets = node_groups(probe_train, n_steps, n_nodes)[..., 0]
    train_valid = valid_steps(probe_train, n_steps)
    scores = probe_scores(train_run.thoughts, train_sets, test_run.thoughts, train_valid)
    tables = {
        "inner_products": group_means(products, nested, "inner_product", GROUPS),
        "inner_products_separate": group_means(products, separate, "inner_product", SEPARATE_GROUPS),
        "edge_attention": group_means(
            attention, edge_groups(probe_test, n_steps) & valid[:, :, None, None], "attention_mass", GROUPS
        ),
        "edge_attention_separate": group_means(
            attention, separate_edge_groups(probe_test, n_steps), "attention_mass", SEPARATE_GROUPS
        ),
        "probe_auc": reachable_set_probe(
            train_run.thoughts,
            train_sets,
            test_run.thoughts,
            node_groups(probe_test, n_steps, n_nodes)[..., 0],
            train_valid=train_valid,
            test_valid=valid,
        ),
        "probe_group_auc": group_auc(scores, separate),
    }
    return {name: df.assign(model=label) for name, df in tables.items()}


def acceptance_inner(
    model: HookedTransformer, problems: list[Problem], layout: SequenceLayout, steps=(1, 2), share: float = 0.3
) -> dict[int, tuple[float, float, int]]:
    """Per step: (gap share, z, n graphs) for 'frontier_minus_optimal sits above never_reachable by >= share of the optimal-to-never gap'.

    gap share = (mean fmo - mean never) / (mean optimal - mean never), pooled over nodes; z is a paired test over
    graphs of D_g = fmo_g - never_g - share * (optimal_g - never_g) (per-graph group means), D_g's mean over its
    standard error, so nodes of one graph are not counted as independent.
    """
    run = run_thoughts(model, problems, layout)
    products = inner_products(model, run.thoughts, layout.n_node_ids)
    masks = separate_node_groups(problems, layout.n_chain, layout.n_node_ids)
    opt, fmo, never = (SEPARATE_GROUPS.index(g) for g in ("optimal_path", "frontier_minus_optimal", "never_reachable"))
    out = {}
    for c in steps:
        if c > layout.n_chain:
            continue
        values, m = products[:, c - 1], masks[:, c - 1]

        def per_graph(g):
            count = m[..., g].sum(-1)
            return (values * m[..., g]).sum(-1) / count.clamp(min=1), count > 0

        (o, ho), (f, hf), (n, hn) = per_graph(opt), per_graph(fmo), per_graph(never)
        pooled = {g: values[m[..., g]].double().mean().item() for g in (opt, fmo, never)}
        gap_share = (
            (pooled[fmo] - pooled[never]) / (pooled[opt] - pooled[never])
            if pooled[opt] != pooled[never]
            else float("nan")
        )
        keep = ho & hf & hn
        d = (f - n - share * (o - n))[keep].double().numpy()
        z = float(d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))) if len(d) > 1 and d.std(ddof=1) > 0 else float("nan")
        out[c] = (gap_share, z, int(keep.sum()))
    return out


def label_order_baseline(train: list[Problem], test: list[Problem]) -> tuple[float, str]:
    """The label-order shortcut: answer from the node ids alone (no edges). Rules on (root, candidates): the larger /
    smaller id, the id nearer to / farther from the root's. The best rule on `train` is scored on `test`."""
    rules = {
        "larger_id": lambda p: max(p.candidates),
        "smaller_id": lambda p: min(p.candidates),
        "nearer_root_id": lambda p: min(p.candidates, key=lambda v: (abs(v - p.root), v)),
        "farther_root_id": lambda p: max(p.candidates, key=lambda v: (abs(v - p.root), v)),
    }
    score = lambda rule, problems: float(np.mean([rule(p) == p.answer for p in problems]))  # noqa: E731
    best = max(rules, key=lambda name: score(rules[name], train))
    return score(rules[best], test), best


def example_frame(
    model: HookedTransformer, problem: Problem, layout: SequenceLayout, label: str, fixed: bool = False
) -> pd.DataFrame:
    """One graph's nodes with each thought's inner product and weight: (model, step, node, distance, inner_product, weight).

    weight: the softmax, over the graph's nodes, of the thought's logits (<t_c, u_v> + b_U[v] with tied embeddings),
    i.e. how the thought's mass is spread over the graph's nodes.
    """
    run = run_thoughts(model, [problem], layout, fixed=fixed)
    products = inner_products(model, run.thoughts, layout.n_node_ids)[0]
    nodes = list(problem.nodes)
    logits = run.thoughts[0] @ model.W_U[:, nodes] + model.b_U[nodes]
    weights = logits.softmax(-1)
    return pd.DataFrame(
        [
            (label, c + 1, v, problem.distance.get(v, -1), products[c, v].item(), weights[c, j].item())
            for c in range(problem.n_hops)
            for j, v in enumerate(nodes)
        ],
        columns=["model", "step", "node", "distance", "inner_product", "weight"],
    )


@torch.no_grad()
def thought_top_nodes(
    model: HookedTransformer, problems: list[Problem], layout: SequenceLayout
) -> dict[int, tuple[float, float, int]]:
    """Per step c: (share of thoughts whose highest-logit graph node is in the frontier F_c, the same share for a
    node drawn at random from the graph, n). Chance-matched diagnostic of edge following."""
    run = run_thoughts(model, problems, layout)
    logits = run.thoughts @ model.W_U[:, : layout.n_node_ids] + model.b_U[: layout.n_node_ids]
    out = {}
    for c in range(1, layout.n_chain + 1):
        hits, chance, n = 0, 0.0, 0
        for b, p in enumerate(problems):
            if c > p.n_hops:
                continue
            nodes = list(p.nodes)
            top = nodes[int(logits[b, c - 1, nodes].argmax())]
            hits += top in p.frontier(c)
            chance += len(p.frontier(c)) / len(nodes)
            n += 1
        out[c] = (hits / n if n else float("nan"), chance / n if n else float("nan"), n)
    return out


@torch.no_grad()
def chain_validity(model: HookedTransformer, problems: list[Problem], layout: SequenceLayout) -> tuple[float, float]:
    """Discrete CoT: (share of greedy chains whose first hop is an edge out of the root, share whose every hop up to
    [A] is an edge of the graph starting at the root and ending at the answer)."""
    from circuits.reachability.model import greedy_chain

    tokens, _ = eval_tokens("discrete_cot", problems, layout)
    generated = greedy_chain(
        model, tokens, layout.chain.start, layout.seq_len - layout.chain.start, torch.arange(layout.d_vocab)
    )
    return chains_valid(generated, problems, layout)


def chains_valid(generated, problems: list[Problem], layout: SequenceLayout) -> tuple[float, float]:
    """chain_validity's shares for given generated sequences (the prompt then the generated chain)."""
    marker = layout.special("[A]")
    first_ok = full_ok = 0
    for b, p in enumerate(problems):
        chain = generated[b, layout.chain.start - 1 :].tolist()  # root, then the generated tokens
        hops = chain[: chain.index(marker)] if marker in chain else chain
        first_ok += len(hops) > 1 and (hops[0], hops[1]) in p.edges
        full_ok += len(hops) > 1 and all(e in p.edges for e in zip(hops, hops[1:])) and hops[-1] == p.answer
    return first_ok / len(problems), full_ok / len(problems)
