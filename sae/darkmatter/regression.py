"""Least-squares maps and the goodness-of-fit numbers the dark-matter analyses report (all in float64)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ShapeMismatchError

ROWS_PER_CHUNK = 16_384  # rows cast to float64 at a time while accumulating X^T X


class LinearMap(NamedTuple):
    """y ~ x @ weight (+ bias), fit by least squares."""

    weight: Float[Tensor, "d_in d_out"]
    bias: Float[Tensor, " d_out"] | None

    def predict(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_out"]:
        y = x.double() @ self.weight
        return y if self.bias is None else y + self.bias


def _as_matrix(t: Tensor, argument: str) -> Tensor:
    if t.ndim == 1:
        return t[:, None]
    if t.ndim != 2:
        raise ShapeMismatchError(
            f"{argument}: expected [rows, features] (or [rows]), got shape {tuple(t.shape)}. Flatten batch and position first."
        )
    return t


def check_same_rows(x: Tensor, y: Tensor, x_name: str, y_name: str) -> None:
    if len(x) != len(y):
        raise ShapeMismatchError(
            f"{x_name} has {len(x)} rows but {y_name} has {len(y)}; they must hold the same tokens in the same order."
        )


def fit_linear_map(
    x: Float[Tensor, "n d_in"], y: Float[Tensor, "n d_out"] | Float[Tensor, " n"], *, intercept: bool = False
) -> LinearMap:
    """Least squares y ~ x W (+ b), the minimum-norm solution when x is rank deficient.

    Solved from the normal equations accumulated in float64 chunk by chunk, so a million 576-wide rows
    never need a float64 copy; G^+ X^T Y equals X^+ Y, the solution numpy.linalg.lstsq returns.
    """
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    check_same_rows(x, y, "x", "y")
    if len(x) == 0:
        raise ShapeMismatchError("x: no rows to fit on; pass at least one token.")
    d = x.shape[1] + int(intercept)
    gram = torch.zeros(d, d, dtype=torch.float64)
    cross = torch.zeros(d, y.shape[1], dtype=torch.float64)
    for start in range(0, len(x), ROWS_PER_CHUNK):
        xc = x[start : start + ROWS_PER_CHUNK].double()
        if intercept:
            xc = torch.cat([xc, torch.ones(len(xc), 1, dtype=torch.float64)], dim=1)
        gram += xc.T @ xc
        cross += xc.T @ y[start : start + ROWS_PER_CHUNK].double()
    solution = torch.linalg.lstsq(gram, cross, driver="gelsd").solution
    return LinearMap(solution[:-1], solution[-1]) if intercept else LinearMap(solution, None)


def r2_per_dimension(
    y: Float[Tensor, "n d"] | Float[Tensor, " n"], y_hat: Float[Tensor, "n d"] | Float[Tensor, " n"]
) -> Float[Tensor, " d"]:
    """1 - SSE_d / SST_d for each column (NaN where a column is constant)."""
    y, y_hat = _as_matrix(y, "y"), _as_matrix(y_hat, "y_hat")
    if y.shape != y_hat.shape:
        raise ShapeMismatchError(
            f"y_hat has shape {tuple(y_hat.shape)} but y has {tuple(y.shape)}; predict every column of every row."
        )
    mean = sum(chunk.double().sum(0) for chunk in y.split(ROWS_PER_CHUNK)) / len(y)
    sse = sum(
        (yc.double() - hc.double()).pow(2).sum(0)
        for yc, hc in zip(y.split(ROWS_PER_CHUNK), y_hat.split(ROWS_PER_CHUNK))
    )
    sst = sum((yc.double() - mean).pow(2).sum(0) for yc in y.split(ROWS_PER_CHUNK))
    return torch.where(sst > 0, 1 - sse / sst.clamp_min(1e-300), torch.full_like(sst, float("nan")))


def vector_r2(y: Float[Tensor, "n d"], y_hat: Float[Tensor, "n d"]) -> float:
    """Mean over dimensions of the per-dimension R^2 (sklearn's r2_score with uniform averaging)."""
    return float(np.nanmean(r2_per_dimension(y, y_hat).numpy()))


def r2(y: Float[Tensor, "*shape"], y_hat: Float[Tensor, "*shape"]) -> float:
    return float(r2_per_dimension(y.reshape(-1), y_hat.reshape(-1))[0])


def fvu(x: Float[Tensor, "n d"], x_hat: Float[Tensor, "n d"]) -> float:
    """sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    return residual_fvu(x, x.double() - x_hat.double())


def residual_fvu(x: Float[Tensor, "n d"], residual: Float[Tensor, "n d"]) -> float:
    """FVU of a reconstruction whose error is `residual`: sum ||residual||^2 / sum ||x - mean(x)||^2."""
    check_same_rows(x, residual, "x", "residual")
    # a chunk at a time: a million float64 rows of 576 would be 4.7 GB per temporary
    return sum(float(chunk.double().pow(2).sum()) for chunk in residual.split(ROWS_PER_CHUNK)) / total_variance(x)


def total_variance(x: Float[Tensor, "n d"]) -> float:
    """sum ||x - mean(x)||^2, in float64 a chunk at a time."""
    mean = sum(chunk.double().sum(0) for chunk in x.split(ROWS_PER_CHUNK)) / len(x)
    return sum(float((chunk.double() - mean).pow(2).sum()) for chunk in x.split(ROWS_PER_CHUNK))


def regression_r2(
    features_fit: Float[Tensor, "n f"],
    y_fit: Float[Tensor, " n"],
    features_eval: Float[Tensor, "m f"],
    y_eval: Float[Tensor, " m"],
    *,
    intercept: bool = True,
) -> float:
    """Held-out R^2 of predicting y from features by least squares fit on the fit rows."""
    fitted = fit_linear_map(features_fit, y_fit, intercept=intercept)
    return r2(_as_matrix(y_eval, "y_eval")[:, 0], fitted.predict(_as_matrix(features_eval, "features_eval"))[:, 0])


def group_mean_r2(
    groups_fit: Int[Tensor, " n"],
    y_fit: Float[Tensor, " n"],
    groups_eval: Int[Tensor, " m"],
    y_eval: Float[Tensor, " m"],
) -> float:
    """Held-out R^2 of predicting y by the fit rows' mean of y in the same group (e.g. token id); unseen groups get the overall mean."""
    check_same_rows(groups_fit, y_fit, "groups_fit", "y_fit")
    check_same_rows(groups_eval, y_eval, "groups_eval", "y_eval")
    groups_fit, groups_eval = groups_fit.long().reshape(-1), groups_eval.long().reshape(-1)
    size = int(max(groups_fit.max(), groups_eval.max())) + 1
    sums = torch.zeros(size, dtype=torch.float64).index_add_(0, groups_fit, y_fit.double().reshape(-1))
    counts = torch.zeros(size, dtype=torch.float64).index_add_(
        0, groups_fit, torch.ones(len(groups_fit), dtype=torch.float64)
    )
    means = torch.where(counts > 0, sums / counts.clamp_min(1), y_fit.double().mean())
    return r2(y_eval.reshape(-1), means[groups_eval])
