"""Beyond the toy: the same sequence classes through a standard 1-layer TransformerLens transformer.

Ordinary parametrisation (learned embeddings, W_Q/W_K/W_V/W_O, LayerNorm, unembedding, optionally an
MLP), trained with Adam on the next token at the last position. TransformerLens 3.9 has no
"no positional embedding" option (standard / shortformer / rotary / alibi / relative bias all carry
position), so the model uses "standard" with W_pos zeroed and frozen: the residual stream then
carries token identity only, as the paper assumes.

What we read is the last position's attention pattern (blocks.0.attn.hook_pattern), pooled per slot
(common tokens, distinct tokens by rank, the query itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuits.scan_snap.data import Batch, SequenceClasses, TokenLayout, layout_for, run_generators, sample_batch
from interp.errors import InterpError

PATTERN_HOOK = "blocks.0.attn.hook_pattern"


@dataclass(frozen=True)
class TransformerSettings:
    d_model: int = 32
    attn_only: bool = True
    steps: int = 200
    lr: float = 3e-3
    batch_size: int = 128
    seq_len: int = 128
    record_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_model", "steps", "batch_size", "record_every"):
            if getattr(self, name) < 1:
                raise InterpError(f"TransformerSettings({name}={getattr(self, name)}): must be at least 1.")
        if self.seq_len < 2 or self.lr <= 0:
            raise InterpError(
                f"TransformerSettings(seq_len={self.seq_len}, lr={self.lr}): need seq_len >= 2 and lr > 0."
            )


def build_attention_transformer(d_vocab: int, n_ctx: int, settings: TransformerSettings) -> HookedTransformer:
    """A 1-layer, 1-head HookedTransformer with positional embeddings switched off (W_pos = 0, frozen)."""
    cfg = HookedTransformerConfig(
        n_layers=1,
        n_heads=1,
        d_model=settings.d_model,
        d_head=settings.d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        attn_only=settings.attn_only,
        d_mlp=None if settings.attn_only else 4 * settings.d_model,
        act_fn="relu",
        normalization_type="LN",
        positional_embedding_type="standard",
        seed=settings.seed,
    )
    model = HookedTransformer(cfg)
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
    model.pos_embed.W_pos.requires_grad_(False)
    return model


def sequences(batch: Batch) -> Float[Tensor, "batch pos"]:
    """Context tokens followed by the query token, as one token sequence per row."""
    return torch.cat([batch.context[0], batch.query[0].unsqueeze(-1)], dim=-1)


def attention_by_slot(
    pattern_last: Float[Tensor, "batch key"], batch: Batch, layout: TokenLayout
) -> Float[Tensor, "batch slots_plus_query"]:
    """Attention of the last position summed per slot; the final column is the query's own position."""
    slots = layout.token_to_slot(batch.context[0])
    n_slots = layout.n_common + layout.n_distinct
    pooled = torch.zeros(len(slots), n_slots).scatter_add_(1, slots, pattern_last[:, :-1])
    return torch.cat([pooled, pattern_last[:, -1:]], dim=-1)


class TransformerRun(NamedTuple):
    model: HookedTransformer
    frame: pd.DataFrame  # step, slot, kind, distinct_rank, attention, attention_per_occurrence, loss


def train_transformer(
    classes: SequenceClasses, settings: TransformerSettings = TransformerSettings()
) -> TransformerRun:
    """Adam on the last-position next-token loss; records the last position's attention per slot on a held-out batch."""
    layout = layout_for([classes])
    model = build_attention_transformer(layout.d_vocab, settings.seq_len, settings)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    train_stream, eval_stream = run_generators([settings.seed]), run_generators([settings.seed + 10_000])
    n_classes = torch.tensor([classes.n_classes])
    eval_batch = sample_batch(layout, classes, eval_stream, n_classes, settings.batch_size, settings.seq_len)
    eval_tokens = sequences(eval_batch)
    eval_counts = layout.slot_counts(eval_batch.context[0])
    records = []

    def record(step: int, loss: float) -> None:
        with torch.no_grad():
            _, cache = model.run_with_cache(eval_tokens, names_filter=PATTERN_HOOK)
        by_slot = attention_by_slot(cache[PATTERN_HOOK][:, 0, -1, :], eval_batch, layout)
        per_occurrence = (by_slot[:, :-1] / eval_counts.clamp_min(1)).mean(0)
        mean = by_slot.mean(0)
        for slot in range(len(mean)):
            is_query = slot == len(mean) - 1
            kind = "query" if is_query else ("common" if slot < layout.n_common else "distinct")
            records.append(
                dict(
                    step=step,
                    slot=slot,
                    kind=kind,
                    distinct_rank=slot - layout.n_common if kind == "distinct" else -1,
                    attention=float(mean[slot]),
                    attention_per_occurrence=float("nan") if is_query else float(per_occurrence[slot]),
                    loss=loss,
                )
            )

    record(0, float("nan"))
    for step in range(1, settings.steps + 1):
        batch = sample_batch(layout, classes, train_stream, n_classes, settings.batch_size, settings.seq_len)
        logits = model(sequences(batch))[:, -1]
        loss = F.cross_entropy(logits, batch.label[0])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % settings.record_every == 0 or step == settings.steps:
            record(step, loss.item())
    return TransformerRun(model, pd.DataFrame(records))
