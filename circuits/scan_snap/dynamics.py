"""The T -> infinity dynamics of the paper, integrated as ODEs.

Two systems:

- `population_rhs`: the exact gradient flow of the population loss in the long-sequence limit, in the
  same (Y, Z) parametrisation as the SGD model. X^T b tends to c_n with
  c_{l|n} = P(l|n) exp(z_{ml}) / sum_l' P(l'|n) exp(z_{ml'}), f_n = c_n / ||c_n||, and Lemma 1 gives
      dY/dt = eta_Y E_n[ f_n (e_n - alpha_n)^T ],
      dz_m/dt = eta_Z E_n[ diag(c_n) P^perp_{f_n} Y (e_n - alpha_n) / ||c_n|| ]   (over classes n of query m),
  alpha_n = softmax(Y^T f_n). Time is measured in SGD steps, so step t of SGD sits at ODE time t.

- `snap_dynamics`: the paper's reduced dynamics for K symmetric classes (one query each) and an
  output vocabulary of M tokens, under its weak-correlation assumption: the decoder keeps the
  Theorem-1 form Y = h(t) sum_n f_n (e_n - 1/M)^T with dh/dt = (eta_Y / K) M / (M - 1 + e^h), and the
  query logits follow dz_l/dt = eta_Z xi(t) f_l^2 on distinct tokens and
  -eta_Z xi(t) (1 - s)/s f_l^2 on common ones, xi = (K-1)/K * h/(M - 1 + e^h) * s, s = sum_common f_l^2.
  B(t) = eta_Z int_0^t xi is the quantity of Theorems 3 and 4; the snap comes at t0 ~ K ln M / eta_Y.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from scipy.integrate import solve_ivp
from torch import Tensor

from circuits.scan_snap.data import SequenceClasses, TokenLayout
from interp.errors import InterpError


class PopulationProblem(NamedTuple):
    """Everything the population flow needs besides the weights (one row per run)."""

    layout: TokenLayout
    probs: Float[Tensor, "runs classes d_vocab"]
    class_weight: Float[Tensor, "runs classes"]  # P(n): 1/K for the run's classes, 0 for absent ones
    vocab_mask: Bool[Tensor, "runs d_vocab"]
    eta_y: Float[Tensor, " runs"]
    eta_z: Float[Tensor, " runs"]


def limit_composition(
    z: Float[Tensor, "*batch d_vocab"], probs: Float[Tensor, "*probs_batch d_vocab"]
) -> Float[Tensor, "*out_batch d_vocab"]:
    """c_{l|n} = P(l|n) exp(z_l) / sum_l' P(l'|n) exp(z_l'): what X^T b tends to as T -> infinity.

    probs broadcasts against z (one distribution for every step of a trajectory, say); the result has the broadcast shape.
    """
    logits = z.masked_fill(probs <= 0, float("-inf")) + probs.clamp_min(1e-30).log()
    empty = (probs <= 0).all(-1, keepdim=True)
    return torch.softmax(logits.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)


def population_rhs(
    Y: Float[Tensor, "runs d_vocab d_vocab"], Z: Float[Tensor, "runs queries d_vocab"], problem: PopulationProblem
) -> tuple[Float[Tensor, "runs d_vocab d_vocab"], Float[Tensor, "runs queries d_vocab"]]:
    """(dY/dt, dZ/dt) of the long-sequence gradient flow (Lemma 1 with X^T b -> c_n)."""
    layout = problem.layout
    query_rows = torch.arange(layout.max_classes) // layout.next_per_query
    c = limit_composition(Z[:, query_rows], problem.probs)
    norm = c.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    f = c / norm
    logits = torch.einsum("rkl,rln->rkn", f, Y).masked_fill(~problem.vocab_mask.unsqueeze(1), float("-inf"))
    targets = torch.nn.functional.one_hot(layout.next_of_class(torch.arange(layout.max_classes)), layout.d_vocab)
    error = targets - torch.softmax(logits, dim=-1)
    weight = problem.class_weight
    dY = problem.eta_y.view(-1, 1, 1) * torch.einsum("rk,rkl,rkn->rln", weight, f, error)
    backprop = torch.einsum("rln,rkn->rkl", Y, error)
    projected = backprop - (f * backprop).sum(-1, keepdim=True) * f
    dz_class = weight.unsqueeze(-1) * c * projected / norm
    dZ = torch.zeros_like(Z).index_add_(1, query_rows, dz_class) * problem.eta_z.view(-1, 1, 1)
    return dY, dZ


class PopulationTrajectory(NamedTuple):
    steps: list[int]
    class_logits: Float[Tensor, "records runs classes d_vocab"]  # z of each class's query
    Y: Float[Tensor, "runs d_vocab d_vocab"]
    Z: Float[Tensor, "runs queries d_vocab"]


def integrate_population(
    Y0: Float[Tensor, "runs d_vocab d_vocab"],
    Z0: Float[Tensor, "runs queries d_vocab"],
    problem: PopulationProblem,
    steps: int,
    *,
    substeps: int = 4,
    record_every: int = 1,
) -> PopulationTrajectory:
    """Classical RK4 with dt = 1/substeps SGD steps, recording z of each class's query at whole steps."""
    if substeps < 1 or steps < 1:
        raise InterpError(f"integrate_population(steps={steps}, substeps={substeps}): both must be at least 1.")
    dt = 1.0 / substeps
    Y, Z = Y0.clone(), Z0.clone()
    query_rows = torch.arange(problem.layout.max_classes) // problem.layout.next_per_query
    records, recorded = [Z[:, query_rows].clone()], [0]
    for step in range(1, steps + 1):
        for _ in range(substeps):
            k1 = population_rhs(Y, Z, problem)
            k2 = population_rhs(Y + dt / 2 * k1[0], Z + dt / 2 * k1[1], problem)
            k3 = population_rhs(Y + dt / 2 * k2[0], Z + dt / 2 * k2[1], problem)
            k4 = population_rhs(Y + dt * k3[0], Z + dt * k3[1], problem)
            Y = Y + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
            Z = Z + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        if step % record_every == 0 or step == steps:
            records.append(Z[:, query_rows].clone())
            recorded.append(step)
    return PopulationTrajectory(recorded, torch.stack(records), Y, Z)


class SnapTrajectory(NamedTuple):
    t: np.ndarray  # (times,)
    h: np.ndarray  # (times,) decoder scale of Theorem 1
    B: np.ndarray  # (times,) eta_Z int_0^t xi
    z: np.ndarray  # (times, slots) query logits on one class's common then distinct tokens
    f: np.ndarray  # (times, slots) f_n on the same slots
    snap_time: float  # the paper's t0 = K ln M / eta_Y


def snap_rates(
    h: float, z: np.ndarray, p: np.ndarray, n_common: int, K: int, M: int, eta_y: float, eta_z: float
) -> tuple[float, float, np.ndarray]:
    """(dh/dt, dB/dt, dz/dt) of the reduced dynamics (module docstring) at one state."""
    c = p * np.exp(z - z.max())
    f = c / np.linalg.norm(c)
    s = float((f[:n_common] ** 2).sum())
    denominator_scale = (M - 1) * math.exp(-h) + 1.0  # (M - 1 + e^h) e^-h, stable for large h
    gamma = h * math.exp(-h) / denominator_scale
    xi = (K - 1) / K * gamma * s
    dz = eta_z * xi * f**2
    if n_common:
        dz[:n_common] *= -(1.0 - s) / max(s, 1e-300)
    dh = eta_y / K * M * math.exp(-h) / denominator_scale
    return dh, eta_z * xi, dz


def snap_dynamics(
    classes: SequenceClasses, n_outputs: int, eta_y: float, eta_z: float, t_max: float, *, n_times: int = 400
) -> SnapTrajectory:
    """Integrate the reduced dynamics for classes.n_classes symmetric classes and n_outputs output tokens."""
    K, M = classes.n_classes, n_outputs
    if K < 2 or M <= K:
        raise InterpError(
            f"snap_dynamics(classes.n_classes={K}, n_outputs={M}): needs K >= 2 classes and M > K outputs."
        )
    if eta_y <= 0 or eta_z <= 0 or t_max <= 1:
        raise InterpError(
            f"snap_dynamics(eta_y={eta_y}, eta_z={eta_z}, t_max={t_max}): rates must be > 0 and t_max > 1."
        )
    weights = classes.slot_weights().numpy()
    p = weights / weights.sum()

    def rhs(_t: float, state: np.ndarray) -> np.ndarray:
        dh, dB, dz = snap_rates(state[0], state[2:], p, classes.n_common, K, M, eta_y, eta_z)
        return np.concatenate([[dh, dB], dz])

    times = np.concatenate([[0.0], np.geomspace(1e-2, t_max, n_times - 1)])
    solution = solve_ivp(rhs, (0.0, t_max), np.zeros(2 + len(p)), t_eval=times, method="LSODA", rtol=1e-9, atol=1e-12)
    if not solution.success:
        raise InterpError(f"snap_dynamics: the ODE solver failed ({solution.message}); try a smaller t_max.")
    z = solution.y[2:].T
    c = p * np.exp(z - z.max(-1, keepdims=True))
    f = c / np.linalg.norm(c, axis=-1, keepdims=True)
    return SnapTrajectory(solution.t, solution.y[0], solution.y[1], z, f, K * math.log(M) / eta_y)
