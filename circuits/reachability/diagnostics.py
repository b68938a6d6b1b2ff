"""Diagnostics for "why does nothing learn": the single-step edge lookup and teacher-forced hop accuracy.

Every format needs one skill first: given the edge list and a node u, emit a child of u (read the edge list
by content: find the edges whose source is u, copy their target; an induction-style / associative-recall
lookup). `lookup_*` trains and scores exactly that task in the experiment's own layout (u in the root slot,
the loss on the one next token); `teacher_forced_hops` scores it inside discrete CoT, hop by hop, with a
gold shortest path as the prefix. Both compare with a chance rate computed per problem (a uniform pick
among the graph's nodes), so "at chance" is a number, not an impression.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from circuits.reachability.graphs import Problem
from circuits.reachability.lookup import (
    IGNORE,
    attention_lookup_loss,
    children_of,
    dense_lookup_length,
    dense_lookup_sample,
    query_edge_targets,
)
from circuits.reachability.model import ModelConfig, build_model
from circuits.reachability.tokens import SequenceLayout
from circuits.reachability.train import random_shortest_path, trainable_parameters
from interp.errors import InterpError


def lookup_sample(
    problem: Problem, layout: SequenceLayout, rng: random.Random, n_visible: int | None = None
) -> tuple[list[int], int, list[int]]:
    """(tokens padded to seq_len, the queried node u, u's children): the edges reshuffled, u (a node with at least one
    child) in the root slot; the model is asked for a child of u at the root position.

    n_visible (the edge-count curriculum): show only u's edges and random others up to n_visible edges in all; the
    other edge slots hold <pad> <pad> <pad>, so positions stay those of the full layout. None shows every edge."""
    children = children_of(problem)
    u = rng.choice(sorted(children))
    edges = list(problem.edges)
    rng.shuffle(edges)
    head = layout.head_tokens(problem, edges)
    if n_visible is not None and n_visible < len(edges):
        others = [i for i, (a, _) in enumerate(edges) if a != u]
        hidden = rng.sample(others, min(len(others), len(edges) - max(n_visible, len(children[u]))))
        for i in hidden:
            head[1 + 3 * i : 4 + 3 * i] = [layout.special("<pad>")] * 3
    return layout.padded(head[:-1] + [u]), u, children[u]


def recall_sample(layout: SequenceLayout, rng: random.Random) -> tuple[list[int], int, list[int]]:
    """Control task in the same layout: associative recall. n_edges pairs "k v |" with distinct random keys and random
    values, the candidates slots hold two random ids, a random key in the root slot; its value is the one right answer.
    No graph structure at all: a content lookup with one query per sequence."""
    n_ids, n_pairs = layout.n_node_ids, layout.graph.n_edges
    if n_pairs > n_ids:
        raise InterpError(f"recall needs n_edges={n_pairs} distinct keys out of n_node_ids={n_ids}.")
    keys = rng.sample(range(n_ids), n_pairs)
    values = [rng.randrange(n_ids) for _ in keys]
    q = rng.randrange(n_pairs)
    tokens = [layout.special("BOS"), *(t for k, v in zip(keys, values) for t in (k, v, layout.special("|")))]
    tokens += [layout.special("[Q]"), rng.randrange(n_ids), rng.randrange(n_ids), layout.special("[R]"), keys[q]]
    return layout.padded(tokens), keys[q], [values[q]]


def lookup_hits(logits: Float[Tensor, "batch d_vocab"], children: Sequence[Sequence[int]]) -> Tensor:
    """1.0 where the argmax token is one of that row's children, else 0.0."""
    if logits.ndim != 2 or len(children) != logits.shape[0]:
        raise InterpError(
            f"logits: expected shape [batch, d_vocab] with batch = len(children) = {len(children)}, got {tuple(logits.shape)}."
        )
    predicted = logits.argmax(-1).tolist()
    return torch.tensor([float(p in set(c)) for p, c in zip(predicted, children)])


@torch.no_grad()
def lookup_accuracy(
    model: HookedTransformer, problems: list[Problem], layout: SequenceLayout, seed: int = 1
) -> tuple[float, float]:
    """(share of problems whose emitted token is a child of the queried node, chance: mean |children(u)| / |nodes|)."""
    if not problems:
        raise InterpError("problems is empty: pass at least one Problem.")
    rng = random.Random(seed)
    rows = [lookup_sample(p, layout, rng) for p in problems]
    logits = model(torch.tensor([r[0] for r in rows]))[:, layout.root]
    hits = lookup_hits(logits, [r[2] for r in rows])
    chance = sum(len(r[2]) / len(p.nodes) for r, p in zip(rows, problems)) / len(problems)
    return hits.mean().item(), chance


