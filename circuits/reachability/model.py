"""The 2-layer GPT-2-style HookedTransformer and its forward with continuous thoughts.

A continuous thought is the final hidden state (after ln_final) at the previous position, fed back
as the next position's input embedding (Coconut). The forward runs on TransformerLens's key-value
cache, so k thoughts cost k one-position steps after the prefix, and every hook of the model fires
on the way (hook_embed carries the thought at a latent position).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.utils.parametrize
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer, TransformerLensKeyValueCache

from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError, ShapeMismatchError
from interp.models import load_model


@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    tied_embeddings: bool = True  # GPT-2's W_U = W_E^T: a thought that predicts node v points along v's input embedding


class _TransposedEmbedding(torch.nn.Module):
    """Parametrization W_U := W_E^T (the unembedding's own tensor is kept by torch but unused)."""

    def __init__(self, embed: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "embed", embed)  # a plain attribute, not a submodule: W_E stays registered once

    def forward(self, unused_W_U: Tensor) -> Tensor:
        return self.embed.W_E.T


def build_model(layout: SequenceLayout, config: ModelConfig, seed: int, n_ctx: int | None = None) -> HookedTransformer:
    """A GPT-2-style model (LayerNorm, learned absolute positions, GELU, tied embeddings by default) with random weights.

    n_ctx: positions (default the layout's seq_len; longer for the dense lookup sequences of lookup.py)."""
    if n_ctx is not None and n_ctx < layout.seq_len:
        raise InterpError(f"n_ctx={n_ctx} is shorter than the layout's seq_len={layout.seq_len}; pass None or more.")
    spec = dict(
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        d_head=config.d_model // config.n_heads,
        d_mlp=config.d_mlp,
        d_vocab=layout.d_vocab,
        n_ctx=n_ctx or layout.seq_len,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        default_prepend_bos=False,
        model_name="reachability-gpt2",
    )
    model = load_model(spec, seed=seed)
    if config.tied_embeddings:
        torch.nn.utils.parametrize.register_parametrization(model.unembed, "W_U", _TransposedEmbedding(model.embed))
    model.train()
    return model


class ThoughtRun(NamedTuple):
    logits: Float[Tensor, "batch pos d_vocab"]
    thoughts: Float[Tensor, "batch n_latent d_model"]  # thought c is the input at the c-th latent position
    residual: Float[Tensor, "batch pos d_model"]  # the inputs (embedding + position), thoughts in place


def _check_gpt2_style(model: HookedTransformer) -> None:
    if model.cfg.positional_embedding_type != "standard":
        raise InterpError(
            f"continuous thoughts need learned absolute positions; this model has positional_embedding_type={model.cfg.positional_embedding_type!r}."
        )


def _step(model: HookedTransformer, residual: Tensor, cache: TransformerLensKeyValueCache) -> tuple[Tensor, Tensor]:
    """Run new positions through every block on the cache; return (final hidden state, logits)."""
    for block, entry in zip(model.blocks, cache.entries):
        residual = block(residual, past_kv_cache_entry=entry)
    hidden = model.ln_final(residual)
    return hidden, model.unembed(hidden)


def _embed_tokens(model: HookedTransformer, tokens: Tensor, offset: int) -> Tensor:
    return model.hook_embed(model.embed(tokens)) + model.hook_pos_embed(model.pos_embed(tokens, offset))


def _embed_vectors(
    model: HookedTransformer, vectors: Float[Tensor, "batch 1 d_model"], tokens: Tensor, offset: int
) -> Tensor:
    return model.hook_embed(vectors) + model.hook_pos_embed(model.pos_embed(tokens, offset))


def continuous_forward(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], first_latent: int, n_latent: int | Int[Tensor, " batch"]
) -> ThoughtRun:
    """Forward with tokens[:, first_latent : first_latent + n_latent] replaced by continuous thoughts.

    n_latent is one count for the batch or one per sample (the authors' curriculum: as many thoughts as
    the sample's path is long). With per-sample counts, thoughts[:, c] of a sample with fewer than c + 1
    latents is the hidden state at an ordinary token position: callers mask it out.
    """
    _check_gpt2_style(model)
    if tokens.ndim != 2:
        raise ShapeMismatchError(f"tokens: expected shape [batch, pos], got {tuple(tokens.shape)}.")
    batch, seq_len = tokens.shape
    per_sample = (
        torch.as_tensor(n_latent).long().expand(batch)
        if not isinstance(n_latent, int)
        else torch.full((batch,), n_latent)
    )
    if per_sample.shape != (batch,):
        raise ShapeMismatchError(
            f"n_latent: expected an int or shape [{batch}], got {tuple(torch.as_tensor(n_latent).shape)}."
        )
    most = int(per_sample.max()) if batch else 0
    if not (1 <= first_latent and int(per_sample.min()) >= 0 and first_latent + most <= seq_len):
        raise InterpError(
            f"first_latent={first_latent}, n_latent={n_latent if isinstance(n_latent, int) else most}: the latents must start after position 0 and end by seq_len={seq_len}."
        )
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch)
    inputs = [_embed_tokens(model, tokens[:, :first_latent], 0)]
    hidden, logits = _step(model, inputs[0], cache)
    all_logits, thoughts = [logits], []
    for j, pos in enumerate(range(first_latent, first_latent + most)):
        thoughts.append(hidden[:, -1])
        fed = hidden[:, -1:]
        if int(per_sample.min()) <= j:  # some samples read an ordinary token here
            fed = torch.where((per_sample > j)[:, None, None], fed, model.embed(tokens[:, pos : pos + 1]))
        inputs.append(_embed_vectors(model, fed, tokens[:, pos : pos + 1], pos))
        hidden, logits = _step(model, inputs[-1], cache)
        all_logits.append(logits)
    rest = first_latent + most
    if rest < seq_len:
        inputs.append(_embed_tokens(model, tokens[:, rest:], rest))
        all_logits.append(_step(model, inputs[-1], cache)[1])
    empty = tokens.new_zeros((batch, 0, model.cfg.d_model), dtype=model.cfg.dtype)
    return ThoughtRun(torch.cat(all_logits, 1), torch.stack(thoughts, 1) if thoughts else empty, torch.cat(inputs, 1))


@torch.no_grad()
def greedy_chain(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    first: int,
    n_steps: int,
    allowed: Int[Tensor, " n_allowed"],
) -> Int[Tensor, "batch pos"]:
    """tokens with positions first..first+n_steps-1 filled greedily (choices restricted to `allowed` ids), one cached step each."""
    _check_gpt2_style(model)
    tokens = tokens.clone()
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, tokens.shape[0])
    _, logits = _step(model, _embed_tokens(model, tokens[:, :first], 0), cache)
    for pos in range(first, first + n_steps):
        tokens[:, pos] = allowed[logits[:, -1, allowed].argmax(-1)]
        _, logits = _step(model, _embed_tokens(model, tokens[:, pos : pos + 1], pos), cache)
    return tokens
