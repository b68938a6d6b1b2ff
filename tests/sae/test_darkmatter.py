"""Dark-matter estimators against numpy least squares, closed forms and hand-written loops."""

import numpy as np
import pandas as pd
import pytest
import torch

import sae.darkmatter.regression as regression
from interp.errors import InterpError, ShapeMismatchError
from sae.darkmatter import (
    LinearErrorFit,
    SyntheticSpec,
    cross_width_norms,
    decompose_error,
    fit_linear_map,
    fit_power_law,
    fvu,
    group_mean_r2,
    nonlinear_fvu_with_inputs,
    norm_baselines,
    synthetic_check,
    vector_r2,
)
from tests.shapecheck import shapes_unchecked


def _data(n=600, d=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) + 0.5
    return x, gen


def _numpy_r2(y, y_hat):
    y, y_hat = np.asarray(y, float), np.asarray(y_hat, float)
    return 1 - ((y - y_hat) ** 2).sum() / ((y - y.mean()) ** 2).sum()


@pytest.mark.parametrize("intercept", [False, True])
def test_fit_linear_map_equals_numpy_lstsq_across_chunks(monkeypatch, intercept):
    monkeypatch.setattr(regression, "ROWS_PER_CHUNK", 97)  # several partial chunks
    x, gen = _data()
    y = torch.randn(len(x), 5, generator=gen)
    design = np.c_[x.double().numpy(), np.ones(len(x))] if intercept else x.double().numpy()
    expected = np.linalg.lstsq(design, y.double().numpy(), rcond=None)[0]
    fitted = fit_linear_map(x, y, intercept=intercept)
    got = torch.cat([fitted.weight, fitted.bias[None]]) if intercept else fitted.weight
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(fitted.predict(x).numpy(), design @ expected, atol=1e-10)