@torch.no_grad()
def recall_accuracy(model: HookedTransformer, n: int, layout: SequenceLayout, seed: int = 1) -> tuple[float, float]:
    """(share of n held-out recall sequences answered with the queried key's value, chance 1 / n_node_ids)."""
    rng = random.Random(seed)
    rows = [recall_sample(layout, rng) for _ in range(n)]
    logits = model(torch.tensor([r[0] for r in rows]))[:, layout.root]
    return lookup_hits(logits, [r[2] for r in rows]).mean().item(), 1 / layout.n_node_ids


def train_lookup(
    problems: list[Problem],
    eval_problems: list[Problem],
    layout: SequenceLayout,
    model_config: ModelConfig,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    eval_every: int = 200,
    seed: int = 0,
    task: str = "lookup",
    init_std: float | None = None,
    verbose: bool = False,
    n_queries: int = 8,
    edge_curriculum_steps: int = 0,
    min_visible: int = 6,
    source_labels: bool = False,
    save_model: Path | None = None,
    attention_weight: float = 0.0,
) -> pd.DataFrame:
    """Train a fresh model on the single-step lookup alone (AdamW, weight decay 0.01, grad clip 1.0, the experiment's
    optimiser) and return its curve: step, train loss (mean since the last row), held-out accuracy, chance, seconds.

    task "recall": the associative-recall control (`recall_sample`; eval_problems only sets how many held-out
    sequences are scored); task "dense": the dense lookup of lookup.py, n_queries queries per sequence, loss on each
    (scored like "lookup": one query in the root slot). init_std: redraw every weight matrix from N(0, init_std) (the
    authors' GPT-2 init is 0.02; TransformerLens's default is 0.8 / sqrt(d_model)); None keeps the default.
    edge_curriculum_steps (tasks "lookup" and "dense"): the visible edges grow linearly from min_visible to n_edges over these
    steps (`lookup_sample`'s n_visible); 0: every edge from the start."""
    if steps < 1 or eval_every < 1 or not problems or not eval_problems:
        raise InterpError(f"steps={steps} and eval_every={eval_every} must be >= 1 and both problem lists non-empty.")
    if task not in ("lookup", "recall", "dense"):
        raise InterpError(f"task={task!r} is unknown; use 'lookup', 'recall' or 'dense'.")
    n_ctx = dense_lookup_length(layout, n_queries) if task == "dense" else None
    model = build_model(layout, model_config, seed, n_ctx=max(n_ctx or 0, layout.seq_len))
    if init_std is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim >= 2:
                    parameter.normal_(0.0, init_std)
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup_steps))
    rng, rows, losses, began = random.Random(seed), [], [], time.perf_counter()
    n_edges = layout.graph.n_edges
    for step in range(1, steps + 1):
        n_visible = None
        if edge_curriculum_steps and step <= edge_curriculum_steps:
            n_visible = min_visible + round((n_edges - min_visible) * (step - 1) / edge_curriculum_steps)
        if task == "dense":
            rows_ = [
                dense_lookup_sample(
                    problems[rng.randrange(len(problems))], layout, n_queries, rng, n_visible, source_labels
                )
                for _ in range(batch_size)
            ]
            labels, tokens = torch.tensor([r[1] for r in rows_]), torch.tensor([r[0] for r in rows_])
            if attention_weight:  # supervise layer 2's head 0 onto the queried node's edge targets
                kept = {}  # run_with_cache detaches; a hook keeps the graph for the attention loss

                def keep(pattern, hook):
                    kept["pattern"] = pattern

                logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", keep)])
                pattern = kept["pattern"][:, 0]
            else:
                logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE
            )
            if attention_weight:
                loss = loss + attention_weight * attention_lookup_loss(
                    pattern, query_edge_targets(tokens, labels, layout)
                )
        else:
            batch = [
                lookup_sample(problems[rng.randrange(len(problems))], layout, rng, n_visible)
                if task == "lookup"
                else recall_sample(layout, rng)
                for _ in range(batch_size)
            ]
            targets = torch.tensor([rng.choice(children) for _, _, children in batch])
            logits = model(torch.tensor([b[0] for b in batch]))[:, layout.root]
            loss = torch.nn.functional.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % eval_every == 0 or step == steps:
            model.eval()
            acc, chance = (
                recall_accuracy(model, len(eval_problems), layout)
                if task == "recall"
                else lookup_accuracy(model, eval_problems, layout)
            )
            model.train()
            rows.append((step, sum(losses) / len(losses), acc, chance, time.perf_counter() - began))
            if verbose:  # a log line per evaluation, for long runs
                print(*(f"{x:.4g}" for x in rows[-1]), flush=True)
            losses = []
    if save_model is not None:  # the trained weights, for a look at its attention (state dict)
        torch.save(model.state_dict(), save_model)
    return pd.DataFrame(rows, columns=["step", "loss", "lookup_acc", "chance", "seconds"])


