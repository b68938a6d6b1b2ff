"""The dark-matter pipeline's settings (what it reads of a config) and its data: the activation store split into fit and held-out rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.corpus import document_separator, token_batches
from interp.errors import InterpError
from interp.models import cache_root
from interp.store import build_store
from sae.darkmatter.synthetic import SyntheticSpec
from sae.train import TrainConfig


class DarkMatterSettings(Protocol):
    """The fields of experiments.dark_matter.DarkMatterConfig the pipeline reads (documented there)."""

    model: str | dict | None
    layer: int
    n_tokens: int
    seq_len: int
    store_dtype: str
    fit_fraction: float
    widths: tuple[int, ...]
    k: int
    skip_positions: int
    training: TrainConfig
    short_training: TrainConfig
    grid_training: TrainConfig | None
    grid_widths: tuple[int, ...]
    grid_positions_dropped: tuple[int, ...]
    grid_ks: tuple[int, ...]
    grid_fit_tokens: int
    grid_ci_target: float | None
    extra_heldout_seqs: int
    bootstrap: int
    ce_minutes_per_width: float
    linear_fit_tokens: int
    focus_width: int | None
    pursuit_tokens: int
    downstream_seqs: int
    feature_threshold: float
    synthetic: SyntheticSpec
    cache_dir: str | None
    seed: int


class Rows(NamedTuple):
    """One side of the split, rows in sequence order (positions skip_positions.. of each sequence)."""

    tokens: Int[Tensor, " n"]
    pos: Int[Tensor, " n"]  # each row's position in its sequence
    x: Float[Tensor, "n d"]  # the SAE's site, blocks.{layer}.hook_resid_post
    x_prev: Float[Tensor, "n d"]  # blocks.{layer - 1}.hook_resid_post
    attn: Float[
        Tensor, "m d"
    ]  # blocks.{layer}.hook_attn_out: fit side only on the linear-fit rows (m = linear_fit_tokens)
    mlp: Float[Tensor, "m d"]
    seq: Int[Tensor, " n"] | None  # held-out side: which held-out sequence (0..) a row is in, the bootstrap's clusters
    doc: Int[Tensor, " n"] | None = None  # held-out side: each row's document in the stream (None: no documents)


class ExtraHeld(NamedTuple):
    """Held-out rows from corpus sequences after the store's (text neither the SAEs nor any probe saw), positions skip_positions.. of each."""

    tokens: Int[Tensor, " n"]
    pos: Int[Tensor, " n"]
    x: Float[Tensor, "n d"]  # blocks.{layer}.hook_resid_post only
    seq: Int[Tensor, " n"]  # which extra sequence (0..) a row is in: the bootstrap's clusters
    stream_seqs: Int[Tensor, " s"]  # each extra sequence's index in the corpus stream (past the store's)
    doc: Int[Tensor, " n"] | None = None  # each row's document (ids after the store's; None: no documents)


class Split(NamedTuple):
    fit: Rows
    held: Rows
    tokens: Int[Tensor, " n_tokens"]  # the whole store's tokens in stream order
    held_seqs: Int[Tensor, " n_held_seqs"]  # ids of the held-out sequences
    extra: ExtraHeld | None = None  # more held-out sequences from past the store (config.extra_heldout_seqs; None: 0)


def model_tag(spec: str | dict | None) -> str:
    if spec is None:
        return "smollm2-135m-instruct"
    text = json.dumps(spec, sort_keys=True, default=str) if isinstance(spec, dict) else str(spec)
    return f"{Path(text).name[:40] if not isinstance(spec, dict) else 'config'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def cache_folder(config: DarkMatterSettings) -> Path:
    """Where the store, SAEs and spliced losses of this model, layer and store size live."""
    root = Path(config.cache_dir).expanduser() if config.cache_dir else cache_root() / "dark_matter"
    return (
        root
        / f"{model_tag(config.model)}-L{config.layer}-{config.n_tokens}tok-seq{config.seq_len}-{config.store_dtype}"
    )


def split_sequences(n_seqs: int, fit_fraction: float, seed: int) -> tuple[Int[Tensor, " fit"], Int[Tensor, " held"]]:
    """Disjoint fit and held-out sequence ids, a seeded random split: in stream order the held-out part would be other documents."""
    order = torch.randperm(n_seqs, generator=torch.Generator().manual_seed(seed))
    cut = int(n_seqs * fit_fraction)
    return order[:cut].sort().values, order[cut:].sort().values


