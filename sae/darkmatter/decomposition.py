"""SAE error = LinearError + NonlinearError (Engels, Riggs, Tegmark 2024, arXiv 2410.14670), and the analyses of the two parts.

With x the activation and e = x - Sae(x): LinearError = x A with A fit by least squares (no intercept) on
one set of tokens; every number here is then measured on other, held-out tokens.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from scipy.optimize import OptimizeWarning, curve_fit
from torch import Tensor

from interp.errors import InterpError, ShapeMismatchError
from sae.darkmatter.regression import (
    ROWS_PER_CHUNK,
    LinearMap,
    check_same_rows,
    fit_linear_map,
    group_mean_r2,
    r2,
    regression_r2,
    residual_fvu,
    total_variance,
    vector_r2,
)


class ErrorParts(NamedTuple):
    linear: Float[Tensor, "n d"]  # x A
    nonlinear: Float[Tensor, "n d"]  # e - x A


class LinearErrorFit(NamedTuple):
    """A: x -> e (no intercept) and the norm probe x -> ||e||^2 (no intercept), both fit on the same tokens."""

    error_map: LinearMap
    norm_map: LinearMap

    @classmethod
    def fit(cls, x: Float[Tensor, "n d"], error: Float[Tensor, "n d"]) -> LinearErrorFit:
        if x.shape != error.shape:
            raise ShapeMismatchError(
                f"error has shape {tuple(error.shape)} but x has {tuple(x.shape)}; pass e = x - Sae(x) for the same tokens."
            )
        sq_norm = torch.cat([chunk.double().pow(2).sum(-1) for chunk in error.split(ROWS_PER_CHUNK)])
        return cls(fit_linear_map(x, error), fit_linear_map(x, sq_norm))

    def split(self, x: Float[Tensor, "n d"], error: Float[Tensor, "n d"]) -> ErrorParts:
        linear = self.error_map.predict(x)
        return ErrorParts(linear, error.double() - linear)


class Decomposition(NamedTuple):
    metrics: dict[
        str, float
    ]  # vector_r2, norm_r2, fvu_sae, fvu_sae_plus_linear, fvu_sae_plus_nonlinear, linear_error_share
    fit: LinearErrorFit
    parts: ErrorParts  # of the held-out tokens


def decompose_error(
    x_fit: Float[Tensor, "n d"],
    sae_out_fit: Float[Tensor, "n d"],
    x_eval: Float[Tensor, "m d"],
    sae_out_eval: Float[Tensor, "m d"],
) -> Decomposition:
    """Fit the linear error on the fit tokens; measure how much of the held-out error it explains.

    fvu_sae_plus_linear is the FVU of Sae(x) + x A (what is left is the nonlinear error),
    fvu_sae_plus_nonlinear that of Sae(x) + NonlinearError (what is left is x A).
    """
    # float64 only a chunk at a time inside the fit: the error itself in float32 (x and Sae(x) are float32 or narrower)
    fit = LinearErrorFit.fit(
        x_fit, x_fit.float() - sae_out_fit.float() if x_fit.dtype != torch.float64 else x_fit - sae_out_fit.double()
    )
    error = x_eval.double() - sae_out_eval.double()
    parts = fit.split(x_eval, error)
    sq_norm = error.pow(2).sum(-1)
    metrics = dict(
        vector_r2=vector_r2(error, parts.linear),
        norm_r2=r2(sq_norm, fit.norm_map.predict(x_eval)[:, 0]),
        fvu_sae=residual_fvu(x_eval, error),
        fvu_sae_plus_linear=residual_fvu(x_eval, parts.nonlinear),
        fvu_sae_plus_nonlinear=residual_fvu(x_eval, parts.linear),
    )
    metrics["linear_error_share"] = metrics["fvu_sae_plus_nonlinear"] / metrics["fvu_sae"]
    return Decomposition(metrics, fit, parts)


def nonlinear_fvu_with_inputs(
    x_fit: Float[Tensor, "n d"],
    error_fit: Float[Tensor, "n d"],
    extra_fit: Float[Tensor, "n f"],
    x_eval: Float[Tensor, "m d"],
    error_eval: Float[Tensor, "m d"],
    extra_eval: Float[Tensor, "m f"],
) -> dict[str, float]:
    """How much of the nonlinear error other inputs explain: e regressed on [x, extra] against e on x alone (no intercept).

    Returns the held-out FVU left by each fit and their difference (negative: the extra inputs help).
    """
    for name, t in (("extra_fit", extra_fit), ("extra_eval", extra_eval)):
        if t.ndim != 2:
            raise ShapeMismatchError(f"{name}: expected [rows, features], got shape {tuple(t.shape)}.")
    check_same_rows(x_eval, error_eval, "x_eval", "error_eval")
    check_same_rows(x_eval, extra_eval, "x_eval", "extra_eval")
    alone = fit_linear_map(x_fit, error_fit)
    joint = fit_linear_map(torch.cat([x_fit, extra_fit.to(x_fit.dtype)], dim=1), error_fit)
    variance = total_variance(x_eval)

    def left(
        fitted: LinearMap, with_extra: bool
    ) -> float:  # held-out FVU of what the map leaves, a chunk of rows at a time
        chunks = zip(x_eval.split(ROWS_PER_CHUNK), extra_eval.split(ROWS_PER_CHUNK), error_eval.split(ROWS_PER_CHUNK))
        return (
            sum(
                float(
                    (e.double() - fitted.predict(torch.cat([x, extra.to(x.dtype)], 1) if with_extra else x))
                    .pow(2)
                    .sum()
                )
                for x, extra, e in chunks
            )
            / variance
        )

    left_alone, left_joint = left(alone, False), left(joint, True)
    return dict(
        nonlinear_fvu=left_alone, nonlinear_fvu_with_inputs=left_joint, nonlinear_fvu_change=left_joint - left_alone
    )


class PowerLaw(NamedTuple):
    """FVU(W) = c + a W^m."""

    c: float
    a: float
    m: float

    def __call__(self, width: np.ndarray | float) -> np.ndarray:
        return self.c + self.a * np.power(np.asarray(width, dtype=float), self.m)


def fit_power_law(widths: Sequence[float] | np.ndarray, fvus: Sequence[float] | np.ndarray) -> PowerLaw:
    """Least-squares fit of FVU(W) = c + a W^m with c >= 0, a >= 0, m <= 0 (scipy curve_fit, widths rescaled by the smallest)."""
    widths, fvus = np.asarray(widths, dtype=float), np.asarray(fvus, dtype=float)
    if widths.shape != fvus.shape or widths.ndim != 1 or len(widths) < 3:
        raise InterpError(
            f"fit_power_law: needs equal-length 1-D widths and fvus with at least 3 points (3 parameters); got {widths.shape} and {fvus.shape}."
        )
    if (widths <= 0).any():
        raise InterpError(f"fit_power_law(widths={widths.tolist()}): widths must be positive.")
    w0 = widths.min()

    def law(w, c, a, m):
        return c + a * np.power(w, m)

    start = (max(fvus.min() * 0.5, 0.0), max(fvus.max() - fvus.min(), 1e-6), -0.5)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", OptimizeWarning
        )  # with exactly 3 widths the covariance is undefined; only the point estimate is used
        (c, a, m), _ = curve_fit(
            law, widths / w0, fvus, p0=start, bounds=([0.0, 0.0, -10.0], [np.inf, np.inf, 0.0]), maxfev=20_000
        )
    return PowerLaw(float(c), float(a * w0 ** (-m)), float(m))


def cross_width_norms(
    error_norms: Mapping[int, tuple[Tensor, Tensor]], nonlinear_norms: Mapping[int, tuple[Tensor, Tensor]]
) -> pd.DataFrame:
    """Per-token predictability of error norms across SAE widths.

    error_norms[w] = (||e_w|| on fit tokens, on eval tokens); nonlinear_norms likewise. For each pair of
    widths i < j: held-out R^2 of ||e_j|| ~ 1 + ||e_i||, then with ||NonlinearError_i|| added as a regressor.
    """
    rows = []
    for small, large in itertools.combinations(sorted(error_norms), 2):
        (fit_i, eval_i), (fit_j, eval_j) = error_norms[small], error_norms[large]
        (nl_fit_i, nl_eval_i) = nonlinear_norms[small]
        alone = regression_r2(fit_i[:, None], fit_j, eval_i[:, None], eval_j)
        both = regression_r2(torch.stack([fit_i, nl_fit_i], 1), fit_j, torch.stack([eval_i, nl_eval_i], 1), eval_j)
        rows.append(
            dict(width_from=small, width_to=large, r2=alone, r2_with_nonlinear=both, nonlinear_gain=both - alone)
        )
    return pd.DataFrame(rows)


def norm_baselines(
    sq_norm_fit: Float[Tensor, " n"],
    sq_norm_eval: Float[Tensor, " m"],
    x_fit: Float[Tensor, "n d"],
    x_eval: Float[Tensor, "m d"],
    tokens_fit: Int[Tensor, " n"],
    tokens_eval: Int[Tensor, " m"],
    scalars: Mapping[str, tuple[Tensor, Tensor]],
) -> pd.DataFrame:
    """Held-out R^2 of predicting ||e||^2 from: x without and with intercept, the token id's mean, and each named scalar (with intercept).

    scalars: e.g. {"l0": (fit, eval), "x_norm": (fit, eval), "model_loss": (fit, eval)}.
    """
    rows = [
        dict(predictor="activation", r2=regression_r2(x_fit, sq_norm_fit, x_eval, sq_norm_eval, intercept=False)),
        dict(
            predictor="activation_with_intercept",
            r2=regression_r2(x_fit, sq_norm_fit, x_eval, sq_norm_eval, intercept=True),
        ),
        dict(predictor="token_id_mean", r2=group_mean_r2(tokens_fit, sq_norm_fit, tokens_eval, sq_norm_eval)),
    ]
    for name, (fit, held_out) in scalars.items():
        rows.append(
            dict(
                predictor=name,
                r2=regression_r2(fit.double()[:, None], sq_norm_fit, held_out.double()[:, None], sq_norm_eval),
            )
        )
    return pd.DataFrame(rows)


def norm_probe_variants(
    x_fit: Float[Tensor, "n d"],
    error_norm_fit: Float[Tensor, " n"],
    x_eval: Float[Tensor, "m d"],
    error_norm_eval: Float[Tensor, " m"],
    fit_sizes: Sequence[int] = (),
) -> pd.DataFrame:
    """Held-out R^2 of the linear norm probe in each reading of the paper's "norm R^2".

    Targets ||e|| and ||e||^2, without and with an intercept, fit on the first `fit_sizes` fit tokens (and on all of them).
    """
    if error_norm_fit.shape != (len(x_fit),) or error_norm_eval.shape != (len(x_eval),):
        raise ShapeMismatchError(
            f"error norms {tuple(error_norm_fit.shape)}, {tuple(error_norm_eval.shape)}: expected one norm per row of x_fit ({len(x_fit)}) and x_eval ({len(x_eval)})."
        )
    sizes = sorted({min(int(s), len(x_fit)) for s in fit_sizes} | {len(x_fit)})
    rows = []
    for target, power in (("norm", 1), ("sq_norm", 2)):
        y_fit, y_eval = error_norm_fit.double().pow(power), error_norm_eval.double().pow(power)
        for intercept, n in itertools.product((False, True), sizes):
            rows.append(
                dict(
                    target=target,
                    intercept=intercept,
                    fit_tokens=n,
                    r2=regression_r2(x_fit[:n], y_fit[:n], x_eval, y_eval, intercept=intercept),
                )
            )
    return pd.DataFrame(rows)
