"""How good an SAE is at its site: reconstruction (L0, FVU, MSE, cosine), downstream (CE loss recovered, KL), latents.

The SAE is spliced into the model with a hook at its site. `keep_error=True` adds back the SAE's error
x - Sae(x) computed before any latent edit, so interventions on latents run with the error held fixed.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import ShapeMismatchError
from interp.hooks import run_with_hooks, to_tokens
from interp.sites import Site, as_site
from sae.models import Sae

LatentEdit = Callable[[Float[Tensor, "rows d_sae"]], Float[Tensor, "rows d_sae"]]


class EvalResult(NamedTuple):
    metrics: dict[str, float]
    per_token: pd.DataFrame  # seq, pos, token, x_norm, error_norm, l0, ce_clean, ce_sae, kl
    latents: pd.DataFrame  # latent, firing_count, density (fraction of tokens it is active on)


def splice_hook(
    sae: Sae, site: Site, *, keep_error: bool = False, edit: LatentEdit | None = None, record: dict | None = None
):
    """A hook that replaces the site's activation with the SAE's reconstruction (plus its error if keep_error).

    record, when given, receives x, sae_out and acts of the last call (rows = tokens).
    """
    index = site.index()

    def hook(act: Tensor, hook) -> Tensor:
        region = act[index]
        lead = region.shape[:1] if site.position is not None else region.shape[:2]
        width = region.numel() // lead.numel()
        if width != sae.cfg.d_in:
            raise ShapeMismatchError(
                f"{site}: the activation is {width} wide per token ({tuple(region.shape)}) but the SAE has d_in={sae.cfg.d_in}. Use an SAE trained at this site."
            )
        x = region.reshape(-1, width)
        acts = sae.encode(x)
        sae_out = sae.decode(acts)
        out = sae.decode(edit(acts)) if edit is not None else sae_out
        if keep_error:
            out = out + (x - sae_out)
        if record is not None:
            record.update(x=x, sae_out=sae_out, acts=acts)
        act = act.clone()
        act[index] = out.reshape(region.shape).to(act.dtype)
        return act

    return hook


def zero_hook(site: Site):
    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[site.index()] = 0
        return act

    return hook


def run_with_sae(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    sae: Sae,
    site: Site | str,
    *,
    keep_error: bool = False,
    edit: LatentEdit | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits with the SAE spliced in at `site`."""
    site = as_site(model, site)
    return run_with_hooks(model, tokens, [(site, splice_hook(sae, site, keep_error=keep_error, edit=edit))])


def _next_token_ce(logprobs: Tensor, tokens: Tensor) -> Tensor:
    return -logprobs[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]


@torch.no_grad()
def evaluate_sae(
    model: HookedTransformer, sae: Sae, site: Site | str, tokens: Int[Tensor, "seqs pos"], *, batch_size: int = 8
) -> EvalResult:
    """Reconstruction and downstream metrics of `sae` at `site` over `tokens` (rows of equal length)."""
    site = as_site(model, site)
    tokens = to_tokens(model, tokens, argument="tokens")
    sums = dict(
        sq_err=0.0,
        x_sq=0.0,
        x_sum=torch.zeros(sae.cfg.d_in, dtype=torch.float64),
        cos=0.0,
        l0=0.0,
        rows=0,
        ce_clean=0.0,
        ce_sae=0.0,
        ce_zero=0.0,
        kl=0.0,
        ce_tokens=0,
    )
    firing = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    frames = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        record: dict = {}
        clean = model(batch).log_softmax(-1)
        spliced = run_with_hooks(model, batch, [(site, splice_hook(sae, site, record=record))]).log_softmax(-1)
        zeroed = run_with_hooks(model, batch, [(site, zero_hook(site))]).log_softmax(-1)
        x, x_hat, acts = record["x"].double(), record["sae_out"].double(), record["acts"]
        active = acts > 0
        firing += active.sum(0)
        err = (x - x_hat).norm(dim=-1)
        sums["sq_err"] += float(err.pow(2).sum())
        sums["x_sq"] += float(x.pow(2).sum())
        sums["x_sum"] += x.sum(0)
        sums["cos"] += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
        sums["l0"] += float(active.sum())
        sums["rows"] += len(x)
        ce = {name: _next_token_ce(lp, batch) for name, lp in (("clean", clean), ("sae", spliced), ("zero", zeroed))}
        kl = (clean.exp() * (clean - spliced)).sum(-1)[:, :-1]
        for name in ce:
            sums[f"ce_{name}"] += float(ce[name].sum())
        sums["kl"] += float(kl.sum())
        sums["ce_tokens"] += ce["clean"].numel()
        frames.append(_per_token_frame(batch, start, site, err, x.norm(dim=-1), active.sum(-1), ce, kl))
    n, n_ce = sums["rows"], sums["ce_tokens"]
    total_variance = sums["x_sq"] - float(sums["x_sum"].pow(2).sum()) / n
    ce_clean, ce_sae, ce_zero = (sums[f"ce_{k}"] / n_ce for k in ("clean", "sae", "zero"))
    metrics = dict(
        l0=sums["l0"] / n,
        fvu=sums["sq_err"] / total_variance,
        explained_variance=1 - sums["sq_err"] / total_variance,
        mse=sums["sq_err"] / (n * sae.cfg.d_in),
        cosine=sums["cos"] / n,
        ce_clean=ce_clean,
        ce_sae=ce_sae,
        ce_zero_ablation=ce_zero,
        ce_loss_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean),
        kl_sae=sums["kl"] / n_ce,
        dead_fraction=float((firing == 0).float().mean()),
        tokens=n,
    )
    latents = pd.DataFrame(
        {"latent": np.arange(sae.cfg.d_sae), "firing_count": firing.numpy(), "density": firing.numpy() / n}
    )
    return EvalResult(metrics, pd.concat(frames, ignore_index=True), latents)


