"""The downstream cost of each error part: splice Sae(x), Sae(x) + LinearError or Sae(x) + NonlinearError into the forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import ShapeMismatchError
from interp.fileio import atomic_path
from interp.hooks import run_with_hooks, to_tokens
from interp.sites import Site, as_site
from sae.darkmatter.regression import LinearMap
from sae.models import Sae

VARIANTS = ("clean", "sae", "sae_plus_linear", "sae_plus_nonlinear")


def _spliced(x: Tensor, sae: Sae, error_map: LinearMap, variant: str) -> Tensor:
    if variant == "sae":
        return sae(x)
    linear = error_map.predict(x).to(x.dtype)
    # Sae(x) + NonlinearError = Sae(x) + (x - Sae(x) - xA) = x - xA: the linear error is what is left.
    return sae(x) + linear if variant == "sae_plus_linear" else x - linear


def _hook(site: Site, sae: Sae, error_map: LinearMap, variant: str, from_position: int):
    index_from = (slice(None), slice(from_position, None))  # [batch, pos, d]: a whole per-token activation

    def hook(act: Tensor, hook) -> Tensor:
        region = act[index_from]
        if region.shape[-1] != sae.cfg.d_in:
            raise ShapeMismatchError(
                f"{site}: activations are {region.shape[-1]} wide but the SAE has d_in={sae.cfg.d_in}; splice an SAE trained at this site."
            )
        act = act.clone()
        act[index_from] = (
            _spliced(region.reshape(-1, region.shape[-1]), sae, error_map, variant).reshape(region.shape).to(act.dtype)
        )
        return act

    return hook


@torch.no_grad()
def spliced_losses(
    model: HookedTransformer,
    tokens: Int[Tensor, "seqs pos"],
    sae: Sae,
    site: Site | str,
    error_map: LinearMap,
    *,
    batch_size: int = 8,
    from_position: int = 0,
    clean: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Next-token CE per token (columns seq, pos, token, ce_clean, ce_sae, ce_sae_plus_linear, ce_sae_plus_nonlinear).

    Positions before `from_position` keep their clean activations and, unaffected, are left out of the rows.
    clean: an earlier result on the same tokens (another SAE's, say); its ce_clean is reused instead of running the clean model again
    (a quarter of the work). Its seq, pos and token columns must be these tokens', else the clean model runs.
    """
    site = as_site(model, site)
    if not isinstance(from_position, int) or not 0 <= from_position < tokens.shape[-1] - 1:
        raise ShapeMismatchError(
            f"from_position={from_position!r}: must be an integer in 0..{tokens.shape[-1] - 2} for sequences of {tokens.shape[-1]} tokens."
        )
    if site.head is not None or site.neuron is not None or site.position is not None or site.layout.pos_axis != 1:
        raise ShapeMismatchError(
            f"site={site}: splice at a whole per-token activation (no head, neuron or position), the one the SAE was trained on."
        )
    tokens = to_tokens(model, tokens, argument="tokens")
    # A residual-stream site of a HookedTransformer: run the layers up to it once and each variant from there (the same numbers as
    # hooking every variant's full forward pass, about a quarter less work at layer 6 of 30).
    resume_at = (
        site.layer + 1
        if isinstance(model, HookedTransformer) and site.hook_name == f"blocks.{site.layer}.hook_resid_post"
        else None
    )
    rows = _rows(tokens, from_position)
    reuse = (
        clean is not None
        and len(clean) == len(rows)
        and all(np.array_equal(clean[c].to_numpy(), rows[c].to_numpy()) for c in ("seq", "pos", "token"))
    )
    frames = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        losses = {}
        resid = model(batch, stop_at_layer=resume_at) if resume_at is not None else None
        for variant in VARIANTS[1:] if reuse else VARIANTS:
            if resume_at is not None:
                act = resid if variant == "clean" else _hook(site, sae, error_map, variant, from_position)(resid, None)
                logits = model(act, start_at_layer=resume_at)
            else:
                logits = (
                    model(batch)
                    if variant == "clean"
                    else run_with_hooks(model, batch, [(site, _hook(site, sae, error_map, variant, from_position))])
                )
            losses[f"ce_{variant}"] = -logits[:, :-1].log_softmax(-1).gather(-1, batch[:, 1:, None])[..., 0].double()
        b, p = batch[:, from_position + 1 :].shape
        frame = pd.DataFrame(
            dict(
                seq=torch.arange(start, start + b).repeat_interleave(p).numpy(),
                pos=torch.arange(from_position, from_position + p).repeat(b).numpy(),
                token=batch[:, from_position:-1].reshape(-1).numpy(),
            )
        )
        frames.append(frame.assign(**{k: v[:, from_position:].reshape(-1).numpy() for k, v in losses.items()}))
    out = pd.concat(frames, ignore_index=True)
    if reuse:
        out.insert(3, "ce_clean", clean.ce_clean.to_numpy())
    return out


