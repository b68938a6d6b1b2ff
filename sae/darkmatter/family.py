"""The per-width analyses of the family of SAEs: the error decomposition and norms, CE shares (with CIs), gradient pursuit, earlier-layer
inputs, what the largest SAE adds, and the SAEs trained on each error part. Each expensive step respects the invocation's budget."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.fileio import atomic_path
from sae.darkmatter.data import DarkMatterSettings, Split
from sae.darkmatter.decomposition import (
    Decomposition,
    decompose_error,
    nonlinear_fvu_with_inputs,
    norm_probe_variants,
)
from sae.darkmatter.downstream import ce_shares, resumable_spliced_losses
from sae.darkmatter.features import improvement_shares, learned_feature_fraction
from sae.darkmatter.pursuit import pursuit_reconstruction
from sae.darkmatter.regression import LinearMap, fvu, regression_r2
from sae.darkmatter.saes import (
    ROWS_PER_CHUNK,
    UNLIMITED,
    Budget,
    OutOfBudget,
    SaeSpec,
    is_trained,
    reconstruct,
    trained_sae,
)
from sae.darkmatter.uncertainty import ce_shares_with_ci, r2_with_ci
from sae.models import Sae


class Context(NamedTuple):
    """What every stage reads: the model, the settings, the cache folder, the split store and the invocation's budget."""

    model: object  # a HookedTransformer
    config: DarkMatterSettings
    cache: Path
    data: Split
    budget: Budget = UNLIMITED

    def family_spec(self, width: int, layer: int | None = None) -> SaeSpec:
        """The family's SAE at `width` (config.k, trained to convergence) on blocks.{layer}.hook_resid_post (default: config.layer)."""
        return SaeSpec(
            f"resid_L{self.config.layer if layer is None else layer}",
            width,
            self.config.k,
            self.config.training,
            self.config.seed,
        )

    def family_sae(self, width: int) -> Sae:
        return trained_sae(self.cache / "saes", self.data.fit.x, self.family_spec(width), self.budget)


class FitEval(NamedTuple):
    fit: Tensor  # on the linear-fit rows
    eval: Tensor  # on the held-out rows


class WidthNorms(NamedTuple):
    error: FitEval  # ||e|| per token, float64
    nonlinear: FitEval  # ||e - xA|| per token
    l0: FitEval


class Downstream(NamedTuple):
    shares: dict  # ce_shares + ce_shares_with_ci: floats, [low, high] lists and booleans, keyed by metric name
    losses: pd.DataFrame  # per-token CE of each spliced variant
    model_loss_r2: (
        float  # the model's own CE as a predictor of ||e||^2 on the same tokens (half the sequences fit, half judged)
    )


class Focus(NamedTuple):
    norm_map: LinearMap  # x -> ||e||^2 at the focus width
    error_saes: dict[
        str, float
    ]  # sae_on_{linear,nonlinear}_fvu and the feature-match fractions; empty when not trained within the budget
    losses: pd.DataFrame | None


class WidthAnalysis(NamedTuple):
    row: dict  # the by_width table's row: metric name -> value (None where a step was not done within the budget)
    probes: pd.DataFrame  # norm_probe_variants at this width
    norms: WidthNorms
    focus: Focus | None  # only at the focus width
    missing: list[str]  # what this width left undone (out of budget)


def linear_rows(ctx: Context) -> tuple[Float[Tensor, "n d"], Float[Tensor, "m d"]]:
    """x on the rows the linear maps are fit on (the first linear_fit_tokens fit rows) and on the held-out rows."""
    return ctx.data.fit.x[: ctx.config.linear_fit_tokens], ctx.data.held.x


def decomposition_at(ctx: Context, sae: Sae) -> tuple[Decomposition, Tensor, Tensor]:
    """The error decomposition of `sae` (linear map fit on the linear-fit rows, judged held out), with Sae(x) on both sides."""
    x_fit, x_eval = linear_rows(ctx)
    out_fit, out_eval = reconstruct(sae, x_fit).out, reconstruct(sae, x_eval).out
    return decompose_error(x_fit, out_fit, x_eval, out_eval), out_fit, out_eval


def _nonlinear_norms(
    decomposition: Decomposition, x: Float[Tensor, "n d"], sae_out: Float[Tensor, "n d"]
) -> Float[Tensor, " n"]:
    """||e - xA|| per token, a chunk at a time (no float64 copy of the whole error)."""
    return torch.cat(
        [
            decomposition.fit.split(xc, xc.double() - oc.double()).nonlinear.norm(dim=1)
            for xc, oc in zip(x.split(ROWS_PER_CHUNK), sae_out.split(ROWS_PER_CHUNK))
        ]
    )


