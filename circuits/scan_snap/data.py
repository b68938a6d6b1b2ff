"""The paper's synthetic sequence classes, laid out in one token space shared by a batch of runs.

A class k has a query token and a next token; its T-1 context tokens are drawn i.i.d. from
P(l|k): weight `common_weight` on every common token (shared by all classes) and increasing
weights on its own distinct tokens. Runs in one batch may have different numbers of queries; they
share the layout of the largest one, and each run masks the tokens it does not own.

Every run owns a seeded generator, so a run draws the same data whether it is trained alone or
inside a batch of any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import InterpError


def run_generators(seeds: Int[Tensor, " runs"] | list[int]) -> list[torch.Generator]:
    """One generator per run: a run draws the same numbers alone or inside a batch of any size."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def uniforms(generators: list[torch.Generator], shape: tuple[int, ...]) -> Float[Tensor, "runs *shape"]:
    """Uniforms in [0, 1) from each stream's own generator (the loop only draws; all compute is batched)."""
    out = torch.empty(len(generators), *shape)
    for row, generator in zip(out, generators):
        row.uniform_(0.0, 1.0, generator=generator)
    return out


@dataclass(frozen=True)
class SequenceClasses:
    """The data distribution of one vocabulary setting (the paper's sequence classes)."""

    n_queries: int = 2
    next_per_query: int = 1
    n_common: int = 10
    n_distinct: int = 10
    common_weight: float = 1.0
    distinct_weight_range: tuple[float, float] = (0.1, 1.0)

    def __post_init__(self) -> None:
        for name in ("n_queries", "next_per_query", "n_distinct"):
            if getattr(self, name) < 1:
                raise InterpError(f"SequenceClasses({name}={getattr(self, name)}): must be at least 1.")
        if self.n_common < 0:
            raise InterpError(f"SequenceClasses(n_common={self.n_common}): must be 0 or more.")
        low, high = self.distinct_weight_range
        if not 0 < low <= high or self.common_weight < 0:
            raise InterpError(
                f"SequenceClasses(distinct_weight_range={self.distinct_weight_range}, common_weight={self.common_weight}): "
                "weights must satisfy 0 < low <= high and common_weight >= 0."
            )

    @property
    def n_classes(self) -> int:
        return self.n_queries * self.next_per_query

    def slot_weights(self) -> Float[Tensor, " slots"]:
        """Unnormalised P(l|k) over one class's slots: its common tokens, then its distinct tokens."""
        common = torch.full((self.n_common,), float(self.common_weight), dtype=torch.float64)
        return torch.cat([common, torch.linspace(*self.distinct_weight_range, self.n_distinct, dtype=torch.float64)])


