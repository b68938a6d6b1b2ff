"""Browse latents: the corpus contexts on which sampled latents fire hardest, as a tidy DataFrame."""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import OutOfRangeError
from interp.hooks import cache_sites
from interp.sites import Site, as_site
from sae.models import Sae


@torch.no_grad()
def top_activating_contexts(
    model: HookedTransformer,
    sae: Sae,
    site: Site | str,
    tokens: Int[Tensor, "seqs pos"],
    latents: list[int],
    *,
    top: int = 10,
    window: int = 8,
    batch_size: int = 16,
) -> pd.DataFrame:
    """One row per (latent, rank): the `top` tokens of `tokens` where the latent is largest, with `window` tokens of context.

    Columns: latent, rank, seq, pos, activation, token, context_before, token_text, context_after
    (the dashboard highlights token_text between the two contexts).
    """
    site = as_site(model, site)
    bad = [j for j in latents if not 0 <= j < sae.cfg.d_sae]
    if bad:
        raise OutOfRangeError(
            f"latents {bad[:5]} are out of range; this SAE has d_sae={sae.cfg.d_sae} latents, 0..{sae.cfg.d_sae - 1}."
        )
    index = torch.tensor(latents, dtype=torch.long)
    chunks = []
    for start in range(0, len(tokens), batch_size):
        acts = cache_sites(model, tokens[start : start + batch_size], [site])[site]
        b, p = acts.shape[:2]
        chunks.append(sae.encode(acts.reshape(b * p, -1))[:, index].reshape(b, p, len(latents)))
    acts = torch.cat(chunks)  # [seqs, pos, len(latents)]
    seqs, pos = acts.shape[:2]
    values, flat = acts.reshape(seqs * pos, -1).topk(min(top, seqs * pos), dim=0)
    rows = []
    for column, latent in enumerate(latents):
        for rank in range(values.shape[0]):
            value = float(values[rank, column])
            if value <= 0:
                break
            s, q = divmod(int(flat[rank, column]), pos)
            rows.append(
                dict(
                    latent=latent,
                    rank=rank,
                    seq=s,
                    pos=q,
                    activation=value,
                    token=int(tokens[s, q]),
                    context_before=_text(model, tokens[s, max(0, q - window) : q]),
                    token_text=_text(model, tokens[s, q : q + 1]),
                    context_after=_text(model, tokens[s, q + 1 : q + 1 + window // 2]),
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "latent",
            "rank",
            "seq",
            "pos",
            "activation",
            "token",
            "context_before",
            "token_text",
            "context_after",
        ],
    )


def _text(model: HookedTransformer, ids: Tensor) -> str:
    """Decoded text, or the ids themselves for a model without a tokenizer (random test models)."""
    return model.to_string(ids) if model.tokenizer is not None else "".join(f"<{int(i)}>" for i in ids)
