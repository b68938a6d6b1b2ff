"""The paper's 1-layer model in its Y/Z parametrisation, trained by SGD for a whole batch of runs at once.

One-hot inputs make the model two matrices per run: Z[m, l] is the attention logit of context token
l under query m (no positional encoding), and Y[l, n] maps the normalised pooled context to the
logit of output token n. Only the query rows of Z are ever read, so a run stores those
(`Z[q, l]` for query q = 0..n_queries-1). Every run of a sweep is one slice of stacked tensors with
its own learning rates; its loss is its own batch mean, so runs never interact.

Runs with the same seed and data setting share a data stream (same initial weights, same batches):
learning-rate comparisons then use common random numbers, and sampling costs one draw per stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from circuits.scan_snap.data import SequenceClasses, TokenLayout, layout_for, run_generators, sample_batch
from interp.errors import InterpError

INITS = ("zero", "uniform")


@dataclass(frozen=True)
class RunSpec:
    """One SGD run: its data setting, seed and the two learning rates."""

    classes: SequenceClasses
    seed: int
    eta_y: float
    eta_z: float


@dataclass(frozen=True)
class TrainSettings:
    """What every run of a batch shares (the paper's small case by default)."""

    steps: int = 100
    batch_size: int = 128
    seq_len: int = 128
    init: str = "zero"
    momentum: float = 0.0
    record_every: int = 1

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise InterpError(f"TrainSettings(init={self.init!r}): expected one of {INITS}.")
        for name in ("steps", "batch_size", "record_every"):
            if getattr(self, name) < 1:
                raise InterpError(f"TrainSettings({name}={getattr(self, name)}): must be at least 1.")
        if self.seq_len < 2:
            raise InterpError(f"TrainSettings(seq_len={self.seq_len}): needs one context token plus the query (>= 2).")
        if not 0.0 <= self.momentum < 1.0:
            raise InterpError(f"TrainSettings(momentum={self.momentum}): must lie in [0, 1).")


class TrainedRuns(NamedTuple):
    Y: Float[Tensor, "runs d_vocab d_vocab"]
    Z: Float[Tensor, "runs queries d_vocab"]
    loss: Float[Tensor, "steps runs"]
    record_steps: list[int]
    class_logits: Float[Tensor, "records runs classes d_vocab"]  # z of each class's query after each recorded step
    layout: TokenLayout
    probs: Float[Tensor, "runs classes d_vocab"]  # P(l | class k); zero rows for classes a run lacks
    n_classes: Int[Tensor, " runs"]


def scan_snap_logits(
    Y: Float[Tensor, "runs d_vocab d_vocab"],
    Z: Float[Tensor, "runs queries d_vocab"],
    counts: Float[Tensor, "runs batch slots"],
    classes: Int[Tensor, "runs batch"],
    layout: TokenLayout,
    vocab_mask: Bool[Tensor, "runs d_vocab"],
) -> Float[Tensor, "runs batch d_vocab"]:
    """logits = Y^T f, f = X^T b / ||X^T b||, b = softmax_t(z_query . x_t) over the context positions.

    Computed per slot rather than per position: X^T b on slot l is count_l exp(z_l) / sum count exp(z),
    the same number, with a class's 20-odd slots in place of 127 positions and a one-hot vocabulary.
    """
    runs, batch_size, n_slots = counts.shape
    d_vocab = Y.shape[-1]
    slot_tokens = layout.slot_to_token(torch.arange(n_slots), classes.unsqueeze(-1))
    query_rows = torch.arange(runs).view(-1, 1, 1) * Z.shape[1] + (classes // layout.next_per_query).unsqueeze(-1)
    z = Z.reshape(-1)[query_rows * d_vocab + slot_tokens].masked_fill(counts == 0, float("-inf"))
    pooled = torch.softmax(z + counts.clamp_min(1).log(), dim=-1)
    f = pooled / pooled.norm(dim=-1, keepdim=True)
    # a weighted sum of a class's Y rows per sequence, without materialising the one-hot pooled vector
    rows = (torch.arange(runs).view(-1, 1, 1) * d_vocab + slot_tokens).flatten(0, 1)
    logits = F.embedding_bag(rows, Y.reshape(-1, d_vocab), per_sample_weights=f.flatten(0, 1), mode="sum")
    return logits.view(runs, batch_size, d_vocab).masked_fill(~vocab_mask.unsqueeze(1), float("-inf"))


def _initial_weights(
    generators: list[torch.Generator], rows: list[Tensor], owned: list[Tensor], shape: tuple[int, int], init: str
) -> Tensor:
    """Each stream's weights drawn in its own compact vocabulary, then placed at its tokens of the shared layout.

    init "uniform" is nn.Linear's default, uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the run's
    vocabulary size; drawing compactly keeps a run's numbers independent of the batch it sits in.
    """
    weights = torch.zeros(len(generators), *shape)
    if init == "zero":
        return weights
    for w, generator, row_ids, tokens in zip(weights, generators, rows, owned):
        bound = 1.0 / math.sqrt(len(tokens))
        w[row_ids.view(-1, 1), tokens.view(1, -1)] = (
            torch.rand(len(row_ids), len(tokens), generator=generator) * 2 - 1
        ) * bound
    return weights


def data_streams(runs: list[RunSpec]) -> tuple[list[tuple[int, SequenceClasses]], Int[Tensor, " runs"]]:
    """The distinct (seed, setting) pairs of a batch, and the stream of each run."""
    keys = list(dict.fromkeys((r.seed, r.classes) for r in runs))
    index = {key: i for i, key in enumerate(keys)}
    return keys, torch.tensor([index[(r.seed, r.classes)] for r in runs])


def train_runs(
    runs: list[RunSpec], settings: TrainSettings = TrainSettings(), *, progress: bool = False
) -> TrainedRuns:
    """SGD on every run at once: separate learning rates for Y and Z, one autograd pass per step for all runs."""
    if not runs:
        raise InterpError("train_runs(runs=[]): give at least one RunSpec.")
    layout = layout_for([r.classes for r in runs])
    streams, stream_of_run = data_streams(runs)
    generators = run_generators([seed for seed, _ in streams])
    stream_classes = torch.tensor([spec.n_classes for _, spec in streams])
    vocab_mask = torch.stack([layout.vocab_mask(spec) for _, spec in streams])
    owned = [mask.nonzero().flatten() for mask in vocab_mask]
    queries = [torch.arange(spec.n_queries) for _, spec in streams]
    Y = _initial_weights(generators, owned, owned, (layout.d_vocab, layout.d_vocab), settings.init)[
        stream_of_run
    ].requires_grad_()
    Z = _initial_weights(generators, queries, owned, (layout.max_queries, layout.d_vocab), settings.init)[
        stream_of_run
    ].requires_grad_()
    vocab_mask = vocab_mask[stream_of_run]
    eta_y = torch.tensor([r.eta_y for r in runs]).view(-1, 1, 1)
    eta_z = torch.tensor([r.eta_z for r in runs]).view(-1, 1, 1)
    velocity_y = velocity_z = None
    class_query_rows = torch.arange(layout.max_classes) // layout.next_per_query

    losses, records, record_steps = [], [Z.detach()[:, class_query_rows].clone()], [0]
    for step in tqdm(range(1, settings.steps + 1), desc="scan-snap SGD", disable=not progress):
        batch = sample_batch(layout, runs[0].classes, generators, stream_classes, settings.batch_size, settings.seq_len)
        counts, classes = layout.slot_counts(batch.context)[stream_of_run], batch.classes[stream_of_run]
        logits = scan_snap_logits(Y, Z, counts, classes, layout, vocab_mask)
        labels = layout.next_of_class(classes)
        per_run = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(len(runs), -1).mean(-1)
        grad_y, grad_z = torch.autograd.grad(per_run.sum(), (Y, Z))
        with torch.no_grad():
            # torch.optim.SGD's momentum rule, per run: v <- mu v + g (v = g on the first step); w <- w - eta v
            if settings.momentum and step > 1:
                grad_y = velocity_y.mul_(settings.momentum).add_(grad_y)
                grad_z = velocity_z.mul_(settings.momentum).add_(grad_z)
            elif settings.momentum:
                velocity_y, velocity_z = grad_y, grad_z
            Y.addcmul_(eta_y, grad_y, value=-1.0)
            Z.addcmul_(eta_z, grad_z, value=-1.0)
        losses.append(per_run.detach())
        if step % settings.record_every == 0 or step == settings.steps:
            records.append(Z.detach()[:, class_query_rows].clone())
            record_steps.append(step)
    probs = torch.stack([layout.conditional_probs(spec) for _, spec in streams]).float()[stream_of_run]
    n_classes = stream_classes[stream_of_run]
    return TrainedRuns(
        Y.detach(), Z.detach(), torch.stack(losses), record_steps, torch.stack(records), layout, probs, n_classes
    )
