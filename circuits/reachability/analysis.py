"""One model's probe tables: thoughts on held-out graphs, grouped inner products and attention, linear read-out."""

from __future__ import annotations

import pandas as pd
import torch
from transformer_lens import HookedTransformer

from circuits.reachability.graphs import Problem
from circuits.reachability.model import ThoughtRun, continuous_forward
from circuits.reachability.probes import edge_attention, edge_groups, group_means, inner_products, node_groups, reachable_set_probe
from circuits.reachability.tokens import SequenceLayout


@torch.no_grad()
def run_thoughts(model: HookedTransformer, problems: list[Problem], layout: SequenceLayout, batch_size: int = 500) -> ThoughtRun:
    """continuous_forward with every chain slot a thought, in batches."""
    runs = [continuous_forward(model, layout.encode_batch(problems[i : i + batch_size], layout.n_chain), layout.chain.start, layout.n_chain) for i in range(0, len(problems), batch_size)]
    return ThoughtRun(*(torch.cat(parts) for parts in zip(*runs)))


def answer_accuracy(run: ThoughtRun, problems: list[Problem], layout: SequenceLayout) -> float:
    predicted = run.logits[:, layout.answer_marker].argmax(-1)
    return (predicted == torch.tensor([p.answer for p in problems])).float().mean().item()


def probe_tables(model: HookedTransformer, probe_train: list[Problem], probe_test: list[Problem], layout: SequenceLayout, label: str) -> dict[str, pd.DataFrame]:
    """inner_products, edge_attention (step, group, mean, sem, n) and probe_auc (step, node, auc), each with a `model` column."""
    n_steps, n_nodes = layout.n_chain, layout.n_node_ids
    train_run, test_run = run_thoughts(model, probe_train, layout), run_thoughts(model, probe_test, layout)
    inner = group_means(inner_products(model, test_run.thoughts, n_nodes), node_groups(probe_test, n_steps, n_nodes), "inner_product")
    residual = test_run.residual
    attention = torch.cat([edge_attention(model, residual[i : i + 500], layout, n_steps) for i in range(0, len(residual), 500)])
    attention = group_means(attention, edge_groups(probe_test, n_steps), "attention_mass")
    auc = reachable_set_probe(train_run.thoughts, node_groups(probe_train, n_steps, n_nodes)[..., 0], test_run.thoughts, node_groups(probe_test, n_steps, n_nodes)[..., 0])
    return {name: df.assign(model=label) for name, df in {"inner_products": inner, "edge_attention": attention, "probe_auc": auc}.items()}


def example_frame(model: HookedTransformer, problem: Problem, layout: SequenceLayout, label: str) -> pd.DataFrame:
    """One graph's nodes with their distance and each thought's inner product: (model, step, node, distance, inner_product)."""
    thoughts = run_thoughts(model, [problem], layout).thoughts
    products = inner_products(model, thoughts, layout.n_node_ids)[0]
    return pd.DataFrame(
        [(label, c + 1, v, problem.distance.get(v, -1), products[c, v].item()) for c in range(layout.n_chain) for v in problem.nodes],
        columns=["model", "step", "node", "distance", "inner_product"],
    )
