"""Which error part holds the features a larger SAE goes on to learn ("not-yet-learned" features)?

Two measurements of the paper's claim that the nonlinear error holds fewer of them than the linear error:

- `improvement_shares`: what a larger SAE adds over a smaller one, d = Sae_large(x) - Sae_small(x)
  (= e_small - e_large), split between the small SAE's linear and nonlinear error by inner products.
  A part holding its fair share of not-yet-learned features receives a share of d equal to its share
  of ||e_small||^2; a ratio below 1 means the larger SAE's new features land elsewhere.
- `learned_feature_fraction`: the decoder directions of an SAE trained on one error part that are
  (cosine >= threshold) directions of a larger SAE's decoder and not already ones of the small SAE.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.errors import InterpError, ShapeMismatchError
from sae.darkmatter.decomposition import ErrorParts

ROWS_PER_CHUNK = 4096  # rows at a time: bounds float64 temporaries and the [rows, reference] cosine block


def improvement_shares(parts: ErrorParts, improvement: Float[Tensor, "n d"]) -> dict[str, float]:
    """Shares of the larger SAE's improvement d in each error part, beside each part's share of ||e||^2.

    share_P = sum <d, P> / sum <d, e> and energy_share_P = sum <e, P> / sum ||e||^2 over the tokens
    (e = linear + nonlinear, so each pair sums to 1); not_yet_learned_ratio_P = share_P / energy_share_P.
    """
    linear, nonlinear = parts.linear, parts.nonlinear
    if linear.shape != nonlinear.shape or improvement.shape != linear.shape:
        raise ShapeMismatchError(
            f"improvement has shape {tuple(improvement.shape)} but the error parts have {tuple(linear.shape)} and {tuple(nonlinear.shape)}; "
            "pass Sae_large(x) - Sae_small(x) for the tokens the parts were computed on."
        )
    sums = dict.fromkeys(("d_e", "e_e", "d_linear", "d_nonlinear", "e_linear", "e_nonlinear"), 0.0)
    for lin, non, d in zip(
        linear.split(ROWS_PER_CHUNK), nonlinear.split(ROWS_PER_CHUNK), improvement.split(ROWS_PER_CHUNK)
    ):  # float64 a chunk at a time
        lin, non, d = lin.double(), non.double(), d.double()
        e = lin + non
        for key, (a, b) in dict(
            d_e=(d, e), e_e=(e, e), d_linear=(d, lin), d_nonlinear=(d, non), e_linear=(e, lin), e_nonlinear=(e, non)
        ).items():
            sums[key] += float((a * b).sum())
    if sums["d_e"] == 0 or sums["e_e"] == 0:
        raise InterpError(
            "improvement_shares: the larger SAE changes nothing along the error (sum <d, e> = 0) or the error is zero; compare different SAEs."
        )
    out = {}
    for name in ("linear", "nonlinear"):
        share, energy = sums[f"d_{name}"] / sums["d_e"], sums[f"e_{name}"] / sums["e_e"]
        out |= {
            f"share_{name}": share,
            f"energy_share_{name}": energy,
            f"not_yet_learned_ratio_{name}": share / energy if energy else float("nan"),
        }
    out["improvement_of_error"] = sums["d_e"] / sums["e_e"]  # how much of ||e_small||^2 the larger SAE removes, along e
    return out


def max_cosine(rows: Float[Tensor, "n d"], reference: Float[Tensor, "m d"]) -> Float[Tensor, " n"]:
    """For each row, its largest cosine similarity with any reference row."""
    if rows.ndim != 2 or reference.ndim != 2 or rows.shape[1] != reference.shape[1]:
        raise ShapeMismatchError(
            f"rows {tuple(rows.shape)} and reference {tuple(reference.shape)}: expected [n, d] and [m, d] with the same d (decoder rows of SAEs on one site)."
        )
    ref = torch.nn.functional.normalize(reference.double(), dim=1)
    best = [
        torch.nn.functional.normalize(chunk.double(), dim=1).matmul(ref.T).max(1).values
        for chunk in rows.split(ROWS_PER_CHUNK)
    ]
    return torch.cat(best)


def learned_feature_fraction(
    decoder: Float[Tensor, "n d"],
    larger: Float[Tensor, "m d"],
    smaller: Float[Tensor, "s d"],
    live: Bool[Tensor, " n"] | None = None,
    threshold: float = 0.7,
) -> dict[str, float]:
    """Fraction of the (live) rows of `decoder` that are a direction of `larger` (max cosine >= threshold) but not of `smaller`.

    decoder: W_dec of an SAE trained on one error part of the `smaller` SAE; larger: W_dec of a wider SAE on x.
    """
    if not 0 < threshold < 1:
        raise InterpError(
            f"learned_feature_fraction(threshold={threshold}): must be strictly between 0 and 1 (a cosine similarity)."
        )
    if live is None:
        live = torch.ones(len(decoder), dtype=torch.bool)
    if live.shape != (len(decoder),):
        raise ShapeMismatchError(
            f"live: expected one flag per decoder row, shape ({len(decoder)},), got {tuple(live.shape)}."
        )
    if not live.any():
        raise InterpError(
            "learned_feature_fraction: no live latents (live is all False); the error SAE learned nothing to compare."
        )
    to_larger, to_smaller = max_cosine(decoder[live], larger), max_cosine(decoder[live], smaller)
    new = (to_larger >= threshold) & (to_smaller < threshold)
    return dict(
        not_yet_learned_fraction=float(new.double().mean()),
        in_larger_fraction=float((to_larger >= threshold).double().mean()),
        in_smaller_fraction=float((to_smaller >= threshold).double().mean()),
        mean_max_cosine_larger=float(to_larger.mean()),
        mean_max_cosine_smaller=float(to_smaller.mean()),
        live_latents=int(live.sum()),
    )
