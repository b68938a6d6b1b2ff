"""Bootstrap CIs over held-out sequences against a slow per-replicate loop, with planted and null effects."""

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import InterpError, ShapeMismatchError
from sae.darkmatter import ce_shares, r2
from sae.darkmatter.uncertainty import bootstrap_counts, ce_shares_with_ci, describe_interval, r2_with_ci
from tests.shapecheck import shapes_unchecked


def _draws(n_clusters, n_boot, seed):
    """The same draws bootstrap_counts makes, as lists of cluster ids (with repeats)."""
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))


def test_bootstrap_counts_are_the_draws():
    counts = bootstrap_counts(7, 20, seed=3)
    assert counts.shape == (20, 7) and (counts.sum(1) == 7).all()
    for row, draw in zip(counts, _draws(7, 20, 3)):
        assert row.tolist() == np.bincount(draw, minlength=7).tolist()
    with pytest.raises(InterpError, match="n_clusters=1"):
        bootstrap_counts(1, 10, 0)


def test_r2_with_ci_matches_a_slow_loop_over_replicates():
    gen = np.random.default_rng(0)
    n_seqs, per = 30, np.arange(30) % 5 + 3  # sequences of unequal length
    seq = np.repeat(np.arange(n_seqs), per)
    y = gen.normal(size=len(seq)) + 0.5 * np.repeat(gen.normal(size=n_seqs), per)  # correlated within a sequence
    y_hat = y + gen.normal(scale=0.6, size=len(seq))
    point, low, high = r2_with_ci(torch.tensor(y), torch.tensor(y_hat), torch.tensor(seq), n_boot=300, seed=5)
    assert point == pytest.approx(r2(torch.tensor(y), torch.tensor(y_hat)), abs=1e-12)
    slow = []
    for draw in _draws(n_seqs, 300, 5):
        rows = np.concatenate([np.nonzero(seq == s)[0] for s in draw])
        slow.append(r2(torch.tensor(y[rows]), torch.tensor(y_hat[rows])))
    assert (low, high) == pytest.approx(tuple(np.percentile(slow, [2.5, 97.5])), abs=1e-10)
    assert low < point < high


def test_r2_ci_covers_the_planted_value_and_narrows_with_more_sequences():
    """y = signal + noise with var(signal) = var(noise): population R^2 of predicting y by the signal is 0.5."""
    widths = []
    for n_seqs in (100, 1600):
        gen = np.random.default_rng(n_seqs)
        signal = gen.normal(size=n_seqs * 20)
        y = signal + gen.normal(size=len(signal))
        _, low, high = r2_with_ci(
            torch.tensor(y), torch.tensor(signal), torch.tensor(np.repeat(np.arange(n_seqs), 20)), n_boot=400
        )
        assert low < 0.5 < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(n): 4x narrower for 16x the sequences


def _losses(n_seqs, share_linear_in_place, seed, per_seq=40):
    """Per-token CE where Sae(x) adds 0.1 nats, Sae + LinearError a planted fraction of that, Sae + NonlinearError the rest; noise per token."""
    gen = np.random.default_rng(seed)
    n = n_seqs * per_seq
    clean = gen.gamma(2.0, 1.5, size=n)
    sae = clean + 0.1 + gen.normal(scale=0.3, size=n)
    return pd.DataFrame(
        dict(
            seq=np.repeat(np.arange(n_seqs), per_seq),
            pos=np.tile(np.arange(per_seq), n_seqs),
            ce_clean=clean,
            ce_sae=sae,
            ce_sae_plus_linear=clean + share_linear_in_place * 0.1 + gen.normal(scale=0.3, size=n),
            ce_sae_plus_nonlinear=clean + (1 - share_linear_in_place) * 0.1 + gen.normal(scale=0.3, size=n),
        )
    )


def test_ce_shares_with_ci_match_ce_shares_and_a_slow_loop():
    losses = _losses(25, 0.3, seed=1)
    out = ce_shares_with_ci(losses, n_boot=200, seed=2)
    plain = ce_shares(losses)
    for key in ("ce_share_nonlinear", "ce_share_linear", "ce_increase_sae"):
        assert out[key] == pytest.approx(plain[key], abs=1e-12)
    slow = []
    for draw in _draws(25, 200, 2):
        frame = pd.concat([losses[losses.seq == s] for s in draw])
        slow.append(ce_shares(frame)["ce_share_nonlinear"])
    assert tuple(out["ce_share_nonlinear_ci"]) == pytest.approx(tuple(np.percentile(slow, [2.5, 97.5])), abs=1e-10)
    assert out["downstream_seqs"] == 25 and out["downstream_tokens"] == 1000


