"""Where training batches come from: a tensor in memory, or the model run on the fly over token batches.

Both are re-iterable and deterministic (same seed, same batches), which exact resume relies on: the
trainer re-iterates the source and skips the batches already trained on. The activation store's reader
plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import InterpError, ShapeMismatchError
from interp.hooks import cache_sites
from interp.sites import Site, as_site


def flatten_site_activations(acts: Tensor, site: Site) -> Float[Tensor, "rows d_in"]:
    """[batch, pos, *width] -> [batch * pos, prod(width)]: one row per token (per-position sites keep batch)."""
    if site.position is not None:
        return acts.reshape(acts.shape[0], -1)
    return acts.reshape(acts.shape[0] * acts.shape[1], -1)


def site_width(model: HookedTransformer, site: Site | str) -> int:
    """d_in an SAE at `site` must have."""
    site = as_site(model, site)
    with torch.no_grad():
        probe = cache_sites(model, torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device), [site])[site]
    return flatten_site_activations(probe, site).shape[1]


class TensorBatches:
    """Shuffled batches from activations in memory; a new seeded permutation each epoch."""

    def __init__(self, acts: Float[Tensor, "rows d_in"], batch_size: int, seed: int = 0):
        if acts.ndim != 2:
            raise ShapeMismatchError(
                f"acts: expected [rows, d_in], got shape {tuple(acts.shape)}; flatten batch and position first."
            )
        if batch_size > len(acts):
            raise InterpError(
                f"batch_size={batch_size} exceeds the {len(acts)} rows of acts; lower batch_size or supply more activations."
            )
        self.acts, self.batch_size, self.seed = acts, batch_size, seed

    def __iter__(self) -> Iterator[Tensor]:
        epoch = 0
        while True:
            order = torch.randperm(len(self.acts), generator=torch.Generator().manual_seed(self.seed + epoch))
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield self.acts[order[start : start + self.batch_size]]
            epoch += 1


class ModelBatches:
    """Activations at `site` computed from `tokens` as training asks for them, shuffled within each chunk of sequences.

    seqs_per_chunk sequences are run at once; their rows are shuffled (seeded) and cut into batches, the
    remainder carried to the next chunk. Epochs repeat over the tokens with a new shuffle.
    `site` may be a pair (input site, output site) for a transcoder: each row is the two activations side by side.
    """

    def __init__(
        self,
        model: HookedTransformer,
        tokens: Int[Tensor, "seqs pos"],
        site: Site | str,
        batch_size: int,
        *,
        seqs_per_chunk: int = 64,
        seed: int = 0,
    ):
        self.sites = [as_site(model, s) for s in site] if isinstance(site, (tuple, list)) else [as_site(model, site)]
        self.model, self.site = model, self.sites[0]
        if tokens.ndim != 2:
            raise ShapeMismatchError(f"tokens: expected [seqs, pos], got shape {tuple(tokens.shape)}.")
        self.tokens, self.batch_size, self.seqs_per_chunk, self.seed = tokens, batch_size, seqs_per_chunk, seed

    def __iter__(self) -> Iterator[Tensor]:
        epoch, carry = 0, None
        while True:
            for start in range(0, len(self.tokens), self.seqs_per_chunk):
                chunk = self.tokens[start : start + self.seqs_per_chunk]
                acts = cache_sites(self.model, chunk, self.sites, micro_batch=len(chunk))  # the chunk bounds memory
                rows = torch.cat([flatten_site_activations(acts[s], s) for s in self.sites], dim=1)
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 10_007 + start)
                rows = rows[torch.randperm(len(rows), generator=gen)]
                rows = rows if carry is None else torch.cat([carry, rows])
                n_full = len(rows) // self.batch_size * self.batch_size
                yield from rows[:n_full].split(self.batch_size)
                carry = rows[n_full:]
            epoch += 1


class StoreBatches:
    """Batches of one site from an activation store (interp.store), a new shuffle each epoch (seed + epoch).

    Every process reads the same global batches and the trainer takes its slice, so a torchrun run
    equals a one-process run; the store's rank split would give each process different data.
    """

    def __init__(self, store, site: Site | str, batch_size: int, *, seed: int = 0, shards_in_memory: int = 2):
        self.store, self.site, self.batch_size, self.seed, self.shards_in_memory = (
            store,
            site,
            batch_size,
            seed,
            shards_in_memory,
        )
        if store.n_tokens < batch_size:
            raise InterpError(
                f"batch_size={batch_size} exceeds the {store.n_tokens} tokens of the store at {store.path}; lower batch_size or build a bigger store."
            )

    def __iter__(self) -> Iterator[Tensor]:
        epoch = 0
        while True:
            for batch in self.store.iter_batches(
                self.site,
                self.batch_size,
                shuffle=True,
                seed=self.seed + epoch,
                drop_last=True,
                shards_in_memory=self.shards_in_memory,
            ):
                yield batch.reshape(len(batch), -1)
            epoch += 1
