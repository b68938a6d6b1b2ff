"""Not-yet-learned features and the norm-probe readings, against per-token loops, numpy least squares and planted answers."""

import numpy as np
import pytest
import torch

import sae.darkmatter.features as features
from interp.errors import InterpError, ShapeMismatchError
from sae.darkmatter import ErrorParts, improvement_shares, learned_feature_fraction, max_cosine, norm_probe_variants
from tests.shapecheck import shapes_unchecked


def _parts(n=300, d=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return ErrorParts(
        torch.randn(n, d, generator=gen, dtype=torch.float64),
        torch.randn(n, d, generator=gen, dtype=torch.float64) * 0.5,
    ), gen


def test_improvement_shares_match_a_per_token_loop(monkeypatch):
    monkeypatch.setattr(features, "ROWS_PER_CHUNK", 7)  # several chunks
    parts, gen = _parts()
    d = torch.randn(parts.linear.shape, generator=gen, dtype=torch.float64) + parts.linear * 0.8
    lin, non, imp = parts.linear.numpy(), parts.nonlinear.numpy(), d.numpy()
    d_lin = d_non = d_err = e_lin = e_non = e_err = 0.0
    for i in range(len(lin)):
        e = lin[i] + non[i]
        d_lin, d_non, d_err = d_lin + imp[i] @ lin[i], d_non + imp[i] @ non[i], d_err + imp[i] @ e
        e_lin, e_non, e_err = e_lin + e @ lin[i], e_non + e @ non[i], e_err + e @ e
    got = improvement_shares(parts, d)
    assert got["share_linear"] == pytest.approx(d_lin / d_err, rel=1e-10) and got["share_nonlinear"] == pytest.approx(
        d_non / d_err, rel=1e-10
    )
    assert got["energy_share_linear"] == pytest.approx(e_lin / e_err, rel=1e-10) and got[
        "energy_share_nonlinear"
    ] == pytest.approx(e_non / e_err, rel=1e-10)
    assert got["not_yet_learned_ratio_nonlinear"] == pytest.approx((d_non / d_err) / (e_non / e_err), rel=1e-10)
    assert got["share_linear"] + got["share_nonlinear"] == pytest.approx(1.0)
    assert got["improvement_of_error"] == pytest.approx(d_err / e_err, rel=1e-10)


def test_a_larger_sae_that_learns_only_the_linear_part_gives_the_nonlinear_part_nothing():
    parts, _ = _parts()
    nonlinear = parts.nonlinear.clone()
    nonlinear[:, 0] = 0  # planted: the nonlinear part lives off dimension 0, the improvement on it
    linear = torch.zeros_like(parts.linear)
    linear[:, 0] = parts.linear[:, 0]
    got = improvement_shares(ErrorParts(linear, nonlinear), 0.5 * linear)
    assert got["share_nonlinear"] == pytest.approx(0.0, abs=1e-12) and got[
        "not_yet_learned_ratio_nonlinear"
    ] == pytest.approx(0.0, abs=1e-12)
    assert got["not_yet_learned_ratio_linear"] == pytest.approx(1 / got["energy_share_linear"])


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_max_cosine_matches_numpy_across_chunks(monkeypatch):
    monkeypatch.setattr(features, "ROWS_PER_CHUNK", 7)
    gen = torch.Generator().manual_seed(1)
    rows, reference = torch.randn(30, 16, generator=gen) * 3, torch.randn(50, 16, generator=gen)
    expected = (_unit(rows.double().numpy()) @ _unit(reference.double().numpy()).T).max(1)
    np.testing.assert_allclose(max_cosine(rows, reference).numpy(), expected, atol=1e-12)


def test_learned_feature_fraction_counts_planted_copies():
    gen = torch.Generator().manual_seed(2)
    d = 64
    larger, smaller = torch.randn(200, d, generator=gen), torch.randn(40, d, generator=gen)
    noise = 0.05 * torch.randn(20, d, generator=gen)
    # 6 new directions of the larger SAE, 4 already in the smaller one (also in the larger), 10 random, 5 dead copies of larger rows
    shared = smaller[:4]
    larger = torch.cat([larger, shared])
    decoder = torch.cat(
        [larger[:6] * 2.0 + noise[:6], shared + noise[6:10], torch.randn(10, d, generator=gen), larger[10:15]]
    )
    live = torch.ones(len(decoder), dtype=torch.bool)
    live[-5:] = False
    got = learned_feature_fraction(decoder, larger, smaller, live=live, threshold=0.7)
    assert got["live_latents"] == 20
    assert got["not_yet_learned_fraction"] == pytest.approx(6 / 20) and got["in_larger_fraction"] == pytest.approx(
        10 / 20
    )
    assert got["in_smaller_fraction"] == pytest.approx(4 / 20)
    # the same count by a hand-written loop over latents
    dec, big, small = (_unit(t.double().numpy()) for t in (decoder[:20], larger, smaller))
    count = sum(1 for row in dec if max(row @ b for b in big) >= 0.7 and max(row @ s for s in small) < 0.7)
    assert got["not_yet_learned_fraction"] == pytest.approx(count / 20)
    assert got["mean_max_cosine_larger"] == pytest.approx(
        np.mean([max(row @ b for b in big) for row in dec]), abs=1e-10
    )


def test_norm_probe_variants_match_numpy_lstsq():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(900, 6, generator=gen, dtype=torch.float64) + torch.tensor(
        [3.0, 0, 0, 0, 0, 0], dtype=torch.float64
    )
    norm = (x[:, 1:3].pow(2).sum(1) + 1).sqrt() + 0.1 * torch.rand(900, generator=gen, dtype=torch.float64)
    frame = norm_probe_variants(x[:600], norm[:600], x[600:], norm[600:], fit_sizes=(100, 10_000))
    assert sorted(frame.fit_tokens.unique()) == [100, 600] and len(frame) == 2 * 2 * 2
    for row in frame.itertuples():
        xs, y = x[: row.fit_tokens].numpy(), norm[: row.fit_tokens].numpy() ** (1 if row.target == "norm" else 2)
        design = np.hstack([xs, np.ones((len(xs), 1))]) if row.intercept else xs
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        xe = x[600:].numpy()
        y_eval = norm[600:].numpy() ** (1 if row.target == "norm" else 2)
        pred = (np.hstack([xe, np.ones((len(xe), 1))]) if row.intercept else xe) @ coef
        assert row.r2 == pytest.approx(
            1 - ((y_eval - pred) ** 2).sum() / ((y_eval - y_eval.mean()) ** 2).sum(), abs=1e-8
        )


def test_bad_inputs_name_the_argument(unchecked_shapes):
    parts, _ = _parts()
    with pytest.raises(ShapeMismatchError, match="improvement has shape"):
        improvement_shares(parts, torch.zeros(3, 10))
    with pytest.raises(InterpError, match="changes nothing"):
        improvement_shares(parts, torch.zeros_like(parts.linear))
    with pytest.raises(ShapeMismatchError, match="same d"), shapes_unchecked():
        max_cosine(torch.zeros(3, 4), torch.zeros(5, 6))
    rows = torch.randn(5, 4)
    with pytest.raises(InterpError, match="threshold=1.5"):
        learned_feature_fraction(rows, rows, rows, threshold=1.5)
    with pytest.raises(ShapeMismatchError, match="live"):
        learned_feature_fraction(rows, rows, rows, live=torch.ones(3, dtype=torch.bool))
    with pytest.raises(InterpError, match="no live latents"):
        learned_feature_fraction(rows, rows, rows, live=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError, match="one norm per row"):
        norm_probe_variants(rows, torch.zeros(4), rows, torch.zeros(5))