def _per_token_frame(
    batch: Tensor, start: int, site: Site, err: Tensor, x_norm: Tensor, l0: Tensor, ce: dict, kl: Tensor
) -> pd.DataFrame:
    b, p = batch.shape
    positions = [site.position % p] if site.position is not None else list(range(p))
    seq = np.repeat(np.arange(start, start + b), len(positions))
    pos = np.tile(positions, b)
    frame = pd.DataFrame(
        {
            "seq": seq,
            "pos": pos,
            "token": batch[:, positions].reshape(-1).cpu().numpy(),
            "x_norm": x_norm.cpu().numpy(),
            "error_norm": err.cpu().numpy(),
            "l0": l0.cpu().numpy(),
        }
    )
    for name in ("clean", "sae"):
        frame[f"ce_{name}"] = _pad_last(ce[name])[:, positions].reshape(-1).cpu().numpy()
    frame["kl"] = _pad_last(kl)[:, positions].reshape(-1).cpu().numpy()
    return frame


def _pad_last(t: Tensor) -> Tensor:
    """Next-token quantities exist for positions 0..p-2; the last position gets NaN."""
    return torch.cat([t.double(), torch.full((len(t), 1), float("nan"), dtype=torch.float64)], dim=1)


def density_histogram(latents: pd.DataFrame, bins: int = 40) -> pd.DataFrame:
    """Counts of latents per log10(density) bin; dead latents (density 0) in their own row with log10_density -inf."""
    alive = latents.loc[latents.density > 0, "density"]
    counts, edges = (
        np.histogram(np.log10(alive), bins=bins) if len(alive) else (np.array([], dtype=int), np.array([0.0]))
    )
    rows = pd.DataFrame({"log10_density_low": edges[:-1], "log10_density_high": edges[1:], "latents": counts})
    dead = pd.DataFrame(
        {
            "log10_density_low": [-np.inf],
            "log10_density_high": [-np.inf],
            "latents": [int((latents.density == 0).sum())],
        }
    )
    return pd.concat([dead, rows], ignore_index=True)


def evaluate_saved(
    directory: str | os.PathLike, model: HookedTransformer, tokens: Int[Tensor, "seqs pos"], *, batch_size: int = 8
) -> EvalResult:
    """`interp sae eval DIR`: load DIR/sae (or DIR), evaluate at its saved hook, write DIR/eval/{metrics.json, *.parquet}."""
    from sae.io import load_sae, read_sae_config

    directory = Path(directory)
    sae_dir = directory / "sae" if (directory / "sae").is_dir() else directory
    hook_name = read_sae_config(sae_dir).get("metadata", {}).get("hook_name")
    if hook_name is None:
        raise ShapeMismatchError(
            f"{sae_dir}/cfg.json has no metadata.hook_name, so the site to evaluate at is unknown. Call evaluate_sae(model, sae, site, tokens) instead."
        )
    result = evaluate_sae(model, load_sae(sae_dir), hook_name, tokens, batch_size=batch_size)
    from interp.results import atomic_write_bytes, atomic_write_text

    out = directory / "eval"
    atomic_write_text(
        out / "metrics.json", json.dumps(result.metrics, indent=1)
    )  # each file whole or absent, never half-written
    for name, frame in (
        ("per_token", result.per_token),
        ("latents", result.latents),
        ("density_histogram", density_histogram(result.latents)),
    ):
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        atomic_write_bytes(out / f"{name}.parquet", buffer.getvalue())
    return result
