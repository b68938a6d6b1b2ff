"""What the paper predicts, measured: composition of c_n, entropy, ranking, Theorem 3 bounds, snap.

Every function returns numbers or tidy DataFrames; verdicts are made in `predictions.py`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy.stats import kendalltau
from torch import Tensor

from circuits.scan_snap.data import TokenLayout
from circuits.scan_snap.dynamics import SnapTrajectory, limit_composition
from interp.errors import InterpError


def slot_composition(
    class_logits: Float[Tensor, "*batch classes d_vocab"],
    probs: Float[Tensor, "*probs_batch classes d_vocab"],
    layout: TokenLayout,
) -> Float[Tensor, "*batch classes slots"]:
    """c_n on each class's own slots (common tokens, then its distinct tokens by increasing P(l|n))."""
    c = limit_composition(class_logits, probs)
    n_slots = layout.n_common + layout.n_distinct
    tokens = layout.slot_to_token(torch.arange(n_slots), torch.arange(layout.max_classes).unsqueeze(-1))
    return c.gather(-1, tokens.expand(*c.shape[:-1], n_slots))


def slot_logits(
    class_logits: Float[Tensor, "*batch classes d_vocab"], layout: TokenLayout
) -> Float[Tensor, "*batch classes slots"]:
    """z of each class's query on that class's own slots (common tokens, then its distinct tokens by increasing P(l|n))."""
    n_slots = layout.n_common + layout.n_distinct
    tokens = layout.slot_to_token(torch.arange(n_slots), torch.arange(layout.max_classes).unsqueeze(-1))
    return class_logits.gather(-1, tokens.expand(*class_logits.shape[:-1], n_slots))


def common_mass(c_slots: Float[Tensor, "*batch slots"], layout: TokenLayout) -> Float[Tensor, "*batch"]:
    return c_slots[..., : layout.n_common].sum(-1)


def distinct_entropy(c_slots: Float[Tensor, "*batch slots"], layout: TokenLayout) -> Float[Tensor, "*batch"]:
    """Entropy (nats) of c_n restricted to the class's distinct tokens and renormalised; lower = sparser."""
    distinct = c_slots[..., layout.n_common :].double()
    distinct = distinct / distinct.sum(-1, keepdim=True)
    return -(distinct * distinct.clamp_min(1e-300).log()).sum(-1)


def kendall_tau_distinct(c_slots: Float[Tensor, "classes slots"], layout: TokenLayout) -> float:
    """Mean over classes of Kendall's tau between c_{l|n} and P(l|n) over distinct tokens (1 = same order)."""
    ranks = np.arange(layout.n_distinct)  # distinct slots are laid out by increasing P(l|n)
    taus = [kendalltau(ranks, row[layout.n_common :].numpy()).statistic for row in c_slots]
    return float(np.mean(taus))


def theorem3_frame(f_squared: np.ndarray, B: np.ndarray, t: np.ndarray, n_common: int) -> pd.DataFrame:
    """Theorem 3 along a trajectory, for the top distinct token l and every other distinct token l'.

    r(t) = f_l^2 / f_l'^2 - 1 obeys d ln r / dt = 2 eta_Z xi f_l^2, so with f_l^2 non-decreasing,
    r(0) exp(2 f_l^2(0) B(t)) <= r(t) <= r(0) exp(2 B(t)).
    """
    top = f_squared[:, -1]
    rows = []
    for slot in range(n_common, f_squared.shape[1] - 1):
        r = top / f_squared[:, slot] - 1.0
        lower = r[0] * np.exp(2 * top[0] * B)
        upper = r[0] * np.exp(2 * B)
        rows.append(pd.DataFrame(dict(t=t, distinct_rank=slot - n_common, r=r, lower=lower, upper=upper)))
    frame = pd.concat(rows, ignore_index=True)
    slack = 1e-9 * np.maximum(1.0, np.abs(frame["r"]))
    frame["holds"] = (frame["lower"] <= frame["r"] + slack) & (frame["r"] <= frame["upper"] + slack)
    return frame


def snap_frame(trajectory: SnapTrajectory, eta_y: float, eta_z: float, n_common: int) -> pd.DataFrame:
    """One row per time: B(t), its local growth exponent d ln B / d ln t, h, top logit, common mass."""
    t, B = trajectory.t, trajectory.B
    positive = (t > 0) & (B > 0)
    exponent = np.full_like(t, np.nan)
    exponent[positive] = np.gradient(np.log(B[positive]), np.log(t[positive]))
    c = trajectory.f / trajectory.f.sum(-1, keepdims=True)
    return pd.DataFrame(
        dict(
            eta_y=eta_y,
            eta_z=eta_z,
            t=t,
            t_over_t0=t / trajectory.snap_time,
            B=B,
            growth_exponent=exponent,
            h=trajectory.h,
            z_top=trajectory.z[:, -1],
            common_mass=c[:, :n_common].sum(-1),
            snap_time=trajectory.snap_time,
        )
    )


def measured_snap_time(frame: pd.DataFrame, threshold: float = 1.0) -> float:
    """First time the growth exponent of B falls below threshold (quadratic growth before the snap, ~0 after)."""
    below = frame[(frame["growth_exponent"] < threshold) & (frame["t"] > 0)]
    return float(below["t"].iloc[0]) if len(below) else float("nan")


# ---- the common-token prediction as the paper states it: a monotone scan, then a snap that freezes the mass ----

SNAP_VELOCITY_FRACTION = 0.01  # the mass "stops moving" once every later per-step change is below 1% of its peak
SETTLE_FRACTION = 0.05  # secondary snap time: the mass stays within 5% of its total change from its final value


