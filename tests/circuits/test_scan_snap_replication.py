"""Scan and snap against the authors' own numbers (figure_4.log, figure_6_data.pkl) and the measures of issue 16."""

import math

import numpy as np
import pandas as pd
import pytest

from circuits.scan_snap.data import SequenceClasses
from circuits.scan_snap.dynamics import snap_dynamics
from circuits.scan_snap.measures import (
    estimate_B,
    scan_snap_measures,
    settling_step,
    snap_step,
    theorem3_trajectory_frame,
)
from circuits.scan_snap.model import TrainSettings
from circuits.scan_snap.predictions import figure6_comparison, paired_bootstrap_ci
from circuits.scan_snap.reference import FIGURE4_LOSS, FIGURE6_ENTROPY
from circuits.scan_snap.replication import figure4_loss_curve, figure6_runs
from interp.errors import InterpError

SMALL = SequenceClasses(n_queries=2, next_per_query=1)


def test_figure4_loss_curve_matches_the_authors_log():
    """The authors' Figure 4 run (their figure_4.log) within 10% at iterations 0..10, averaged over 10 seeds."""
    curve = figure4_loss_curve(SMALL, list(range(10)), 11).groupby("step")["loss"].mean()
    assert curve[0] == pytest.approx(math.log(34), rel=1e-5)  # zero init: uniform over the 34-token vocabulary
    for step, authors in FIGURE4_LOSS.items():
        assert abs(curve[step] - authors) / authors < 0.10, (step, curve[step], authors)


def test_figure4_loss_curve_tells_a_different_setting_apart():
    """Negative control: without the authors' momentum the same comparison fails (the test can fail)."""
    curve = figure4_loss_curve(SMALL, list(range(10)), 11, momentum=0.0).groupby("step")["loss"].mean()
    assert max(abs(curve[s] - v) / v for s, v in FIGURE4_LOSS.items()) > 0.5


def test_snap_step_of_an_exponential_decay_has_the_closed_form():
    """m(t) = a + b exp(-t/tau): per-step change b e^{-t/tau}(1 - e^{-1/tau}) falls below 1% of its peak after tau ln 100."""
    tau, t = 7.0, np.arange(200)
    mass = 0.4 + 0.25 * np.exp(-t / tau)
    assert snap_step(mass) == math.floor(tau * math.log(100)) + 1
    # |m(t) - m(end)| <= 5% of the drop once exp(-t/tau) <= 0.05 (the tail exp(-199/tau) is negligible)
    assert settling_step(mass) == math.ceil(tau * math.log(20))
    measures = scan_snap_measures(mass)
    assert measures["max_rise_before_snap"] < 0 and measures["share_steps_falling_before_snap"] == 1.0
    assert measures["drift_after_snap"] == pytest.approx((mass[snap_step(mass)] - mass[-1]) / (mass[0] - mass[-1]))
    assert measures["still_moving_at_end"] == 0.0
    rising = mass.copy()
    rising[20] += 0.05  # one upward blip during the scan
    assert scan_snap_measures(rising)["max_rise_before_snap"] == pytest.approx(rising[20] - rising[19])
    assert scan_snap_measures(0.4 + 0.001 * (200 - t))["still_moving_at_end"] == 1.0  # a steady fall never snaps


def test_estimate_B_recovers_the_reduced_odes_own_B():
    """On the paper's reduced dynamics every distinct logit moves by dB f_l^2, so B read off the logits is the ODE's B."""
    classes = SequenceClasses(n_queries=4)
    trajectory = snap_dynamics(classes, 50, 1.0, 3.0, 300.0, n_times=3000)
    z, f2 = trajectory.z[:, classes.n_common :], trajectory.f[:, classes.n_common :] ** 2
    for estimator in ("all_distinct", "top_token"):
        B = estimate_B(z, f2, estimator)
        assert np.allclose(B, trajectory.B, rtol=2e-3, atol=1e-6)
    frame = theorem3_trajectory_frame(trajectory.z, trajectory.f**2, trajectory.t, classes.n_common)
    assert frame["r2_structure"].iloc[0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(InterpError, match="estimator='median'"):
        estimate_B(z, f2, "median")


def test_theorem3_frame_flags_a_pair_that_grows_too_slowly():
    """Positive control for a violation: a second token pushed harder than dB f^2 keeps r below the lower bound."""
    t = np.arange(50.0)
    dB = 0.1
    p = np.array([0.9, 1.0])
    z = np.zeros((50, 2))
    f2 = np.zeros((50, 2))
    for i in range(50):
        f = p * np.exp(z[i])
        f2[i] = (f / np.linalg.norm(f)) ** 2
        if i + 1 < 50:
            z[i + 1] = z[i] + dB * f2[i] * np.array([1.6, 1.0])  # the lower token gets 1.6x the push per unit f^2
    frame = theorem3_trajectory_frame(z, f2, t, 0, estimator="top_token")
    assert (frame["bound_violated"] == "lower").mean() > 0.5


def test_paired_bootstrap_ci():
    a = np.arange(10.0)
    mean, low, high = paired_bootstrap_ci(a, a + 2.0)
    assert (mean, low, high) == pytest.approx((2.0, 2.0, 2.0))
    rng = np.random.default_rng(0)
    mean, low, high = paired_bootstrap_ci(rng.normal(size=40), rng.normal(size=40) + 1.0)
    assert low < mean < high and low > 0


def test_figure6_comparison_against_a_hand_computation():
    rows = [
        dict(n_queries=1, eta_z=0.5, ratio=1.0, seed=s, cls=k, entropy=e)
        for s, (e0, e1) in enumerate([(1.9, 2.0), (2.0, 2.1)])
        for k, e in enumerate((e0, e1))
    ]
    table = figure6_comparison(pd.DataFrame(rows), FIGURE6_ENTROPY)
    row = table.iloc[0]
    assert row["ours"] == pytest.approx(2.0) and row["ours_std"] == pytest.approx(math.sqrt(0.005))
    assert row["gap"] == pytest.approx(2.0 - 1.971)
    assert row["gap_z"] == pytest.approx((2.0 - 1.971) / math.sqrt(0.028**2 / 10 + 0.005 / 2))


@pytest.mark.parametrize("eta_z, ratio", [(0.5, 1.0), (1.0, 10.0), (3.0, 1.0)])
def test_figure6_cells_match_the_authors_table_within_seed_noise(eta_z, ratio):
    """Their settings (uniform init, momentum 0.9, 100 steps, 10 seeds): our cell mean within 3 standard errors of theirs."""
    settings = TrainSettings(steps=100, init="uniform", momentum=0.9, record_every=100)
    measures = figure6_runs((1,), (eta_z,), (ratio,), list(range(10)), settings)
    row = figure6_comparison(measures, FIGURE6_ENTROPY).iloc[0]
    assert abs(row["gap_z"]) < 3, row.to_dict()


def test_figure6_cell_tells_zero_init_apart():
    """Negative control: with zero init (not the authors' Figure 6 setting) the same cell is many standard errors off."""
    settings = TrainSettings(steps=100, init="zero", momentum=0.9, record_every=100)
    row = figure6_comparison(figure6_runs((1,), (2.0,), (1.0,), list(range(10)), settings), FIGURE6_ENTROPY).iloc[0]
    assert abs(row["gap_z"]) > 3, row.to_dict()
