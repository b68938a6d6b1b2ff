"""The tokenizer and the fixed sequence layout.

    BOS  s t | s t | ... (n_edges)  [Q] c1 c2 [R] root  chain(n_levels slots)  [A] answer

The chain slots hold, per training format: the shortest path after the root (padded by repeating
the answer, so every sequence has one length), `<latent>` for each continuous thought, or nothing
(no-CoT). Every sequence of one format has the same length, so batches need no padding.

The training formats of train.py (the authors' curriculum) use `variable_tokens`: the chain holds as
many slots as the sample needs and `<pad>` fills the tail after the supervised token; a causal model
never reads the pads before its target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from circuits.reachability.graphs import GraphConfig, Problem
from interp.errors import InterpError

SPECIALS = ("BOS", "|", "[Q]", "[R]", "[A]", "<latent>", "<pad>")


@dataclass(frozen=True)
class SequenceLayout:
    """Token ids and positions for one GraphConfig. `n_chain`: chain slots (0 for no-CoT)."""

    graph: GraphConfig
    n_chain: int

    @property
    def n_node_ids(self) -> int:
        return self.graph.n_node_ids

    def special(self, name: str) -> int:
        if name not in SPECIALS:
            raise InterpError(f"special token {name!r} is unknown; known: {', '.join(SPECIALS)}.")
        return self.graph.n_node_ids + SPECIALS.index(name)

    @property
    def d_vocab(self) -> int:
        return self.graph.n_node_ids + len(SPECIALS)

    @property
    def question(self) -> int:  # position of [Q]
        return 1 + 3 * self.graph.n_edges

    @property
    def candidate_positions(self) -> tuple[int, int]:
        return self.question + 1, self.question + 2

    @property
    def root(self) -> int:
        return self.question + 4

    @property
    def chain(self) -> range:
        return range(self.root + 1, self.root + 1 + self.n_chain)

    @property
    def answer_marker(self) -> int:  # position of [A]; the answer is predicted here
        return self.root + 1 + self.n_chain

    @property
    def seq_len(self) -> int:
        return self.answer_marker + 2

    def edge_positions(self, edge: int) -> tuple[int, int, int]:
        """Positions of the source, target and separator of the edge-th edge."""
        return 1 + 3 * edge, 2 + 3 * edge, 3 + 3 * edge

    def chain_tokens(self, problem: Problem, n_latent: int) -> list[int]:
        """The chain slots: n_latent latents, then the path from step n_latent + 1 (answer repeated at the end)."""
        steps = list(problem.path[1:]) + [problem.answer] * (self.n_chain - len(problem.path) + 1)
        return [self.special("<latent>")] * n_latent + steps[n_latent : self.n_chain]

    def encode(self, problem: Problem, n_latent: int = 0) -> list[int]:
        if len(problem.edges) != self.graph.n_edges:
            raise InterpError(
                f"problem has {len(problem.edges)} edges but the layout expects n_edges={self.graph.n_edges}; generate problems with the same GraphConfig."
            )
        if not 0 <= n_latent <= self.n_chain:
            raise InterpError(f"n_latent={n_latent} must be in 0..n_chain={self.n_chain}.")
        edges = [tok for a, b in problem.edges for tok in (a, b, self.special("|"))]
        head = [
            self.special("BOS"),
            *edges,
            self.special("[Q]"),
            *problem.candidates,
            self.special("[R]"),
            problem.root,
        ]
        return head + self.chain_tokens(problem, n_latent) + [self.special("[A]"), problem.answer]

    def encode_batch(self, problems: Sequence[Problem], n_latent: int = 0) -> Int[Tensor, "batch pos"]:
        if len(problems) == 0:
            raise InterpError("problems is empty: pass at least one Problem.")
        return torch.tensor([self.encode(p, n_latent) for p in problems], dtype=torch.long)

    def head_tokens(self, problem: Problem, edges=None, candidates=None) -> list[int]:
        """BOS, the edges (in `edges` order, default the problem's), [Q] c1 c2 [R] root."""
        edges = problem.edges if edges is None else edges
        candidates = problem.candidates if candidates is None else candidates
        if len(edges) != self.graph.n_edges:
            raise InterpError(
                f"problem has {len(edges)} edges but the layout expects n_edges={self.graph.n_edges}; generate problems with the same GraphConfig."
            )
        return [
            self.special("BOS"),
            *(tok for a, b in edges for tok in (a, b, self.special("|"))),
            self.special("[Q]"),
            *candidates,
            self.special("[R]"),
            problem.root,
        ]

    def padded(self, tokens: list[int]) -> list[int]:
        """tokens padded with <pad> to seq_len."""
        if len(tokens) > self.seq_len:
            raise InterpError(f"{len(tokens)} tokens do not fit seq_len={self.seq_len}.")
        return tokens + [self.special("<pad>")] * (self.seq_len - len(tokens))

    def decode(self, tokens: Sequence[int]) -> str:
        return " ".join(
            str(t) if t < self.n_node_ids else SPECIALS[t - self.n_node_ids] for t in (int(t) for t in tokens)
        )
