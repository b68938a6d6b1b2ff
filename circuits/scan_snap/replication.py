"""The runs that hold our model to the authors' own numbers and to the paper's statements.

- `figure4_loss_curve`: the Figure 4 run (reference.FIGURE4_SETTINGS) over many seeds; the seed-mean loss per iteration.
- `common_mass_runs`: the small case at several eta_Y, every step recorded; per run the scan/snap measures of
  its common mass, and Theorem 3 along the same SGD trajectories.
- `population_theorem3`: Theorem 3 along the T -> infinity gradient flow of the same setting.
- `figure6_runs`: the authors' Figure 6 sweep cells under their settings or a variant (init, momentum), any seeds.

What we port from the authors' `decoder_only.py` (Model2, Dataset2) and where we differ is listed in FINDINGS.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from circuits.scan_snap.data import SequenceClasses, layout_for
from circuits.scan_snap.dynamics import PopulationProblem, integrate_population
from circuits.scan_snap.measures import (
    common_mass,
    scan_snap_measures,
    slot_composition,
    slot_logits,
    theorem3_trajectory_frame,
)
from circuits.scan_snap.model import RunSpec, TrainedRuns, TrainSettings, train_runs
from circuits.scan_snap.predictions import final_measures
from interp.errors import InterpError


def figure4_loss_curve(
    classes: SequenceClasses,
    seeds: list[int],
    steps: int,
    *,
    eta_y: float = 1.0,
    eta_z: float = 1.0,
    momentum: float = 0.9,
    batch_size: int = 128,
    seq_len: int = 128,
) -> pd.DataFrame:
    """Loss of each iteration's batch (before its update, as the authors log it), per seed; columns step, seed, loss."""
    if not seeds:
        raise InterpError("figure4_loss_curve(seeds=[]): give at least one seed.")
    runs = [RunSpec(classes, seed, eta_y, eta_z) for seed in seeds]
    trained = train_runs(
        runs,
        TrainSettings(
            steps=steps, batch_size=batch_size, seq_len=seq_len, init="zero", momentum=momentum, record_every=steps
        ),
    )
    loss = trained.loss.numpy()  # steps x runs; row t is iteration t's batch
    return pd.DataFrame(
        dict(step=np.repeat(np.arange(steps), len(seeds)), seed=np.tile(seeds, steps), loss=loss.flatten())
    )


