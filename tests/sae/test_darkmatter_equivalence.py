"""Our regressions against the authors' definitions (JoshEngels/SAE-Dark-Matter, utils.py: run_lstsq, calculate_r_squared), ported to numpy.

Their semantics, in our words: shuffle the tokens with a random permutation; solve least squares (no intercept: any
intercept is a column of ones the caller appends) on the first N tokens; predict the next N; R^2 per target column is
1 - sum(residual^2) / sum((target - mean of the evaluated targets)^2), and a multi-column R^2 is the plain mean over
columns. Vector R^2: the error vectors as targets; norm R^2: ||e||^2 as the single target (sae_power_laws.py).
"""

import numpy as np
import pytest
import torch

from sae.darkmatter import decompose_error, fit_linear_map, regression_r2
from sae.darkmatter.uncertainty import r2_with_ci
from sae.models import TopKConfig, TopKSae

N = 3000  # fit tokens, and as many evaluated


def authors_r2(
    explainer: np.ndarray, target: np.ndarray, permutation: np.ndarray, n_fit: int, n_eval_end: int
) -> float:
    """run_lstsq(..., lstsq_token_threshold=n_fit, eval_token_threshold=n_eval_end)[1], in float64 numpy."""
    x, y = explainer[permutation], target[permutation]
    solution = np.linalg.lstsq(x[:n_fit], y[:n_fit], rcond=1e-9)[0]
    x_eval, y_eval = x[n_fit:n_eval_end], y[n_fit:n_eval_end]
    residual = y_eval - x_eval @ solution
    r2_per_column = 1 - (residual**2).sum(0) / ((y_eval - y_eval.mean(0)) ** 2).sum(0)
    return float(np.mean(r2_per_column))


@pytest.fixture(scope="module")
def shared():
    """Activation-like rows (a large shared mean, unequal scales, correlations) and the error of a seeded TopK SAE on them."""
    gen = torch.Generator().manual_seed(0)
    d = 24
    mixing = torch.randn(d, d, generator=gen, dtype=torch.float64) * torch.logspace(0, -1.5, d, dtype=torch.float64)
    x = (
        torch.randn(2 * N + 500, d, generator=gen, dtype=torch.float64) @ mixing
        + 3.0 * torch.randn(d, generator=gen, dtype=torch.float64)
    ).float()
    sae = TopKSae(TopKConfig(d, 96, k=6, seed=1))
    with torch.no_grad():
        sae_out = sae(x)
    permutation = np.random.default_rng(7).permutation(
        len(x)
    )  # the authors' random order: fit on the first N, evaluate on the next N
    return x.double().numpy(), sae_out.double().numpy(), permutation


def _ours(x, sae_out, permutation):
    fit, held = permutation[:N], permutation[N : 2 * N]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return decompose_error(t(x[fit]), t(sae_out[fit]), t(x[held]), t(sae_out[held])).metrics


def test_vector_and_norm_r2_equal_the_authors_definitions(shared):
    x, sae_out, permutation = shared
    error = x - sae_out
    ours = _ours(x, sae_out, permutation)
    theirs_vector = authors_r2(
        x, -error, permutation, N, 2 * N
    )  # they regress -e (Sae(x) - x): the sign cannot change R^2
    theirs_norm = authors_r2(x, (error**2).sum(-1), permutation, N, 2 * N)
    assert abs(ours["vector_r2"] - theirs_vector) <= 1e-6, (ours["vector_r2"], theirs_vector)
    assert abs(ours["norm_r2"] - theirs_norm) <= 1e-6, (ours["norm_r2"], theirs_norm)
    assert (
        0.05 < theirs_vector < 0.99 and 0.05 < theirs_norm < 0.99
    )  # a regime where the numbers are not trivially 0 or 1


def test_regression_r2_and_the_grid_probe_equal_the_authors_definitions(shared):
    x, sae_out, permutation = shared
    y = ((x - sae_out) ** 2).sum(-1)
    fit, held = permutation[:N], permutation[N : 2 * N]
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    theirs = authors_r2(x, y, permutation, N, 2 * N)
    assert abs(regression_r2(tx[fit], ty[fit], tx[held], ty[held], intercept=False) - theirs) <= 1e-6
    # the grid's path: fit_linear_map then r2_with_ci's point estimate
    probe = fit_linear_map(tx[fit], ty[fit])
    point, low, high = r2_with_ci(ty[held], probe.predict(tx[held])[:, 0], torch.arange(N) // 50, n_boot=200)
    assert abs(point - theirs) <= 1e-6 and low <= point <= high
    # their baselines append a column of ones: our intercept=True
    with_ones = np.concatenate([x, np.ones((len(x), 1))], 1)
    assert (
        abs(
            regression_r2(tx[fit], ty[fit], tx[held], ty[held], intercept=True)
            - authors_r2(with_ones, y, permutation, N, 2 * N)
        )
        <= 1e-6
    )


def test_the_comparison_can_fail(shared):
    """Negative controls: nearby but different definitions differ from theirs by far more than the 1e-6 tolerance."""
    x, sae_out, permutation = shared
    error = x - sae_out
    theirs_vector = authors_r2(x, error, permutation, N, 2 * N)
    # pooled R^2 (one SSE / SST over all columns) instead of the mean of per-column R^2
    fit, held = permutation[:N], permutation[N : 2 * N]
    solution = np.linalg.lstsq(x[fit], error[fit], rcond=None)[0]
    residual = error[held] - x[held] @ solution
    pooled = 1 - (residual**2).sum() / ((error[held] - error[held].mean(0)) ** 2).sum()
    assert abs(pooled - theirs_vector) > 1e-3
    # evaluating on the fit tokens (train R^2) instead of the next N
    y = (error**2).sum(-1)
    train_r2 = regression_r2(
        torch.from_numpy(x[fit]),
        torch.from_numpy(y[fit]),
        torch.from_numpy(x[fit]),
        torch.from_numpy(y[fit]),
        intercept=False,
    )
    assert abs(train_r2 - authors_r2(x, y, permutation, N, 2 * N)) > 1e-4
    # a different random order gives a different held-out set: the agreement above is not an accident of the data
    other = np.random.default_rng(8).permutation(len(x))
    assert abs(authors_r2(x, y, other, N, 2 * N) - authors_r2(x, y, permutation, N, 2 * N)) > 1e-6
