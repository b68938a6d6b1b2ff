"""The dark-matter pipeline's SAEs: trained once per (site, width, k, schedule, training rows) into a cache folder, resumed from checkpoints,
within an invocation's wall-clock budget; and Sae(x) a chunk of rows at a time."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sae.activations import TensorBatches
from sae.io import load_sae, read_sae_config
from sae.models import Sae, TopKConfig
from sae.sparse_ops import sparse_decode
from sae.train import TrainConfig, train_sae, training_summary

ROWS_PER_CHUNK = 8192


class OutOfBudget(Exception):
    """The run's budget_minutes ran out; what is trained so far stays in its checkpoints."""


class Budget:
    """The invocation's wall-clock allowance (None: unlimited), checked between and, at checkpoints, inside SAE trainings."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.perf_counter() + 60 * minutes

    def left(self) -> bool:
        return self.deadline is None or time.perf_counter() < self.deadline

    def allows(self, need_minutes: float) -> bool:
        return self.deadline is None or time.perf_counter() + 60 * need_minutes <= self.deadline

    def check(self, what: str, need_minutes: float = 0.0) -> None:
        """Raise OutOfBudget unless `need_minutes` are left (a step that cannot stop part-way)."""
        if not self.allows(need_minutes):
            raise OutOfBudget(f"{what}: fewer than {need_minutes:g} minutes left" if need_minutes else what)


UNLIMITED = Budget(None)


class SaeSpec(NamedTuple):
    """What determines a cached SAE besides its training rows: the site's name, width, k, schedule and seed."""

    what: str  # e.g. "resid_L6", "linear_error_L6"
    width: int
    k: int
    training: TrainConfig
    seed: int


class TrainingRecord(NamedTuple):
    steps: int
    fvu_change_last_20pct: float | None
    converged: bool
    plateau_step: int | None = None
    fvu_change_at_plateau: float | None = None
    anneal_fvu_change: float | None = None


class Reconstruction(NamedTuple):
    out: Float[Tensor, "n d"]  # Sae(x), float32
    l0: Int[Tensor, " n"]
    fired: Bool[Tensor, " d_sae"]  # which latents fired on any row


def sae_dir(folder: Path, acts: Float[Tensor, "n d"], spec: SaeSpec) -> tuple[Path, TopKConfig]:
    """The SAE's cache folder, keyed by the spec and the training rows themselves (a changed split or store never reuses a stale SAE)."""
    sae_cfg = TopKConfig(acts.shape[1], spec.width, k=spec.k, seed=spec.seed)
    digest = hashlib.sha256(
        json.dumps([spec.what, sae_cfg.to_dict(), asdict(spec.training)], sort_keys=True, default=str).encode()
    )
    digest.update(acts.contiguous().numpy().tobytes())
    return folder / f"{spec.what}-W{spec.width}-k{spec.k}-{digest.hexdigest()[:10]}", sae_cfg


def is_trained(folder: Path, acts: Float[Tensor, "n d"], spec: SaeSpec) -> bool:
    """Whether the SAE of `spec` on `acts` is in the cache (trained to its end, not only checkpointed)."""
    return (sae_dir(folder, acts, spec)[0] / "sae").is_dir()


def trained_sae(folder: Path, acts: Float[Tensor, "n d"], spec: SaeSpec, budget: Budget = UNLIMITED) -> Sae:
    """A TopK SAE on `acts`, from `folder` when an identical one was trained before (or resumed from its checkpoints).

    Past the budget, raises OutOfBudget at the next checkpoint.
    """
    out, sae_cfg = sae_dir(folder, acts, spec)
    if (out / "sae").is_dir():
        return load_sae(out / "sae").eval()
    budget.check(f"training {out.name}")

    def stop_at_checkpoint(step: int, row: dict) -> None:
        if (step + 1) % spec.training.checkpoint_every == 0 and not budget.left():
            raise OutOfBudget(f"training {out.name}: stopped at step {step + 1} (checkpointed)")

    batches = TensorBatches(acts, spec.training.batch_size, seed=spec.seed)
    return train_sae(sae_cfg, batches, spec.training, out, on_step=stop_at_checkpoint).sae


def training_record(folder: Path, acts: Float[Tensor, "n d"], spec: SaeSpec) -> TrainingRecord:
    """Steps trained, the FVU change over the last 20% of them and whether that is < 1%, from the saved SAE (or its last checkpoint)."""
    out, _ = sae_dir(folder, acts, spec)
    if (out / "sae").is_dir():
        saved = read_sae_config(out / "sae").get("interp_toolkit", {})
        if "steps_trained" in saved:
            return TrainingRecord(
                saved["steps_trained"],
                saved["fvu_change_last_window"],
                saved["converged"],
                saved.get("plateau_step"),
                saved.get("fvu_change_at_plateau"),
                saved.get("anneal_fvu_change"),
            )
    checkpoints = sorted((out / "checkpoints").glob("step_*.pt"))
    if checkpoints:
        state = torch.load(checkpoints[-1], weights_only=False)
        summary = training_summary(state.get("fvu_by_step", []), spec.training, state.get("plateau"))
        return TrainingRecord(summary["steps_trained"], summary["fvu_change_last_window"], False)
    return TrainingRecord(0, None, False)


@torch.no_grad()
def reconstruct(sae: Sae, x: Float[Tensor, "n d"]) -> Reconstruction:
    """Sae(x) in float32, each token's L0, and which latents fired at all."""
    outs, l0 = [], []
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for chunk in x.split(ROWS_PER_CHUNK):
        chunk = chunk.float()
        if hasattr(sae, "encode_topk"):  # k of d_sae latents: decode the k rows instead of a dense product
            values, indices = sae.encode_topk(chunk)
            values = values.relu()
            outs.append(sparse_decode(values, indices, sae.W_dec) + sae.b_dec)
            fired[indices[values > 0]] = True
            l0.append((values > 0).sum(-1))
        else:
            acts = sae.encode(chunk)
            outs.append(sae.decode(acts))
            fired |= (acts > 0).any(0)
            l0.append((acts > 0).sum(-1))
    return Reconstruction(torch.cat(outs), torch.cat(l0), fired)


@torch.no_grad()
def sq_error_norms(sae: Sae, x: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
    """||x - Sae(x)||^2 per row in float64, a chunk at a time."""
    return torch.cat(
        [(xc.float() - reconstruct(sae, xc).out).double().pow(2).sum(-1) for xc in x.split(ROWS_PER_CHUNK)]
    )