def downstream_path(ctx: Context, sae: Sae, error_map: LinearMap) -> Path:
    """The cached spliced losses of `sae` and its error map on the first downstream_seqs held-out sequences."""
    seqs = ctx.data.held_seqs[: ctx.config.downstream_seqs]
    digest = hashlib.sha256(
        sae.W_dec.detach().numpy().tobytes() + error_map.weight.numpy().tobytes() + seqs.numpy().tobytes()
    ).hexdigest()[:10]
    return (
        ctx.cache / "downstream" / f"W{sae.cfg.d_sae}-{len(seqs)}seqs-from{ctx.config.skip_positions}-{digest}.parquet"
    )


def _downstream_losses(ctx: Context, sae: Sae, error_map: LinearMap) -> pd.DataFrame:
    """Per-token CE of each spliced variant, cached by SAE, map and sequences (minutes per width)."""
    path = downstream_path(ctx, sae, error_map)
    if path.exists():
        return pd.read_parquet(path)
    config = ctx.config
    seqs = ctx.data.held_seqs[: config.downstream_seqs]
    # the clean model's CE on these sequences does not depend on the SAE: reuse another width's (checked token by token in spliced_losses)
    others = sorted(path.parent.glob(f"*-{len(seqs)}seqs-from{config.skip_positions}-*.parquet"))
    parts = path.parent / "parts" / path.stem  # 64 sequences at a time: a killed run resumes from the chunks done
    losses = resumable_spliced_losses(
        parts,
        ctx.model,
        ctx.data.tokens.reshape(-1, config.seq_len)[seqs],
        sae,
        f"blocks.{config.layer}.hook_resid_post",
        error_map,
        from_position=config.skip_positions,
        clean=pd.read_parquet(others[0], columns=["seq", "pos", "token", "ce_clean"]) if others else None,
    )
    with atomic_path(path) as tmp:
        losses.to_parquet(tmp)
    shutil.rmtree(parts)
    return losses


def downstream(ctx: Context, sae: Sae, decomposition: Decomposition) -> Downstream:
    """CE shares (with bootstrap CIs over sequences) on the first held-out sequences, and the model-loss baseline for ||e||^2 on the same tokens."""
    p, skip = ctx.config.seq_len, ctx.config.skip_positions
    losses = _downstream_losses(ctx, sae, decomposition.fit.error_map)
    # held.x holds held-out sequences in order, positions skip..p-1 each; the losses' rows are positions skip..p-2
    rows = (
        torch.tensor(losses.seq.to_numpy(copy=True)) * (p - skip) + torch.tensor(losses.pos.to_numpy(copy=True)) - skip
    )
    x = ctx.data.held.x[rows].float()
    sq_norm = (x - reconstruct(sae, x).out).double().pow(2).sum(-1)
    loss = torch.tensor(losses.ce_clean.to_numpy(copy=True))
    half = losses.seq.to_numpy() < losses.seq.nunique() // 2
    model_loss_r2 = regression_r2(loss[half][:, None], sq_norm[half], loss[~half][:, None], sq_norm[~half])
    return Downstream(
        ce_shares(losses) | ce_shares_with_ci(losses, n_boot=ctx.config.bootstrap, seed=ctx.config.seed),
        losses,
        model_loss_r2,
    )


def ce_at(ctx: Context, width: int, sae: Sae | None = None) -> Downstream:
    """CE shares at `width` from the family SAE there; spliced losses not cached start only with ce_minutes_per_width of budget left."""
    sae = sae or ctx.family_sae(width)
    decomposition = decomposition_at(ctx, sae)[0]._replace(parts=None)
    if not downstream_path(ctx, sae, decomposition.fit.error_map).exists():  # cached losses need no reserve
        ctx.budget.check(f"CE shares at width {width}", ctx.config.ce_minutes_per_width)
    found = downstream(ctx, sae, decomposition)
    return found._replace(
        shares=found.shares
        | dict(
            fvu_sae=decomposition.metrics["fvu_sae"], fvu_sae_plus_linear=decomposition.metrics["fvu_sae_plus_linear"]
        )
    )


def ce_widths(config: DarkMatterSettings) -> list[int]:
    """Widths whose CE shares are measured before the rest of the family is trained: the grid widths that are family widths."""
    return sorted(w for w in config.grid_widths if w in config.widths)


def ce_stage(ctx: Context) -> dict[int, dict]:
    """CE shares with CIs at the ce_widths, from the family SAE there (trained by the grid stage, which it shares with the grid's converged cells)."""
    out = {}
    for width in ce_widths(ctx.config):
        ctx.budget.check(f"CE shares at width {width}")
        out[width] = ce_at(ctx, width).shares
    return out


