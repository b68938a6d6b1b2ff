"""How good an SAE is at its site: reconstruction (L0, FVU, MSE, cosine), downstream (CE loss recovered, KL), latents.

The SAE is spliced into the model with a hook at its site. `keep_error=True` adds back the SAE's error
x - Sae(x) computed before any latent edit, so interventions on latents run with the error held fixed.
A transcoder reads `site` (an MLP's input) and replaces `output_site` (that MLP's output): CE recovered is then
measured against zero-ablating the MLP's output, and the reconstruction metrics are of the MLP's output.
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


def transcoder_hooks(sae: Sae, site: Site, output_site: Site, record: dict | None = None) -> list:
    """Hooks that replace `output_site` with the transcoder's prediction from `site` (read earlier in the same forward).

    record, when given, receives x (the output site's true activation), sae_out (the prediction) and acts.
    """
    seen: dict = {}
    in_index, out_index = site.index(), output_site.index()

    def read(act: Tensor, hook) -> None:
        seen["x"] = act[in_index].reshape(-1, sae.cfg.d_in)

    def write(act: Tensor, hook) -> Tensor:
        if "x" not in seen:
            raise ShapeMismatchError(
                f"transcoder: {output_site} ran before {site}; the input site must come first in the forward (an MLP's input, then its output)."
            )
        region = act[out_index]
        y = region.reshape(-1, region.shape[-1])
        if y.shape[-1] != sae.cfg.d_out:
            raise ShapeMismatchError(
                f"{output_site}: the activation is {y.shape[-1]} wide per token but the transcoder has d_out={sae.cfg.d_out}; use its output site."
            )
        x = seen.pop("x")
        acts = sae.encode(x)
        y_hat = sae.decode(acts) + sae.skip_out(x)
        if record is not None:
            record.update(x=y, sae_out=y_hat, acts=acts)
        act = act.clone()
        act[out_index] = y_hat.reshape(region.shape).to(act.dtype)
        return act

    return [(site, read), (output_site, write)]


def is_transcoder_sae(sae: Sae) -> bool:
    return sae.cfg.architecture in ("transcoder", "skip_transcoder")


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
    model: HookedTransformer,
    sae: Sae,
    site: Site | str,
    tokens: Int[Tensor, "seqs pos"],
    *,
    batch_size: int = 8,
    output_site: Site | str | None = None,
    dense_threshold: float = 0.1,
    median_rows: int = 16_384,
) -> EvalResult:
    """Reconstruction and downstream metrics of `sae` at `site` over `tokens` (rows of equal length).

    A transcoder needs `output_site` (the MLP output it replaces; `site` is the MLP's input). dense_fraction: latents
    active on more than `dense_threshold` of tokens. explained_variance_gm: 1 - SSE / sum ||x - m||^2 with m the
    geometric median of the first `median_rows` rows (SAEBench's centring; >= explained_variance, which centres at the mean).
    """
    from sae.train import geometric_median

    site = as_site(model, site)
    tokens = to_tokens(model, tokens, argument="tokens")
    is_transcoder = is_transcoder_sae(sae)
    if is_transcoder and output_site is None:
        raise ShapeMismatchError(
            f"evaluate_sae: a {sae.cfg.architecture} replaces an MLP, so output_site is needed (e.g. output_site='blocks.L.hook_mlp_out' with site='blocks.L.ln2.hook_normalized')."
        )
    if not 0 < dense_threshold < 1:
        raise ValueError(
            f"dense_threshold={dense_threshold}: must lie strictly between 0 and 1 (a fraction of tokens)."
        )
    out_site = as_site(model, output_site) if is_transcoder else site
    width = sae.cfg.d_out if is_transcoder else sae.cfg.d_in
    kept: list[Tensor] = []
    sums = dict(
        sq_err=0.0,
        x_sq=0.0,
        x_sum=torch.zeros(width, dtype=torch.float64),
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
        hooks = (
            transcoder_hooks(sae, site, out_site, record=record)
            if is_transcoder
            else [(site, splice_hook(sae, site, record=record))]
        )
        spliced = run_with_hooks(model, batch, hooks).log_softmax(-1)
        zeroed = run_with_hooks(model, batch, [(out_site, zero_hook(out_site))]).log_softmax(-1)
        x, x_hat, acts = record["x"].double(), record["sae_out"].double(), record["acts"]
        kept.append(x[: max(0, median_rows - sum(len(k) for k in kept))])
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
    median = geometric_median(torch.cat(kept)).double()
    median_variance = sums["x_sq"] - 2 * float(median @ sums["x_sum"]) + n * float(median @ median)
    density = firing.double() / n
    metrics = dict(
        l0=sums["l0"] / n,
        fvu=sums["sq_err"] / total_variance,
        explained_variance=1 - sums["sq_err"] / total_variance,
        explained_variance_gm=1 - sums["sq_err"] / median_variance,
        mse=sums["sq_err"] / (n * width),
        cosine=sums["cos"] / n,
        ce_clean=ce_clean,
        ce_sae=ce_sae,
        ce_zero_ablation=ce_zero,
        ce_loss_recovered=(ce_zero - ce_sae) / (ce_zero - ce_clean),
        kl_sae=sums["kl"] / n_ce,
        dead_fraction=float((firing == 0).float().mean()),
        dense_fraction=float((density > dense_threshold).double().mean()),
        dense_threshold=dense_threshold,
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
    directory: str | os.PathLike,
    model: HookedTransformer,
    tokens: Int[Tensor, "seqs pos"],
    *,
    batch_size: int = 8,
    probing: bool = True,
    absorption: bool = True,
    probing_tokens: int = 8192,
    dense_threshold: float = 0.1,
) -> EvalResult:
    """`interp sae eval DIR`: load DIR/sae (or DIR), evaluate at its saved hook, write DIR/eval/{metrics.json, *.parquet}.

    probing: sparse probing on the first `probing_tokens` of `tokens` (sae.evals.probing); absorption: the first-letter
    absorption task (sae.evals.absorption). Both need an SAE (not a transcoder) and a model with a tokenizer; their
    numbers join metrics.json and their tables eval/sparse_probing.parquet, eval/absorption_letters.parquet.
    """
    from interp.results import atomic_write_bytes, atomic_write_text
    from sae.io import load_sae, read_sae_config

    directory = Path(directory)
    sae_dir = directory / "sae" if (directory / "sae").is_dir() else directory
    metadata = read_sae_config(sae_dir).get("metadata", {})
    hook_name = metadata.get("hook_name")
    if hook_name is None:
        raise ShapeMismatchError(
            f"{sae_dir}/cfg.json has no metadata.hook_name, so the site to evaluate at is unknown. Call evaluate_sae(model, sae, site, tokens) instead."
        )
    sae = load_sae(sae_dir)
    output_site = metadata.get("hook_name_out")
    if is_transcoder_sae(sae) and output_site is None:
        raise ShapeMismatchError(
            f"{sae_dir}/cfg.json: a {sae.cfg.architecture} without metadata.hook_name_out, so the MLP output it replaces is unknown. "
            "Call evaluate_sae(model, sae, site, tokens, output_site=...) instead."
        )
    result = evaluate_sae(
        model,
        sae,
        hook_name,
        tokens,
        batch_size=batch_size,
        output_site=output_site,
        dense_threshold=dense_threshold,
    )
    tables = {
        "per_token": result.per_token,
        "latents": result.latents,
        "density_histogram": density_histogram(result.latents),
    }
    extras = probing or absorption
    if extras and (is_transcoder_sae(sae) or model.tokenizer is None):
        result.metrics["extras_skipped"] = (
            "a transcoder's latents are not a dictionary of its input site"
            if is_transcoder_sae(sae)
            else "the model has no tokenizer"
        )
    elif extras:
        tables |= _extra_evaluations(model, sae, hook_name, tokens, result.metrics, probing, absorption, probing_tokens)
    out = directory / "eval"
    atomic_write_text(
        out / "metrics.json", json.dumps(result.metrics, indent=1)
    )  # each file whole or absent, never half-written
    for name, frame in tables.items():
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        atomic_write_bytes(out / f"{name}.parquet", buffer.getvalue())
    return result


@torch.no_grad()
def _extra_evaluations(
    model, sae: Sae, hook_name: str, tokens: Tensor, metrics: dict, probing: bool, absorption: bool, probing_tokens: int
) -> dict[str, pd.DataFrame]:
    from interp.hooks import cache_sites
    from sae.activations import flatten_site_activations
    from sae.evals.absorption import absorption_metrics, first_letter_absorption
    from sae.evals.probing import probing_metrics, sparse_probing_from_rows, token_labels, token_strings

    tables = {}
    if probing:
        site = as_site(model, hook_name)
        seqs = tokens[: max(1, -(-probing_tokens // tokens.shape[1]))]
        x = torch.cat(
            [
                flatten_site_activations(cache_sites(model, seqs[i : i + 8], [site], micro_batch=8)[site], site)
                for i in range(0, len(seqs), 8)
            ]
        ).float()
        ids = seqs[:, site.position] if site.position is not None else seqs.reshape(-1)
        table = sparse_probing_from_rows(x, sae.encode(x), token_labels(token_strings(model, ids)))
        metrics.update(probing_metrics(table))
        tables["sparse_probing"] = table
    if absorption:
        letters, per_token = first_letter_absorption(model, sae, hook_name)
        metrics.update(absorption_metrics(letters))
        tables["absorption_letters"] = letters
        tables["absorption_tokens"] = per_token
    return tables