def _corpus_tokens(model, config: DarkMatterSettings) -> Int[Tensor, "seqs pos"] | None:
    """The corpus for the store: the default text (None), or seeded random ids for a config model without a tokenizer."""
    if model.tokenizer is not None:
        return None
    n_seqs = -(-config.n_tokens // config.seq_len)
    return torch.randint(
        0, model.cfg.d_vocab, (n_seqs, config.seq_len), generator=torch.Generator().manual_seed(0)
    )  # fixed: the corpus, not the run's seed


def document_ids(tokens: Int[Tensor, " n"], separator: int) -> Int[Tensor, " n"]:
    """Each token's document in a packed stream: the number of separators before it (a separator belongs to the document it ends)."""
    ends = (tokens == separator).long()
    return ends.cumsum(0) - ends


def _separator(model) -> int | None:
    return None if model.tokenizer is None else document_separator(model.tokenizer)


def stream_after_store(
    model, config: DarkMatterSettings, store_tokens: Int[Tensor, "seqs pos"], count: int
) -> tuple[Int[Tensor, "m pos"], Int[Tensor, " m"]]:
    """Up to `count` sequences of the corpus's packed stream after the store's, from the first that starts in a document the store has no
    token of, and their indices in the stream.

    The store holds the stream's first sequences (build_store packs the corpus deterministically); the stream is replayed and checked to
    agree with the store's tokens. The document that runs across the store's end is skipped: every sequence up to and including the first
    one holding a document separator. Without a tokenizer (seeded random ids) the generator continues after the store's draw.
    """
    n_store = len(store_tokens)
    if model.tokenizer is None:
        generator = torch.Generator().manual_seed(0)
        store_draw = torch.randint(0, model.cfg.d_vocab, (n_store, config.seq_len), generator=generator)
        if not torch.equal(store_draw, store_tokens):
            raise InterpError(
                "stream_after_store: the store's tokens are not the seeded random corpus; rebuild the store (delete its folder)."
            )
        after = torch.randint(0, model.cfg.d_vocab, (count, config.seq_len), generator=generator)
        return after, torch.arange(n_store, n_store + count)
    separator = document_separator(model.tokenizer)
    rows, seen, start = [], 0, None
    for batch in token_batches(model, None, config.seq_len, 64):
        for row in batch:
            if seen < n_store:
                if seen == n_store - 1 and not torch.equal(row, store_tokens[-1]):
                    raise InterpError(
                        f"stream_after_store: sequence {seen} of the corpus stream differs from the store's last; the corpus changed "
                        "since the store was built. Rebuild the store (delete its folder)."
                    )
            elif start is None:
                if bool((row == separator).any()):
                    start = seen + 1  # the next sequence's tokens all belong to documents that begin after the store
            else:
                rows.append(row)
            seen += 1
            if len(rows) == count:
                break
        if len(rows) == count:
            break
    if seen < n_store:
        raise InterpError(
            f"stream_after_store: the corpus has {seen} sequences, fewer than the store's {n_store}; rebuild the store."
        )
    if len(rows) < 2:
        raise InterpError(
            f"extra_heldout_seqs={count}: the corpus has {len(rows)} whole sequences after the store's; use extra_heldout_seqs=0."
        )
    return torch.stack(rows), torch.arange(start, start + len(rows))


def load_extra_held(
    model, config: DarkMatterSettings, cache: Path, store_tokens: Int[Tensor, " n_tokens"]
) -> ExtraHeld:
    """The extra held-out sequences' site activations, stored (resumable) under cache/heldout_extra-... on first use; document ids
    numbered on from the store's (the extra sequences start in a document the store has no token of)."""
    seqs = store_tokens.reshape(-1, config.seq_len)
    tokens, stream_seqs = stream_after_store(model, config, seqs, config.extra_heldout_seqs)
    name = f"blocks.{config.layer}.hook_resid_post"
    store = build_store(
        model,
        [name],
        tokens,
        cache / f"heldout_extra-from{int(stream_seqs[0])}-{len(tokens)}seqs",
        tokens.numel(),
        seq_len=config.seq_len,
        dtype=getattr(torch, config.store_dtype),
    )
    positions = torch.arange(config.skip_positions, config.seq_len)
    rows = (torch.arange(len(tokens))[:, None] * config.seq_len + positions).reshape(-1)
    separator = _separator(model)
    doc = (
        None
        if separator is None
        else (document_ids(tokens.reshape(-1), separator) + int(document_ids(store_tokens, separator)[-1]) + 1)[rows]
    )
    return ExtraHeld(
        store.tokens().long()[rows],
        positions.repeat(len(tokens)),
        store.activations(name)[rows],
        torch.arange(len(tokens)).repeat_interleave(len(positions)),
        stream_seqs,
        doc,
    )


def load_split(model, config: DarkMatterSettings, cache: Path) -> Split:
    """Fit and held-out rows of each stored site (the store built on first use), one site in memory at a time; attn/mlp only on the linear-fit rows."""
    names = dict(
        x=f"blocks.{config.layer}.hook_resid_post",
        x_prev=f"blocks.{config.layer - 1}.hook_resid_post",
        attn=f"blocks.{config.layer}.hook_attn_out",
        mlp=f"blocks.{config.layer}.hook_mlp_out",
    )
    store = build_store(
        model,
        list(names.values()),
        _corpus_tokens(model, config),
        cache / "store",
        config.n_tokens,
        seq_len=config.seq_len,
        dtype=getattr(torch, config.store_dtype),
    )
    tokens = store.tokens().long()
    fit_seqs, held_seqs = split_sequences(len(tokens) // config.seq_len, config.fit_fraction, config.seed)
    positions = torch.arange(config.skip_positions, config.seq_len)
    fit_rows, held_rows = ((seqs[:, None] * config.seq_len + positions).reshape(-1) for seqs in (fit_seqs, held_seqs))
    linear_rows = fit_rows[: config.linear_fit_tokens]
    fit, held = {}, {}
    for key, name in names.items():
        acts = store.activations(name)
        fit[key] = acts[linear_rows if key in ("attn", "mlp") else fit_rows]
        held[key] = acts[held_rows]
        del acts
    return Split(
        Rows(tokens[fit_rows], positions.repeat(len(fit_seqs)), seq=None, **fit),
        Rows(
            tokens[held_rows],
            positions.repeat(len(held_seqs)),
            seq=torch.arange(len(held_seqs)).repeat_interleave(len(positions)),
            doc=None if _separator(model) is None else document_ids(tokens, _separator(model))[held_rows],
            **held,
        ),
        tokens,
        held_seqs,
        load_extra_held(model, config, cache, tokens) if config.extra_heldout_seqs else None,
    )