def pursuit(ctx: Context, sae: Sae) -> dict[str, float]:
    """Nonlinear FVU after gradient pursuit (k = each token's SAE L0) against the SAE's own, on the same token subset."""
    half = ctx.config.pursuit_tokens // 2
    x_fit, x_eval = ctx.data.fit.x[:half].float(), ctx.data.held.x[:half].float()
    own_fit, own_eval = reconstruct(sae, x_fit), reconstruct(sae, x_eval)
    own = decompose_error(x_fit, own_fit.out, x_eval, own_eval.out).metrics
    pursued = decompose_error(
        x_fit, pursuit_reconstruction(sae, x_fit, own_fit.l0), x_eval, pursuit_reconstruction(sae, x_eval, own_eval.l0)
    ).metrics
    return dict(
        pursuit_fvu_sae=pursued["fvu_sae"],
        sae_fvu_on_pursuit_tokens=own["fvu_sae"],
        pursuit_nonlinear_fvu=pursued["fvu_sae_plus_linear"],
        sae_nonlinear_fvu_on_pursuit_tokens=own["fvu_sae_plus_linear"],
        pursuit_nonlinear_fvu_change=pursued["fvu_sae_plus_linear"] - own["fvu_sae_plus_linear"],
    )


def earlier_layer(
    ctx: Context, width: int, out_fit: Float[Tensor, "n d"], out_eval: Float[Tensor, "m d"]
) -> dict[str, float]:
    """The nonlinear error left when the error is regressed on x plus the previous layer's SAE output, or plus this layer's attn and MLP outputs.

    The previous layer's SAE (the family's schedule) trains within the budget: raises OutOfBudget past it."""
    fit, held = ctx.data.fit, ctx.data.held
    prev_sae = trained_sae(ctx.cache / "saes", fit.x_prev, ctx.family_spec(width, ctx.config.layer - 1), ctx.budget)
    n = len(out_fit)
    prev_fit, prev_eval = reconstruct(prev_sae, fit.x_prev[:n]).out, reconstruct(prev_sae, held.x_prev).out
    x_fit, x_eval = fit.x[:n], held.x
    e_fit, e_eval = x_fit.float() - out_fit, x_eval.float() - out_eval
    prev = nonlinear_fvu_with_inputs(x_fit, e_fit, prev_fit, x_eval, e_eval, prev_eval)
    same = nonlinear_fvu_with_inputs(
        x_fit, e_fit, torch.cat([fit.attn, fit.mlp], 1), x_eval, e_eval, torch.cat([held.attn, held.mlp], 1)
    )
    return dict(
        earlier_layer_nonlinear_fvu_change=prev["nonlinear_fvu_change"],
        earlier_layer_nonlinear_fvu=prev["nonlinear_fvu_with_inputs"],
        attn_mlp_nonlinear_fvu_change=same["nonlinear_fvu_change"],
        attn_mlp_nonlinear_fvu=same["nonlinear_fvu_with_inputs"],
    )


def error_saes(
    ctx: Context, out_fit: Float[Tensor, "n d"], decomposition: Decomposition, width: int, saes: dict[int, Sae]
) -> dict[str, float]:
    """TopK SAEs of the same width and L0 trained on LinearError and on NonlinearError of the fit tokens: FVU on the held-out parts,
    and the fraction of their live latents that are features of the largest SAE on x but not of the SAE whose error they model."""
    metrics = {}
    x_fit = linear_rows(ctx)[0]
    largest, small = saes[max(saes)].W_dec.detach(), saes[width].W_dec.detach()
    for part in ("linear", "nonlinear"):
        fit_part = torch.cat(
            [
                getattr(decomposition.fit.split(xc, xc.float() - oc), part).float()
                for xc, oc in zip(x_fit.split(ROWS_PER_CHUNK), out_fit.split(ROWS_PER_CHUNK))
            ]
        )
        eval_part = getattr(decomposition.parts, part).float()
        spec = SaeSpec(f"{part}_error_L{ctx.config.layer}", width, ctx.config.k, ctx.config.training, ctx.config.seed)
        sae = trained_sae(ctx.cache / "saes", fit_part, spec, ctx.budget)
        del fit_part
        recon = reconstruct(sae, eval_part)
        metrics[f"sae_on_{part}_fvu"] = fvu(eval_part, recon.out)
        found = learned_feature_fraction(
            sae.W_dec.detach(), largest, small, live=recon.fired, threshold=ctx.config.feature_threshold
        )
        metrics |= {f"{part}_error_sae_{k}": v for k, v in found.items()}
    return metrics