def test_fit_linear_map_rank_deficient_gives_the_minimum_norm_solution():
    x, gen = _data(d=6)
    x = torch.cat([x, x[:, :2] * 2.0], dim=1)  # two columns repeat others
    y = torch.randn(len(x), 3, generator=gen)
    expected = np.linalg.lstsq(x.double().numpy(), y.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(fit_linear_map(x, y).weight.numpy(), expected, atol=1e-8)


def test_vector_r2_and_fvu_match_closed_forms():
    x, gen = _data()
    y_hat = x + 0.3 * torch.randn(x.shape, generator=gen)
    per_dim = [_numpy_r2(x[:, j], y_hat[:, j]) for j in range(x.shape[1])]
    assert vector_r2(x, y_hat) == pytest.approx(np.mean(per_dim), abs=1e-12)
    xn, hn = x.double().numpy(), y_hat.double().numpy()
    assert fvu(x, y_hat) == pytest.approx(((xn - hn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum(), rel=1e-12)


def test_decompose_error_fits_on_fit_tokens_and_measures_on_held_out():
    x, gen = _data(n=1200)
    true_map = torch.randn(12, 12, generator=gen) * 0.1
    noise = 0.05 * torch.randn(x.shape, generator=gen)
    sae_out = x - (x @ true_map + noise)  # error = linear part + independent part
    fit_x, eval_x, fit_out, eval_out = x[:800], x[800:], sae_out[:800], sae_out[800:]
    result = decompose_error(fit_x, fit_out, eval_x, eval_out)
    a = np.linalg.lstsq(fit_x.double().numpy(), (fit_x.double() - fit_out.double()).numpy(), rcond=None)[0]
    e = (eval_x.double() - eval_out.double()).numpy()
    lin = eval_x.double().numpy() @ a
    xe = eval_x.double().numpy()
    total = ((xe - xe.mean(0)) ** 2).sum()
    m = result.metrics
    assert m["fvu_sae"] == pytest.approx((e**2).sum() / total, rel=1e-10)
    assert m["fvu_sae_plus_linear"] == pytest.approx(((e - lin) ** 2).sum() / total, rel=1e-8)
    assert m["fvu_sae_plus_nonlinear"] == pytest.approx((lin**2).sum() / total, rel=1e-8)
    assert m["vector_r2"] == pytest.approx(np.mean([_numpy_r2(e[:, j], lin[:, j]) for j in range(12)]), abs=1e-8)
    b = np.linalg.lstsq(fit_x.double().numpy(), ((fit_x.double() - fit_out.double()).numpy() ** 2).sum(1), rcond=None)[
        0
    ]
    assert m["norm_r2"] == pytest.approx(_numpy_r2((e**2).sum(1), xe @ b), abs=1e-8)
    assert (
        m["vector_r2"] > 0.7 and m["fvu_sae_plus_linear"] < 0.2 * m["fvu_sae"]
    )  # the error is mostly linear by construction
    np.testing.assert_allclose(result.parts.linear.numpy() + result.parts.nonlinear.numpy(), e, atol=1e-10)
    # The held-out tokens do not enter the fit.
    other = decompose_error(fit_x, fit_out, eval_x * 3, eval_out)
    torch.testing.assert_close(other.fit.error_map.weight, result.fit.error_map.weight)


def test_error_independent_of_x_is_all_nonlinear():
    x, gen = _data(n=4000)
    error = 0.1 * torch.randn(x.shape, generator=gen)
    m = decompose_error(x[:3000], x[:3000] - error[:3000], x[3000:], x[3000:] - error[3000:]).metrics
    assert abs(m["vector_r2"]) < 0.02 and m["fvu_sae_plus_linear"] == pytest.approx(m["fvu_sae"], rel=0.02)


def test_power_law_fit_recovers_known_parameters():
    widths = np.array([1024, 2048, 4096, 8192, 16384, 32768])
    fvus = 0.07 + 3.0 * widths**-0.4
    law = fit_power_law(widths, fvus)
    assert (law.c, law.a, law.m) == pytest.approx((0.07, 3.0, -0.4), rel=1e-4)
    np.testing.assert_allclose(law(widths), fvus, rtol=1e-6)
    with pytest.raises(InterpError, match="at least 3 points"):
        fit_power_law([1, 2], [0.5, 0.4])


def test_cross_width_norms_match_numpy_regressions():
    _, gen = _data()
    norms, nonlinear = {}, {}
    base = torch.rand(900, generator=gen, dtype=torch.float64)
    for w in (64, 128, 256):
        e = base * (1 - w / 1000) + 0.1 * torch.rand(900, generator=gen, dtype=torch.float64)
        nl = 0.5 * e + 0.1 * torch.rand(900, generator=gen, dtype=torch.float64)
        norms[w], nonlinear[w] = (e[:600], e[600:]), (nl[:600], nl[600:])
    table = cross_width_norms(norms, nonlinear)
    assert list(zip(table.width_from, table.width_to)) == [(64, 128), (64, 256), (128, 256)]
    row = table.iloc[1]
    fi, ei = (t.numpy() for t in norms[64])
    fj, ej = (t.numpy() for t in norms[256])
    nf, ne = (t.numpy() for t in nonlinear[64])
    coef = np.linalg.lstsq(np.c_[fi, np.ones(600)], fj, rcond=None)[0]
    assert row.r2 == pytest.approx(_numpy_r2(ej, np.c_[ei, np.ones(300)] @ coef), abs=1e-10)
    coef2 = np.linalg.lstsq(np.c_[fi, nf, np.ones(600)], fj, rcond=None)[0]
    assert row.r2_with_nonlinear == pytest.approx(_numpy_r2(ej, np.c_[ei, ne, np.ones(300)] @ coef2), abs=1e-10)
    assert row.nonlinear_gain == pytest.approx(row.r2_with_nonlinear - row.r2)


def test_group_mean_and_norm_baselines():
    x, gen = _data(n=1000)
    tokens = torch.randint(0, 20, (1000,), generator=gen)
    y = tokens.double() * 0.1 + 0.05 * torch.randn(1000, generator=gen, dtype=torch.float64)
    tokens[999] = 50  # a token never seen in the fit rows
    frame = pd.DataFrame(dict(t=tokens[:700].numpy(), y=y[:700].numpy()))
    means = frame.groupby("t").y.mean()
    predicted = [means.get(int(t), y[:700].mean().item()) for t in tokens[700:]]
    assert group_mean_r2(tokens[:700], y[:700], tokens[700:], y[700:]) == pytest.approx(
        _numpy_r2(y[700:], predicted), abs=1e-12
    )
    table = norm_baselines(
        y[:700],
        y[700:],
        x[:700],
        x[700:],
        tokens[:700],
        tokens[700:],
        {"x_norm": (x[:700].norm(dim=1), x[700:].norm(dim=1))},
    )
    assert list(table.predictor) == ["activation", "activation_with_intercept", "token_id_mean", "x_norm"]
    assert table.set_index("predictor").r2["token_id_mean"] > 0.9


def test_nonlinear_fvu_with_inputs_finds_the_missing_input():
    x, gen = _data(n=3000)
    hidden = torch.randn(3000, 4, generator=gen)
    error = x @ (0.1 * torch.randn(12, 12, generator=gen)) + hidden @ torch.randn(4, 12, generator=gen)
    out = nonlinear_fvu_with_inputs(x[:2000], error[:2000], hidden[:2000], x[2000:], error[2000:], hidden[2000:])
    assert out["nonlinear_fvu_with_inputs"] < 1e-10 < out["nonlinear_fvu"]
    assert out["nonlinear_fvu_change"] == pytest.approx(-out["nonlinear_fvu"])


def test_synthetic_check_separates_activation_noise_from_reconstruction_noise():
    table, metrics = synthetic_check(SyntheticSpec(n_tokens=6000))
    assert (
        table.loc["linear_error", "activation_noise"] > 0.95
        and table.loc["nonlinear_error", "reconstruction_noise"] > 0.95
    )
    assert (
        abs(table.loc["linear_error", "reconstruction_noise"]) < 0.1
        and abs(table.loc["nonlinear_error", "activation_noise"]) < 0.1
    )
    assert 0 < metrics["fvu_sae_plus_linear"] < metrics["fvu_sae"]


def test_bad_inputs_name_the_argument(unchecked_shapes):
    x, _ = _data()
    with pytest.raises(ShapeMismatchError, match="x has 600 rows but y has 10"), shapes_unchecked():
        fit_linear_map(x, torch.zeros(10, 2))
    with pytest.raises(ShapeMismatchError, match="error has shape"):
        LinearErrorFit.fit(x, x[:, :3])
    with pytest.raises(ShapeMismatchError, match="x: expected"):
        fit_linear_map(torch.zeros(2, 3, 4), torch.zeros(2, 1))
    with pytest.raises(InterpError, match="feature_rank"):
        SyntheticSpec(feature_rank=100, d_model=64)


def test_claims_table_verdicts_follow_the_numbers():
    from sae.darkmatter.claims import claims_table

    corr = {
        "activation_noise": {"linear_error": 0.99, "nonlinear_error": 0.01},
        "reconstruction_noise": {"linear_error": 0.0, "nonlinear_error": 0.98},
    }
    m = dict(
        vector_r2=[0.5, 0.5, 0.5],
        norm_r2=[0.95, 0.93, 0.92],
        fvu_sae=[0.3, 0.2, 0.15],
        fvu_sae_plus_linear=[0.1, 0.1, 0.1],
        cross_width_norm_r2=0.8,
        nonlinear_norm_gain=0.02,
        norm_baseline_r2={"activation": 0.9, "activation_with_intercept": 0.91, "token_id_mean": 0.3, "l0": 0.1},
        focus_nonlinear_fvu_share=0.33,
        focus_nonlinear_fvu=0.1,
        ce_share_nonlinear=0.4,
        sae_on_linear_fvu=0.2,
        sae_on_nonlinear_fvu=0.5,
        pursuit_nonlinear_fvu_change=-0.002,
        sae_nonlinear_fvu_on_pursuit_tokens=0.1,
        earlier_layer_nonlinear_fvu_change=-0.01,
        synthetic_corr=corr,
    )
    assert claims_table(m).holds.all()
    worse = (
        claims_table(dict(m, norm_r2=[0.95, 0.5, 0.92], fvu_sae_plus_linear=[0.1, 0.1, 0.01], ce_share_nonlinear=0.05))
        .set_index("claim")
        .holds
    )
    assert not worse["Over 90% of the error norm is linearly predictable"]
    assert not worse["FVU of Sae(x) + LinearError stays roughly flat while Sae(x) improves with width"]
    assert not worse["The nonlinear error causes a proportional share of the CE increase"]
    assert worse.sum() == len(worse) - 3