def test_ce_share_ci_finds_a_planted_share_and_includes_zero_for_none():
    planted = ce_shares_with_ci(_losses(512, 0.4, seed=3), n_boot=500)
    low, high = planted["ce_share_nonlinear_ci"]
    assert low < 0.4 < high and low > 0 and not planted["ce_share_nonlinear_ci_includes_zero"]
    # negative control: the linear error left in place costs nothing (share 0): its CI must include 0
    null = ce_shares_with_ci(_losses(512, 0.0, seed=4), n_boot=500)
    assert (
        null["ce_share_nonlinear_ci_includes_zero"]
        and null["ce_share_nonlinear_ci"][0] < 0 < null["ce_share_nonlinear_ci"][1]
    )


def test_bad_inputs_name_the_argument():
    with pytest.raises(ShapeMismatchError, match="clusters"), shapes_unchecked():
        r2_with_ci(torch.zeros(10), torch.zeros(10), torch.zeros(9))
    with pytest.raises(ShapeMismatchError, match="missing columns"):
        ce_shares_with_ci(pd.DataFrame(dict(seq=[0, 1], ce_clean=[1.0, 2.0])))
    assert describe_interval(0.1, -0.05, 0.2) == "0.10 [-0.05, 0.20] (CI includes 0)"


def test_grid_effects_recover_a_planted_additive_grid():
    """Positive control: width adds 0.1 and dropping 64 positions 0.05; negative control: k does nothing."""
    from experiments.dark_matter import grid_effects

    rows = [
        dict(
            width=w,
            positions_dropped=p,
            training=t,
            k=k,
            status="done",
            norm_r2=0.6 + 0.1 * (w == 2304) + {1: 0.0, 16: 0.02, 64: 0.05}[p] + 0.03 * (t == "converged"),
        )
        for w in (576, 2304)
        for p in (1, 16, 64)
        for t in ("short", "converged")
        for k in (32, 64)
    ]
    rows.append(
        dict(width=576, positions_dropped=1, training="short", k=128, status="missing", norm_r2=None)
    )  # not measured: left out
    effects = grid_effects(pd.DataFrame(rows)).set_index(["factor", "level_to"])
    assert (
        effects.loc[("width", "2304"), "mean_change"] == pytest.approx(0.1)
        and effects.loc[("width", "2304"), "pairs"] == 12
    )
    assert effects.loc[("positions_dropped", "64"), "mean_change"] == pytest.approx(0.05)
    assert effects.loc[("positions_dropped", "16"), "mean_change"] == pytest.approx(0.02)
    assert effects.loc[("training", "converged"), "mean_change"] == pytest.approx(0.03)
    assert effects.loc[("k", "64"), ["mean_change", "min_change", "max_change"]].tolist() == pytest.approx([0, 0, 0])
    assert ("k", "128") not in effects.index


def test_the_paper_regime_claim_is_judged_on_the_ci_and_says_which_cell():
    from sae.darkmatter.claims import _paper_regime_row

    def cell(k, value, low, high, width=2304, p=64, training="converged"):
        return dict(width=width, k=k, training=training, positions_dropped=p, norm_r2=value, ci_low=low, ci_high=high)

    base = [cell(32, 0.5, 0.4, 0.6, width=576), cell(32, 0.5, 0.4, 0.6, p=1)]
    assert _paper_regime_row(base + [cell(64, 0.95, 0.93, 0.97)])["verdict"] == "holds"
    assert _paper_regime_row(base + [cell(64, 0.80, 0.79, 0.81)])["verdict"] == "does not hold"
    assert _paper_regime_row(base + [cell(64, 0.90, 0.89, 0.91)])["verdict"].startswith("undetermined")
    fallback = _paper_regime_row(base + [cell(64, None, None, None), cell(32, 0.7, 0.69, 0.71)])
    assert fallback["verdict"] == "does not hold" and "judged at k=32" in fallback["claim"]
    assert _paper_regime_row(base + [cell(64, None, None, None)])["verdict"] == "not measured"