def _split_ci(shares: dict) -> dict:
    """Scalars as they are; each [low, high] as two columns name_low, name_high."""
    return {k: v for k, v in shares.items() if not isinstance(v, list)} | {
        f"{k}_{side}": v[i] for k, v in shares.items() if isinstance(v, list) for i, side in enumerate(("low", "high"))
    }


def earlier_layer_cached(ctx: Context, width: int) -> bool:
    return is_trained(ctx.cache / "saes", ctx.data.fit.x_prev, ctx.family_spec(width, ctx.config.layer - 1))


def width_analyses(
    ctx: Context,
    saes: dict[int, Sae],
    width: int,
    largest_eval: Float[Tensor, "m d"],
    *,
    ce: bool = True,
    earlier: bool = True,
) -> WidthAnalysis:
    """Everything measured per width: the decomposition, norms (norm R^2 with its CI), norm-probe variants, what the largest SAE adds, CE shares,
    pursuit, earlier layers; the error SAEs at the focus width. ce=False / earlier=False: the CE shares / the earlier-layer analysis only when
    their spliced losses / previous-layer SAE are cached (the caller runs the rest later, within the budget)."""
    config = ctx.config
    n = config.linear_fit_tokens
    x_fit, x_eval = linear_rows(ctx)
    clock = [time.perf_counter()]
    missing: list[str] = []

    def lap() -> float:  # seconds since the previous lap: each analysis's cost per width, for sizing runs
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    (out_fit, l0_fit, _), (out_eval, l0_eval, _) = reconstruct(saes[width], x_fit), reconstruct(saes[width], x_eval)
    decomposition = decompose_error(x_fit, out_fit, x_eval, out_eval)
    error_norm = FitEval(
        (x_fit.float() - out_fit).norm(dim=1).double(), (x_eval.float() - out_eval).norm(dim=1).double()
    )
    norms = WidthNorms(
        error_norm,
        FitEval(_nonlinear_norms(decomposition, x_fit, out_fit), decomposition.parts.nonlinear.norm(dim=1)),
        FitEval(l0_fit, l0_eval),
    )
    probes = norm_probe_variants(x_fit, error_norm.fit, x_eval, error_norm.eval, fit_sizes=(n // 16, n // 4)).assign(
        width=width
    )
    _, low, high = r2_with_ci(
        error_norm.eval.pow(2),
        decomposition.fit.norm_map.predict(x_eval)[:, 0],
        ctx.data.held.seq,
        n_boot=config.bootstrap,
        seed=config.seed,
    )
    row = dict(
        width=width,
        l0=float(l0_eval.float().mean()),
        **decomposition.metrics,
        norm_r2_ci_low=low,
        norm_r2_ci_high=high,
        seconds_decomposition=lap(),
    )
    if width != max(saes):
        row |= {
            f"larger_sae_{k}": v for k, v in improvement_shares(decomposition.parts, largest_eval - out_eval).items()
        }
    focus = None
    if width == (config.focus_width or min(config.widths)):
        try:
            found = error_saes(ctx, out_fit, decomposition, width, saes)
        except OutOfBudget as stop:
            found, _ = {}, missing.append(f"the error SAEs at width {width} ({stop})")
        focus = Focus(decomposition.fit.norm_map, found, None)
        row["seconds_error_saes"] = lap()
    decomposition = decomposition._replace(parts=None)  # 2 x [tokens, d] float64 not needed past here
    if ce or downstream_path(ctx, saes[width], decomposition.fit.error_map).exists():
        found = downstream(ctx, saes[width], decomposition)
        row |= _split_ci(found.shares) | dict(model_loss_r2=found.model_loss_r2)
        focus = focus and focus._replace(losses=found.losses)
    row["seconds_downstream"] = lap()
    row |= dict(**pursuit(ctx, saes[width]), seconds_pursuit=lap())
    if earlier or earlier_layer_cached(ctx, width):
        try:
            row |= dict(**earlier_layer(ctx, width, out_fit, out_eval), seconds_earlier_layer=lap())
        except OutOfBudget as stop:
            missing.append(f"the earlier-layer analysis at width {width} ({stop})")
    return WidthAnalysis(row, probes, norms, focus, missing)


def earlier_layer_at(ctx: Context, sae: Sae, width: int) -> dict[str, float]:
    """earlier_layer for a width analysed before (Sae(x) recomputed); raises OutOfBudget when the previous layer's SAE is not trained in time."""
    x_fit, x_eval = linear_rows(ctx)
    return earlier_layer(ctx, width, reconstruct(sae, x_fit).out, reconstruct(sae, x_eval).out)