@dataclass(frozen=True)
class TokenLayout:
    """Token ids of the largest setting in a batch: common | distinct per class | queries | next tokens."""

    n_common: int
    n_distinct: int
    max_queries: int
    next_per_query: int

    @property
    def max_classes(self) -> int:
        return self.max_queries * self.next_per_query

    @property
    def query_offset(self) -> int:
        return self.n_common + self.n_distinct * self.max_classes

    @property
    def next_offset(self) -> int:
        return self.query_offset + self.max_queries

    @property
    def d_vocab(self) -> int:
        return self.next_offset + self.max_classes

    def distinct_tokens(self, k: int) -> range:
        start = self.n_common + self.n_distinct * k
        return range(start, start + self.n_distinct)

    def query_of_class(self, classes: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        return self.query_offset + classes // self.next_per_query

    def next_of_class(self, classes: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        return self.next_offset + classes

    def slot_to_token(self, slots: Int[Tensor, "..."], classes: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        distinct = self.n_common + self.n_distinct * classes + (slots - self.n_common)
        return torch.where(slots < self.n_common, slots, distinct)

    def token_to_slot(self, tokens: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        """Inverse of slot_to_token for context tokens: common tokens keep their id, distinct ones their rank."""
        return torch.where(tokens < self.n_common, tokens, self.n_common + (tokens - self.n_common) % self.n_distinct)

    def slot_counts(self, context: Int[Tensor, "*batch ctx"]) -> Float[Tensor, "*batch slots"]:
        """How often each slot (common token, or distinct token by rank) occurs in each context."""
        slots = self.token_to_slot(context)
        counts = torch.zeros(*slots.shape[:-1], self.n_common + self.n_distinct)
        return counts.scatter_add_(-1, slots, torch.ones(slots.shape))

    def conditional_probs(self, spec: SequenceClasses) -> Float[Tensor, "max_classes d_vocab"]:
        """P(l|k) over the whole token space for every class slot of the layout (zero rows past spec's classes)."""
        weights = spec.slot_weights()
        probs = torch.zeros(self.max_classes, self.d_vocab, dtype=torch.float64)
        for k in range(spec.n_classes):
            probs[k, : self.n_common] = weights[: self.n_common]
            probs[k, list(self.distinct_tokens(k))] = weights[self.n_common :]
        return probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)

    def vocab_mask(self, spec: SequenceClasses) -> Bool[Tensor, " d_vocab"]:
        """The tokens a run of this setting owns (the others stay out of its softmax)."""
        mask = torch.zeros(self.d_vocab, dtype=torch.bool)
        mask[: self.n_common + self.n_distinct * spec.n_classes] = True
        mask[self.query_offset : self.query_offset + spec.n_queries] = True
        mask[self.next_offset : self.next_offset + spec.n_classes] = True
        return mask


def layout_for(specs: list[SequenceClasses]) -> TokenLayout:
    """The shared layout of a batch; every setting must agree on everything but the number of queries."""
    first = specs[0]
    for spec in specs[1:]:
        if (spec.n_common, spec.n_distinct, spec.next_per_query, spec.common_weight, spec.distinct_weight_range) != (
            first.n_common,
            first.n_distinct,
            first.next_per_query,
            first.common_weight,
            first.distinct_weight_range,
        ):
            raise InterpError(
                f"layout_for(specs=...): settings {first} and {spec} differ in more than n_queries; "
                "a batch may vary only the number of queries. Run the others as a separate batch."
            )
    return TokenLayout(first.n_common, first.n_distinct, max(s.n_queries for s in specs), first.next_per_query)


@dataclass(frozen=True)
class Batch:
    """One SGD step's data for every run: context tokens, query token, next-token label, class."""

    context: Int[Tensor, "runs batch ctx"]
    query: Int[Tensor, "runs batch"]
    label: Int[Tensor, "runs batch"]
    classes: Int[Tensor, "runs batch"]


def sample_batch(
    layout: TokenLayout,
    spec: SequenceClasses,
    generators: list[torch.Generator],
    n_classes: Int[Tensor, " runs"],
    batch_size: int,
    seq_len: int,
) -> Batch:
    """Draw batch_size sequences of length seq_len (seq_len - 1 context tokens + the query) for every run.

    Each sequence picks its class uniformly among its run's n_classes; context slots come from the
    shared per-class weight profile by inverse-CDF sampling.
    """
    if seq_len < 2:
        raise InterpError(
            f"sample_batch(seq_len={seq_len}): needs at least one context token plus the query (seq_len >= 2)."
        )
    if batch_size < 1:
        raise InterpError(f"sample_batch(batch_size={batch_size}): must be at least 1.")
    u_class = uniforms(generators, (batch_size,))
    classes = (u_class * n_classes.view(-1, 1)).long().clamp_max(n_classes.view(-1, 1) - 1)
    weights = spec.slot_weights()
    cdf = weights.cumsum(0) / weights.sum()
    slots = torch.searchsorted(cdf.float(), uniforms(generators, (batch_size, seq_len - 1)), right=True).clamp_max(
        len(weights) - 1
    )
    context = layout.slot_to_token(slots, classes.unsqueeze(-1))
    return Batch(
        context=context, query=layout.query_of_class(classes), label=layout.next_of_class(classes), classes=classes
    )