def gold_chain_tokens(
    problems: list[Problem], layout: SequenceLayout, seed: int = 1
) -> tuple[Int[Tensor, "batch pos"], list[list[int]]]:
    """Discrete-CoT prompts with a gold (random shortest) path, [A] and the answer filled in, and each path."""
    rng = random.Random(seed)
    rows, paths = [], []
    for p in problems:
        path = random_shortest_path(p, rng)
        rows.append(layout.padded(layout.head_tokens(p) + path[1:] + [layout.special("[A]"), p.answer]))
        paths.append(path)
    return torch.tensor(rows), paths


@torch.no_grad()
def teacher_forced_hops(
    model: HookedTransformer, problems: list[Problem], layout: SequenceLayout, seed: int = 1
) -> dict[int, dict[str, float]]:
    """Discrete CoT, teacher-forced on a gold shortest path: for hop c (1..n_chain), over the problems whose answer is
    >= c hops away, the share whose prediction after path node c - 1 is a child of it (`child`), lies on a shortest
    root -> answer path at distance c (`on_shortest_path`), and the chance of a uniform pick among the graph's nodes
    for each (`child_chance`, `on_shortest_path_chance`); `n`: the number of problems."""
    if not problems:
        raise InterpError("problems is empty: pass at least one Problem.")
    tokens, paths = gold_chain_tokens(problems, layout, seed)
    predicted = model(tokens).argmax(-1)
    out = {}
    for c in range(1, layout.n_chain + 1):
        rows = [(b, p) for b, p in enumerate(problems) if p.n_hops >= c]
        if not rows:
            continue
        child = on_path = child_chance = on_path_chance = 0.0
        for b, p in rows:
            previous, guess = paths[b][c - 1], int(predicted[b, layout.chain.start + c - 2])
            kids = children_of(p).get(previous, [])
            child += guess in kids
            on_path += guess in p.on_shortest_paths(c)
            child_chance += len(kids) / len(p.nodes)
            on_path_chance += len(p.on_shortest_paths(c)) / len(p.nodes)
        n = len(rows)
        out[c] = dict(
            child=child / n,
            on_shortest_path=on_path / n,
            child_chance=child_chance / n,
            on_shortest_path_chance=on_path_chance / n,
            n=n,
        )
    return out


if __name__ == "__main__":
    import argparse

    from circuits.reachability.graphs import GraphConfig, make_problems, split_by_graph
    from interp.threads import torch_threads

    parser = argparse.ArgumentParser(
        description="Learning curve of the single-step edge lookup (or the recall control) alone."
    )
    parser.add_argument("--out", type=Path, required=True, help="CSV of the curve")
    parser.add_argument("--task", default="lookup", choices=("lookup", "recall", "dense"))
    parser.add_argument("--n-queries", type=int, default=8, help="dense: queries per sequence")
    parser.add_argument(
        "--edge-curriculum-steps", type=int, default=0, help="lookup: visible edges 6 -> all over N steps"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--source-labels", action="store_true", help="dense: also supervise each edge's source at its target"
    )
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="model init and sampling order")
    parser.add_argument("--data-seed", type=int, default=0, help="graph pool and held-out split")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--edges", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--attention-weight", type=float, default=0.0, help="dense: attention supervision weight")
    parser.add_argument("--save-model", type=Path, default=None, help="write the trained state dict here")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--init-std", type=float, default=None)
    parser.add_argument("--eval-every", type=int, default=200)
    args = parser.parse_args()
    graph = GraphConfig(n_levels=args.levels, n_edges=args.edges, min_distance=min(2, args.levels))
    with torch_threads(1):
        train_set, test_set = split_by_graph(make_problems(graph, 20000, seed=args.data_seed), 0.1, seed=args.data_seed)
        curve = train_lookup(
            train_set,
            test_set[:500],
            SequenceLayout(graph, graph.n_levels),
            ModelConfig(d_model=args.d_model, n_heads=args.n_heads, d_mlp=4 * args.d_model),
            args.steps,
            lr=args.lr,
            task=args.task,
            init_std=args.init_std,
            eval_every=args.eval_every,
            verbose=True,
            n_queries=args.n_queries,
            source_labels=args.source_labels,
            save_model=args.save_model,
            attention_weight=args.attention_weight,
            edge_curriculum_steps=args.edge_curriculum_steps,
            batch_size=args.batch_size,
            warmup_steps=args.warmup_steps,
            seed=args.seed,
        )
    curve.to_csv(args.out, index=False)
    print(curve.to_string(index=False))