def _class_trajectories(trained: TrainedRuns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common mass (records x runs x classes), z and f^2 on each class's slots (records x runs x classes x slots), float64."""
    c = slot_composition(trained.class_logits, trained.probs.unsqueeze(0), trained.layout).double()
    f2 = (c / c.norm(dim=-1, keepdim=True)) ** 2
    z = slot_logits(trained.class_logits, trained.layout).double()
    return common_mass(c, trained.layout).numpy(), z.numpy(), f2.numpy()


def theorem3_frames(
    z: np.ndarray, f2: np.ndarray, steps: list[int], n_classes: list[int], n_common: int, labels: list[dict]
) -> pd.DataFrame:
    """Theorem 3 along every (run, class) trajectory; z and f2 are records x runs x classes x slots."""
    frames = []
    for r, (k_max, label) in enumerate(zip(n_classes, labels)):
        for k in range(k_max):
            frame = theorem3_trajectory_frame(z[:, r, k], f2[:, r, k], np.asarray(steps), n_common)
            frames.append(frame.assign(run=r, cls=k, **label))
    return pd.concat(frames, ignore_index=True)


def common_mass_runs(
    classes: SequenceClasses, eta_ys: tuple[float, ...], eta_z: float, seeds: list[int], settings: TrainSettings
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """SGD runs (eta_Y x seed), every step recorded: (per-run scan/snap measures, mean mass curve per eta_Y, Theorem 3 frame)."""
    if settings.record_every != 1:
        raise InterpError(
            f"common_mass_runs(settings.record_every={settings.record_every}): the snap is read step by step; use 1."
        )
    runs = [RunSpec(classes, seed, eta_y, eta_z) for eta_y in eta_ys for seed in seeds]
    trained = train_runs(runs, settings)
    mass, z, f2 = _class_trajectories(trained)
    per_run = mass[:, :, : classes.n_classes].mean(-1)  # records x runs: the mass averaged over the run's classes
    rows = [
        dict(eta_y=run.eta_y, eta_z=run.eta_z, seed=run.seed, **scan_snap_measures(per_run[:, r]))
        for r, run in enumerate(runs)
    ]
    curves = pd.DataFrame(
        dict(
            step=np.repeat(trained.record_steps, len(runs)),
            eta_y=np.tile([r.eta_y for r in runs], len(trained.record_steps)),
            seed=np.tile([r.seed for r in runs], len(trained.record_steps)),
            common_mass=per_run.flatten(),
        )
    )
    curves = curves.groupby(["eta_y", "step"])["common_mass"].agg(["mean", "std"]).reset_index()
    labels = [dict(eta_y=run.eta_y, seed=run.seed) for run in runs]
    theorem3 = theorem3_frames(z, f2, trained.record_steps, [classes.n_classes] * len(runs), classes.n_common, labels)
    return pd.DataFrame(rows), curves, theorem3


def population_theorem3(
    classes: SequenceClasses, eta_ys: tuple[float, ...], eta_z: float, steps: int, substeps: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The T -> infinity gradient flow from zero weights (float64), one run per eta_Y, recorded every step.

    Returns (Theorem 3 frame, common mass per (eta_y, step) averaged over classes).
    """
    layout = layout_for([classes])
    runs = len(eta_ys)
    probs = layout.conditional_probs(classes).unsqueeze(0).expand(runs, -1, -1).contiguous()
    problem = PopulationProblem(
        layout,
        probs,
        torch.full((runs, layout.max_classes), 1.0 / classes.n_classes, dtype=torch.float64),
        torch.stack([layout.vocab_mask(classes)] * runs),
        torch.tensor(eta_ys, dtype=torch.float64),
        torch.full((runs,), eta_z, dtype=torch.float64),
    )
    trajectory = integrate_population(
        torch.zeros(runs, layout.d_vocab, layout.d_vocab, dtype=torch.float64),
        torch.zeros(runs, layout.max_queries, layout.d_vocab, dtype=torch.float64),
        problem,
        steps,
        substeps=substeps,
    )
    trained = TrainedRuns(
        trajectory.Y,
        trajectory.Z,
        torch.zeros(0),
        trajectory.steps,
        trajectory.class_logits,
        layout,
        probs,
        torch.full((runs,), classes.n_classes),
    )
    mass, z, f2 = _class_trajectories(trained)
    labels = [dict(eta_y=eta_y, seed=-1) for eta_y in eta_ys]
    per_run = mass[:, :, : classes.n_classes].mean(-1)
    curves = pd.DataFrame(
        dict(
            step=np.repeat(trajectory.steps, runs),
            eta_y=np.tile(eta_ys, len(trajectory.steps)),
            common_mass=per_run.flatten(),
        )
    )
    return theorem3_frames(z, f2, trajectory.steps, [classes.n_classes] * runs, classes.n_common, labels), curves


def figure6_runs(
    n_queries: tuple[int, ...],
    eta_zs: tuple[float, ...],
    ratios: tuple[float, ...],
    seeds: list[int],
    settings: TrainSettings,
    next_per_query: int = 2,
) -> pd.DataFrame:
    """Final per-(run, class) measures of the Figure 6 cells (entropy of c_n over distinct tokens among them)."""
    runs = [
        RunSpec(SequenceClasses(n_queries=q, next_per_query=next_per_query), seed, eta_z * ratio, eta_z)
        for q in n_queries
        for eta_z in eta_zs
        for ratio in ratios
        for seed in seeds
    ]
    trained = train_runs(runs, settings)
    return final_measures(trained, runs)
