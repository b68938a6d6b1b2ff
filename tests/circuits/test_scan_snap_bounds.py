"""Theorem 3 and the snap time, checked against answers computed here (issue 22).

Theorem 3 (Tian et al. 2023): along the reduced dynamics dz_l = dB f_l^2 of one class's distinct-token
logits (f = normalised P(l|n) exp(z)), r(t) = f_top^2 / f_l^2 - 1 obeys d ln r / dB = 2 f_top^2, so
with f_top^2 non-decreasing,  r(0) exp(2 f_top(0)^2 B) <= r(t) <= r(0) exp(2 B).
Here a trajectory is integrated with scipy (not the package's ODE), the bounds are evaluated in closed
form, and trajectories that break each side are built by hand. The snap time is checked on a B(t)
whose log-log slope falls below 1 at a known time.
"""

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

from circuits.scan_snap.dynamics import SnapTrajectory
from circuits.scan_snap.measures import measured_snap_time, snap_frame, theorem3_frame, theorem3_trajectory_frame
from circuits.scan_snap.predictions import THEOREM3_SHARE_MIN, theorem3_verdicts
from dashboards.scan_snap import scan_snap_sections
from dashboards.summaries import summarise
from interp.results import ResultsDir

N_COMMON = 2
P = np.array([1.0, 1.0, 0.1, 0.3, 0.5, 0.7, 0.9])  # two common slots, then five distinct by increasing P(l|n)


def f_squared(z: np.ndarray) -> np.ndarray:
    c = P * np.exp(z - z.max(-1, keepdims=True))
    return (c / np.linalg.norm(c, axis=-1, keepdims=True)) ** 2


def reduced_trajectory(t_max: float = 40.0, n: int = 400):
    """z(t) under dz_l = xi(t) f_l^2 (distinct), common logits falling at rate xi; B = int xi. Solved by scipy."""
    xi = lambda t: 1.0 / (1.0 + 0.1 * t)  # noqa: E731

    def rhs(t, state):
        z = state[1:]
        dz = xi(t) * f_squared(z)
        dz[:N_COMMON] = -xi(t) * 0.5
        return np.concatenate([[xi(t)], dz])

    t = np.linspace(0.0, t_max, n)
    sol = solve_ivp(rhs, (0.0, t_max), np.zeros(1 + len(P)), t_eval=t, rtol=1e-11, atol=1e-13, method="DOP853")
    return sol.t, sol.y[0], sol.y[1:].T


