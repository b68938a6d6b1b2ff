"""Edge cases of the dark-matter regressions that the main tests do not reach (found by mutation testing).

Every bad-input error must name the argument that is wrong (the toolkit's error convention); R^2 of a
constant column is NaN, of a low-variance column its closed form; a group seen once has its own mean.
"""

import numpy as np
import pytest
import torch

from interp.errors import ShapeMismatchError
from sae.darkmatter.regression import (
    fit_linear_map,
    group_mean_r2,
    r2_per_dimension,
    regression_r2,
    residual_fvu,
)


def _numpy_r2_columns(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    sse = ((y - y_hat) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1 - sse / sst, np.nan)


def _rows(n: int, d: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(n))


# (call, the argument the message must start with): each mismatched argument alone
ROW_MISMATCHES = [
    (lambda: fit_linear_map(_rows(5), _rows(4)), r"^x has 5 rows but y has 4"),
    (lambda: residual_fvu(_rows(5), _rows(4)), r"^x has 5 rows but residual has 4"),
    (
        lambda: group_mean_r2(torch.arange(5), torch.zeros(4), torch.arange(3), torch.zeros(3)),
        r"^groups_fit has 5 rows but y_fit has 4",
    ),
    (
        lambda: group_mean_r2(torch.arange(5), torch.zeros(5), torch.arange(3), torch.zeros(2)),
        r"^groups_eval has 3 rows but y_eval has 2",
    ),
]


@pytest.mark.parametrize("call, message", ROW_MISMATCHES)
def test_row_mismatch_names_both_arguments(unchecked_shapes, call, message):
    with pytest.raises(ShapeMismatchError, match=message):
        call()


# arguments of the wrong rank: the message starts with the argument's own name
WRONG_RANK = [
    (lambda bad: fit_linear_map(_rows(4), bad), "y"),
    (lambda bad: r2_per_dimension(bad, torch.zeros(2, 3)), "y"),
    (lambda bad: r2_per_dimension(torch.zeros(2, 3), bad), "y_hat"),
    (lambda bad: regression_r2(_rows(4), torch.zeros(4), _rows(2), bad), "y_eval"),
    (lambda bad: regression_r2(_rows(4), torch.zeros(4), bad, torch.zeros(2)), "features_eval"),
]


@pytest.mark.parametrize("call, argument", WRONG_RANK)
def test_wrong_rank_names_the_argument(unchecked_shapes, call, argument):
    with pytest.raises(ShapeMismatchError, match=rf"^{argument}: expected \[rows, features\]"):
        call(torch.zeros(2, 3, 1))


def test_r2_per_dimension_shape_mismatch_states_both_shapes(unchecked_shapes):
    with pytest.raises(ShapeMismatchError, match=r"y_hat has shape \(4, 2\) but y has \(4, 3\)"):
        r2_per_dimension(torch.zeros(4, 3), torch.zeros(4, 2))


def test_fit_needs_a_row_and_one_row_is_enough():
    with pytest.raises(ShapeMismatchError, match="^x: no rows to fit on"):
        fit_linear_map(torch.zeros(0, 3), torch.zeros(0, 2))
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[5.0]])
    expected = np.linalg.lstsq(x.double().numpy(), y.double().numpy(), rcond=None)[0]  # minimum norm, one row
    np.testing.assert_allclose(fit_linear_map(x, y).weight.numpy(), expected, atol=1e-12)


def test_r2_per_dimension_constant_and_low_variance_columns():
    gen = torch.Generator().manual_seed(0)
    y = torch.stack(
        [
            torch.full((50,), 3.0),  # constant: R^2 undefined
            0.01 * torch.randn(50, generator=gen, dtype=torch.float64).float(),  # SST far below 1
            torch.randn(50, generator=gen),
        ],
        dim=1,
    )
    y_hat = y + 0.004 * torch.randn(50, 3, generator=gen)
    got = r2_per_dimension(y, y_hat).numpy()
    expected = _numpy_r2_columns(y.double().numpy(), y_hat.double().numpy())
    assert np.isnan(got[0]) and np.isnan(expected[0])
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-9)
    assert 0 < got[1] < 0.99  # the low-variance column is neither NaN nor the unit-SST value


def test_group_mean_r2_groups_seen_once_use_their_own_value():
    # groups 0..4 each seen exactly once in the fit rows: the prediction is that one value
    groups_fit = torch.tensor([0, 1, 2, 3, 4])
    y_fit = torch.tensor([1.0, -2.0, 3.0, 0.5, 7.0])
    groups_eval = torch.tensor([4, 3, 2, 1, 0, 4])
    y_eval = torch.tensor([6.5, 0.0, 3.5, -2.5, 1.5, 7.5])
    predicted = y_fit[groups_eval].double().numpy()
    expected = (
        1
        - ((y_eval.double().numpy() - predicted) ** 2).sum()
        / ((y_eval.double().numpy() - y_eval.double().numpy().mean()) ** 2).sum()
    )
    assert group_mean_r2(groups_fit, y_fit, groups_eval, y_eval) == pytest.approx(expected, abs=1e-12)