def resumable_spliced_losses(
    parts: Path,
    model: HookedTransformer,
    tokens: Int[Tensor, "seqs pos"],
    sae: Sae,
    site: Site | str,
    error_map: LinearMap,
    *,
    from_position: int = 0,
    clean: pd.DataFrame | None = None,
    chunk_seqs: int = 64,
) -> pd.DataFrame:
    """spliced_losses a chunk of `chunk_seqs` sequences at a time, each chunk saved under `parts` (one parquet per chunk): a killed run
    resumes from the chunks saved. The same frame as one spliced_losses call (the chunks hold whole batches of 8 sequences).
    clean: as in spliced_losses, for all of `tokens` (sliced per chunk here)."""
    if chunk_seqs < 1 or chunk_seqs % 8:
        raise ShapeMismatchError(
            f"chunk_seqs={chunk_seqs}: must be a positive multiple of spliced_losses' batch of 8 sequences."
        )
    parts.mkdir(parents=True, exist_ok=True)
    frames = []
    for start in range(0, len(tokens), chunk_seqs):
        part = parts / f"seqs{start:06d}-{min(start + chunk_seqs, len(tokens)):06d}.parquet"
        if part.exists():
            frames.append(pd.read_parquet(part))
            continue
        chunk_clean = None
        if clean is not None:
            inside = (clean.seq >= start) & (clean.seq < start + chunk_seqs)
            chunk_clean = clean[inside].assign(seq=clean.seq[inside] - start).reset_index(drop=True)
        losses = spliced_losses(
            model,
            tokens[start : start + chunk_seqs],
            sae,
            site,
            error_map,
            from_position=from_position,
            clean=chunk_clean,
        )
        losses["seq"] += start
        with atomic_path(part) as tmp:
            losses.to_parquet(tmp)
        frames.append(losses)
    return pd.concat(frames, ignore_index=True)


def _rows(tokens: Int[Tensor, "seqs pos"], from_position: int) -> pd.DataFrame:
    """The seq, pos and token columns spliced_losses writes for `tokens`."""
    b, p = tokens[:, from_position + 1 :].shape
    return pd.DataFrame(
        dict(
            seq=torch.arange(b).repeat_interleave(p).numpy(),
            pos=torch.arange(from_position, from_position + p).repeat(b).numpy(),
            token=tokens[:, from_position:-1].reshape(-1).numpy(),
        )
    )


def ce_shares(losses: pd.DataFrame) -> dict[str, float]:
    """Mean CE of each variant and the share of the SAE's CE increase that each error part, left in place, still causes.

    ce_share_nonlinear: (CE[Sae + LinearError] - CE[clean]) / (CE[Sae] - CE[clean]); ce_share_linear likewise.
    """
    mean = {v: float(losses[f"ce_{v}"].mean()) for v in VARIANTS}
    increase = mean["sae"] - mean["clean"]
    return dict(
        **{f"ce_{v}": m for v, m in mean.items()},
        ce_increase_sae=increase,
        ce_share_nonlinear=(mean["sae_plus_linear"] - mean["clean"]) / increase,
        ce_share_linear=(mean["sae_plus_nonlinear"] - mean["clean"]) / increase,
    )