def closed_form_bounds(f2: np.ndarray, B: np.ndarray) -> pd.DataFrame:
    """Per distinct token l' below the top one (rank 0..3) and time: r, lower and upper bound, written out here."""
    rows = []
    for rank in range(len(P) - N_COMMON - 1):
        slot = N_COMMON + rank
        r = f2[:, -1] / f2[:, slot] - 1
        rows.append(
            pd.DataFrame(
                dict(distinct_rank=rank, r=r, lower=r[0] * np.exp(2 * f2[0, -1] * B), upper=r[0] * np.exp(2 * B))
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_theorem3_bounds_match_the_closed_form_and_hold_on_an_independent_trajectory():
    t, B, z = reduced_trajectory()
    f2 = f_squared(z)
    assert np.all(np.diff(f2[:, -1]) >= -1e-12)  # the theorem's condition: f_top^2 non-decreasing
    want = closed_form_bounds(f2, B)
    frame = theorem3_frame(f2, B, t, N_COMMON)
    assert list(frame["distinct_rank"]) == list(want["distinct_rank"])
    for column in ("r", "lower", "upper"):
        np.testing.assert_allclose(frame[column], want[column], rtol=1e-12, err_msg=column)
    # the theorem, checked here: inside the bounds (to the solver's accuracy), and not trivially (the bounds move apart)
    assert (want["lower"] <= want["r"] * (1 + 1e-7)).all() and (want["r"] <= want["upper"] * (1 + 1e-7)).all()
    assert frame["holds"].all()
    first, last = want.groupby("distinct_rank").first(), want.groupby("distinct_rank").last()
    assert (last["upper"] / last["lower"] > 10).all() and (last["r"] > 2 * first["r"]).all()


def test_trajectories_that_break_each_bound_are_flagged_and_fail_the_verdict():
    t, B, z = reduced_trajectory()
    # too slow: the top token's logit frozen after t = 5, so r stops growing while the lower bound keeps rising
    slow = z.copy()
    frozen = t > 5
    slow[frozen, -1] = z[np.argmax(frozen) - 1, -1]
    # too fast: the top token pushed 3x as hard, so r grows faster than exp(2 B)
    fast = z.copy()
    fast[:, -1] = 3 * z[:, -1]
    for name, zz, side in (("slow", slow, "lower"), ("fast", fast, "upper")):
        f2 = f_squared(zz)
        want = closed_form_bounds(f2, B)
        outside = (
            (want["r"] < want["lower"] * (1 - 1e-9)) if side == "lower" else (want["r"] > want["upper"] * (1 + 1e-9))
        )
        assert outside.mean() > 0.3, name  # the planted violation is large
        frame = theorem3_frame(f2, B, t, N_COMMON)
        np.testing.assert_array_equal(
            frame["holds"].to_numpy(), ~outside.to_numpy() | np.isclose(want["r"], want[side], rtol=1e-9)
        )
    # theorem3_trajectory_frame reads B off the logits (one xi for all distinct tokens): on the honest trajectory it recovers B
    honest = theorem3_trajectory_frame(z, f_squared(z), t, N_COMMON).assign(run=0, cls=0)
    assert honest["holds"].mean() >= THEOREM3_SHARE_MIN and (honest["bound_violated"] == "none").all()
    # the two least likely distinct tokens pushed by 0.5 dB each, not dB f_l^2: they catch up with the top token too fast
    pushed = z.copy()
    pushed[:, N_COMMON : N_COMMON + 2] += 0.5 * B[:, None]
    broken = theorem3_trajectory_frame(pushed, f_squared(pushed), t, N_COMMON).assign(run=0, cls=0)
    assert (broken["bound_violated"] == "lower").sum() == (~broken["holds"]).sum() > 0.05 * len(broken)
    rows, metrics = theorem3_verdicts({"honest": honest, "broken": broken})
    verdict = {row[0]: row[-1] for row in rows}
    assert verdict == {"theorem3_bounds_honest": True, "theorem3_bounds_broken": False}
    assert metrics["broken"]["share_inside"] < THEOREM3_SHARE_MIN and metrics["broken"]["share_below_lower"] > 0


def quadratic_then_logarithmic(t0: float, times: np.ndarray) -> np.ndarray:
    """B = t^2 up to t0, then t0^2 (1 + 2 ln(t / t0)) (C^1 at t0): d ln B / d ln t = 2, then 2 / (1 + 2 ln(t / t0)),
    which crosses 1 at t = t0 e^(1/2)."""
    return np.where(times <= t0, times**2, t0**2 * (1 + 2 * np.log(np.maximum(times, t0) / t0)))


@pytest.mark.parametrize("t0", [3.0, 40.0])
def test_measured_snap_time_is_where_the_log_log_slope_crosses_one(t0):
    times = np.concatenate([[0.0], np.geomspace(1e-2, 1e4, 600)])
    B = quadratic_then_logarithmic(t0, times)
    n = len(times)
    trajectory = SnapTrajectory(times, np.zeros(n), B, np.zeros((n, 3)), np.ones((n, 3)) / 3, t0)
    frame = snap_frame(trajectory, eta_y=1.0, eta_z=1.0, n_common=1)
    step = times[2] / times[1]  # the grid's ratio
    assert measured_snap_time(frame) == pytest.approx(t0 * math.exp(0.5), rel=2 * (step - 1))
    # before t0 the measured exponent is 2, long after it is near 0
    assert frame.loc[(frame.t > 0.1 * t0) & (frame.t < 0.9 * t0), "growth_exponent"].sub(2).abs().max() < 1e-6
    assert frame.loc[frame.t > 1000 * t0, "growth_exponent"].max() < 0.2 if (frame.t > 1000 * t0).any() else True
    # a threshold of 1.5 is crossed where 2 / (1 + 2 ln(t/t0)) = 1.5: t = t0 e^(1/6)
    assert measured_snap_time(frame, threshold=1.5) == pytest.approx(t0 * math.exp(1 / 6), rel=2 * (step - 1))


@dataclass(frozen=True)
class HandBuilt:
    name: str = "scan-snap verdicts"


def test_scan_snap_page_and_summary_say_which_predictions_fail(tmp_path):
    run = ResultsDir.create(tmp_path / "run", HandBuilt(), analysis="scan_snap", title="hand-built")
    predictions = pd.DataFrame(
        [
            ("a_prediction", "m1", 1.0, "> 0", True),
            ("b_prediction", "m2", -1.0, "> 0", False),
            ("c_prediction", "m3", 2.0, "> 0", True),
        ],
        columns=["prediction", "measure", "value", "criterion", "holds"],
    )
    run.save_table("predictions", predictions)
    run.write_metrics(
        {
            "verdicts": dict(zip(predictions.prediction, predictions.holds.map(bool))),
            "common_mass_final": 0.4,
            "kendall_tau_distinct": 0.9,
        }
    )
    first = scan_snap_sections(run)[0]
    assert first.text.startswith("2 of 3 predictions hold")
    assert dict(zip(first.table["prediction"], first.table["verdict"])) == {
        "a_prediction": "holds",
        "b_prediction": "does not hold",
        "c_prediction": "holds",
    }
    summary = summarise(run)
    assert (
        summary.headline == "2 of 3 predictions hold; not: b prediction"
        and summary.verdict == "1 prediction(s) fail (see the page)"
    )
