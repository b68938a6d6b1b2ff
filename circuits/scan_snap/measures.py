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


def slot_composition(
    class_logits: Float[Tensor, "*batch classes d_vocab"], probs: Float[Tensor, "*batch classes d_vocab"], layout: TokenLayout
) -> Float[Tensor, "*batch classes slots"]:
    """c_n on each class's own slots (common tokens, then its distinct tokens by increasing P(l|n))."""
    c = limit_composition(class_logits, probs)
    n_slots = layout.n_common + layout.n_distinct
    tokens = layout.slot_to_token(torch.arange(n_slots), torch.arange(layout.max_classes).unsqueeze(-1))
    return c.gather(-1, tokens.expand(*c.shape[:-1], n_slots))


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
    return pd.DataFrame(dict(
        eta_y=eta_y, eta_z=eta_z, t=t, t_over_t0=t / trajectory.snap_time, B=B, growth_exponent=exponent,
        h=trajectory.h, z_top=trajectory.z[:, -1], common_mass=c[:, :n_common].sum(-1), snap_time=trajectory.snap_time,
    ))


def measured_snap_time(frame: pd.DataFrame, threshold: float = 1.0) -> float:
    """First time the growth exponent of B falls below threshold (quadratic growth before the snap, ~0 after)."""
    below = frame[(frame["growth_exponent"] < threshold) & (frame["t"] > 0)]
    return float(below["t"].iloc[0]) if len(below) else float("nan")