def snap_step(mass: np.ndarray, fraction: float = SNAP_VELOCITY_FRACTION) -> int:
    """First step after which every per-step change of `mass` stays below `fraction` x its largest per-step change.

    Returns len(mass) - 1 (the last step) when the mass is still moving at the end of the trajectory.
    """
    change = np.abs(np.diff(mass))
    still = change >= fraction * change.max() if change.max() > 0 else np.zeros_like(change, dtype=bool)
    moving = np.flatnonzero(still)
    return int(moving[-1] + 1) if len(moving) else 0


def settling_step(mass: np.ndarray, fraction: float = SETTLE_FRACTION) -> int:
    """First step after which `mass` stays within `fraction` x (total change) of its final value."""
    total = abs(mass[0] - mass[-1])
    outside = np.flatnonzero(np.abs(mass - mass[-1]) > fraction * total)
    return int(outside[-1] + 1) if len(outside) else 0


def scan_snap_measures(mass: np.ndarray) -> dict[str, float]:
    """Scan and snap of one common-mass trajectory (steps 0..S): where it snaps, how it moved before, how still after.

    max_rise_before_snap: largest one-step increase before the snap (0 for a monotone decrease);
    drift_after_snap: |mass(end) - mass(snap)| as a share of the total drop mass(0) - mass(end).
    """
    mass = np.asarray(mass, dtype=np.float64)
    step = snap_step(mass)
    before = np.diff(mass[: step + 1])
    drop = mass[0] - mass[-1]
    return dict(
        snap_step=float(step),
        settling_step=float(settling_step(mass)),
        mass_start=float(mass[0]),
        mass_at_snap=float(mass[step]),
        mass_final=float(mass[-1]),
        drop=float(drop),
        max_rise_before_snap=float(before.max()) if len(before) else 0.0,
        share_steps_falling_before_snap=float((before < 0).mean()) if len(before) else float("nan"),
        drift_after_snap=float(abs(mass[-1] - mass[step]) / drop) if drop > 0 else float("nan"),
        still_moving_at_end=float(step >= len(mass) - 1),
    )


# ---- Theorem 3 on any trajectory of logits (SGD or ODE), with B estimated from the trajectory ----

B_ESTIMATORS = ("all_distinct", "top_token")


def estimate_B(z_distinct: np.ndarray, f2_distinct: np.ndarray, estimator: str = "all_distinct") -> np.ndarray:
    """B(t) = eta_Z int xi, read off a trajectory of one class's distinct-token logits.

    The theorem's reduced dynamics move every distinct logit by dz_l = dB f_l^2 (one xi per class). Per
    recorded interval we estimate dB by least squares of the logit increments on f_l^2 (midpoint) over all
    distinct tokens ("all_distinct", the common xi the theorem assumes) or from the top token alone
    ("top_token"); B is their running sum from B(0) = 0.
    """
    if estimator not in B_ESTIMATORS:
        raise InterpError(f"estimate_B(estimator={estimator!r}): expected one of {B_ESTIMATORS}.")
    dz = np.diff(z_distinct, axis=0)
    f2 = (f2_distinct[1:] + f2_distinct[:-1]) / 2
    if estimator == "top_token":
        dz, f2 = dz[:, -1:], f2[:, -1:]
    dB = (dz * f2).sum(-1) / np.maximum((f2**2).sum(-1), 1e-300)
    return np.concatenate([[0.0], np.cumsum(dB)])


def theorem3_trajectory_frame(
    z_slots: np.ndarray, f2_slots: np.ndarray, steps: np.ndarray, n_common: int, estimator: str = "all_distinct"
) -> pd.DataFrame:
    """Theorem 3's bounds along one class's trajectory (times x slots of z and f^2), B estimated from the same trajectory.

    One row per (time, distinct token l' below the top one); plus the share of the logit increments that
    dz_l = dB f_l^2 explains (r2_structure, over the whole trajectory), the assumption behind the bounds, and the
    ratio of the least likely distinct token's own B to the top token's (B_ratio_least_to_top; 1 under that assumption).
    """
    z_d, f2_d = z_slots[:, n_common:], f2_slots[:, n_common:]
    B = estimate_B(z_d, f2_d, estimator)
    frame = theorem3_frame(f2_slots, B, np.asarray(steps, dtype=np.float64), n_common)
    dz = np.diff(z_d, axis=0)
    f2 = (f2_d[1:] + f2_d[:-1]) / 2
    dB = np.diff(B)
    residual = dz - dB[:, None] * f2
    total = ((dz - dz.mean(-1, keepdims=True)) ** 2).sum()
    frame["r2_structure"] = float(1 - (residual**2).sum() / total) if total > 0 else float("nan")
    # each token's own B (its summed push per unit f^2); the theorem has one B per class, so this ratio is 1
    own_B = (dz / np.maximum(f2, 1e-300)).sum(0)
    frame["B_ratio_least_to_top"] = float(own_B[0] / own_B[-1]) if own_B[-1] != 0 else float("nan")
    frame["bound_violated"] = np.where(frame["holds"], "none", np.where(frame["r"] < frame["lower"], "lower", "upper"))
    other = next(
        e for e in B_ESTIMATORS if e != estimator
    )  # the same check with the other reading of B, for sensitivity
    frame[f"holds_B_{other}"] = theorem3_frame(
        f2_slots, estimate_B(z_d, f2_d, other), np.asarray(steps, dtype=np.float64), n_common
    )["holds"].to_numpy()
    return frame
