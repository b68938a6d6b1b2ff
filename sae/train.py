"""The SAE training loop: one process or data-parallel under torchrun, checkpointed and exactly resumable.

`batches` is any iterable of global batches [batch_size, d_in] that yields the same sequence each time
it is iterated (sae.activations has tensor- and model-backed ones; the activation store plugs in the
same way). Under torch.distributed each process trains on its slice of every global batch and the
gradients are summed; losses are divided by global-batch denominators, so the sum is the one-process loss.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.fileio import atomic_write_bytes
from interp.errors import InterpError, NonFiniteError, OutOfRangeError, ShapeMismatchError
from sae.models import Sae, SaeConfig, build_sae
from interp.distributed import rank_world
from sae.checkpoints import RESUME_IGNORES, check_resume, checkpoint_note, load_latest, save_checkpoint  # noqa: F401 (RESUME_IGNORES re-exported)
from sae.models.base import LossScale, default_lr, global_sum


# NonFiniteError (from interp.errors, re-exported here): NaN or Inf in activations or the loss; training stops, checkpoints kept.


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4096  # rows per step over all processes
    lr: float | None = None  # None: 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024)
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # lr decays linearly to 0 over this last fraction of steps
    adam_betas: tuple[float, float] = (0.9, 0.999)
    b_dec_init: str = "geometric_median"  # or "mean", "zeros"; from the first batch
    normalise_input: bool = True  # scale inputs so E||x||^2 = d_in; folded into the saved weights
    dead_after_tokens: int = 1_000_000  # a latent silent this long is dead (and gets AuxK gradient)
    checkpoint_every: int = 100
    log_every: int = 10
    keep_checkpoints: int = 2
    # until_converged: the lr stays constant after warm-up until the first checkpoint (at least min_steps in) where the training FVU changed
    # by less than converge_tol (relative) over the last converge_window of the steps so far (the plateau; `steps` caps this phase); then
    # it decays linearly to 0 over decay_fraction x the plateau's steps more, and training ends
    until_converged: bool = False
    converge_tol: float = 0.01
    converge_window: float = 0.2
    min_steps: int = 0

    def __post_init__(self):
        if self.b_dec_init not in ("geometric_median", "mean", "zeros"):
            raise InterpError(
                f"TrainConfig(b_dec_init={self.b_dec_init!r}): use 'geometric_median', 'mean' or 'zeros'."
            )
        for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints", "dead_after_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise OutOfRangeError(f"TrainConfig({name}={value!r}): must be a positive integer.")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise OutOfRangeError(
                f"TrainConfig(lr={self.lr!r}): must be a positive finite number, or None for the default 2e-4 / sqrt(d_sae / 2^14)."
            )
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise OutOfRangeError(f"TrainConfig(warmup_steps={self.warmup_steps!r}): must be an integer >= 0.")
        if not 0 <= self.decay_fraction <= 1:
            raise OutOfRangeError(f"TrainConfig(decay_fraction={self.decay_fraction!r}): must lie in [0, 1].")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise OutOfRangeError(f"TrainConfig(adam_betas={self.adam_betas!r}): two numbers in [0, 1).")
        if not 0 < self.converge_window < 1 or self.converge_tol <= 0:
            raise OutOfRangeError(
                f"TrainConfig(converge_window={self.converge_window}, converge_tol={self.converge_tol}): the window must be a fraction in (0, 1), the tolerance positive."
            )


class TrainResult(NamedTuple):
    sae: Sae  # input scale folded in: takes raw activations
    curve: pd.DataFrame  # one row per logged step: step, tokens, lr, loss, fvu, l0, dead_fraction, aux_loss
    out_dir: Path | None


def geometric_median(points: Float[Tensor, "n d"], iters: int = 100, tol: float = 1e-7) -> Float[Tensor, " d"]:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances."""
    points = points.double()
    guess = points.mean(0)
    for _ in range(iters):
        weights = 1 / (points - guess).norm(dim=1).clamp_min(1e-12)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - guess).norm() <= tol * max(1.0, float(guess.norm())):
            return new.float()
        guess = new
    return guess.float()


def anneal_steps(plateau: int, cfg: TrainConfig) -> int:
    return max(1, round(cfg.decay_fraction * plateau))


def lr_at(step: int, cfg: TrainConfig, base_lr: float, plateau: int | None = None) -> float:
    """Linear warm-up, constant, then linear decay to zero over the last `decay_fraction` of steps.

    Training until converged: constant until the plateau step (None: not reached yet), then linear decay to zero over anneal_steps(plateau).
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.until_converged:
        if plateau is None or step < plateau:
            return base_lr * warm
        end = plateau + anneal_steps(plateau, cfg)
        return base_lr * warm * max(0.0, (end - step) / (end - plateau))
    decay_start = cfg.steps * (1 - cfg.decay_fraction)
    decay = 1.0 if step < decay_start else max(0.0, (cfg.steps - step) / (cfg.steps - decay_start))
    return base_lr * warm * decay


def fvu_change(fvu_by_step: list[float] | Tensor, window: float = 0.2, span: float = 0.05) -> float:
    """Relative change of the training FVU over the last `window` of the steps: (end - start) / start, each the mean batch FVU over
    `span` of the steps (at least one step), start just before the window opens and end at the last steps. NaN with fewer than 10 steps."""
    fvus = torch.as_tensor(fvu_by_step, dtype=torch.float64)
    n = len(fvus)
    if n < 10:
        return float("nan")
    width, opens = max(1, round(span * n)), round((1 - window) * n)
    start, end = fvus[max(0, opens - width) : opens].mean(), fvus[n - width :].mean()
    return float((end - start) / start)


def _check_batch(x: Tensor, step: int, d_in: int, batch_size: int, out_dir: Path | None) -> None:
    """d_in: the width of a training row (d_in + d_out for a transcoder, whose rows hold both sites)."""
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ShapeMismatchError(
            f"batches: step {step} gave shape {tuple(x.shape)}, expected [{batch_size}, d_in={d_in}] (for a transcoder, d_in + d_out). "
            "The SAE's d_in must equal the site's width."
        )
    if x.shape[0] != batch_size:
        raise ShapeMismatchError(
            f"batches: step {step} gave {x.shape[0]} rows, expected TrainConfig.batch_size={batch_size}."
        )
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero()[:, 0]
        raise NonFiniteError(
            f"batches: the activations of step {step} contain NaN or Inf in {len(bad)} rows (first: row {int(bad[0])}). "
            f"Training stopped; {checkpoint_note(out_dir)} Check the source activations (dtype overflow, a corrupt shard)."
        )


def train_sae(
    sae_cfg: SaeConfig,
    batches: Iterable[Tensor],
    cfg: TrainConfig = TrainConfig(),
    out_dir: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    hook_name: str | None = None,
    model_name: str | None = None,
    hook_name_out: str | None = None,
) -> TrainResult:
    """Train an SAE; with `out_dir`, checkpoint every `cfg.checkpoint_every` steps and resume from the latest.

    hook_name_out: a transcoder's output site, saved beside hook_name (its input site).

    on_step(step, row) is called after each step with that step's metrics (for callers' own logging).
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    rank, world = rank_world()
    if cfg.batch_size % world:
        raise InterpError(f"TrainConfig(batch_size={cfg.batch_size}) must divide evenly over {world} processes.")
    local = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    sae = build_sae(sae_cfg)
    base_lr = cfg.lr or default_lr(sae_cfg.d_sae)
    optimiser = torch.optim.Adam(
        sae.parameters(), lr=base_lr, betas=cfg.adam_betas, fused=True
    )  # fused: ~8x faster on CPU than foreach
    silent_tokens = torch.zeros(sae_cfg.d_sae, dtype=torch.long)
    curve: list[dict] = []
    fvu_by_step: list[float] = []
    start, input_scale, plateau = 0, 1.0, None

    state = load_latest(out_dir) if out_dir else None
    if state is not None:
        check_resume(out_dir, state, sae_cfg, cfg, hook_name)
        sae.load_state_dict(state["sae"])
        optimiser.load_state_dict(state["optimiser"])
        silent_tokens, curve, start, input_scale = (
            state["silent_tokens"],
            state["curve"],
            state["step"],
            state["input_scale"],
        )
        fvu_by_step, plateau = state.get("fvu_by_step", []), state.get("plateau")

    end = cfg.steps if plateau is None else plateau + anneal_steps(plateau, cfg)
    data = itertools.islice(iter(batches), start, None)  # resume: the source replays, we skip what was trained on
    bar = tqdm(initial=start, total=end, disable=not progress or rank != 0, desc=f"{sae_cfg.architecture} SAE")
    step = start
    while step < end:
        x_global = next(data, None)
        if x_global is None:
            raise InterpError(
                f"batches ran out at step {step} of TrainConfig.steps={cfg.steps}; supply more data or fewer steps."
            )
        _check_batch(x_global, step, sae.batch_width, cfg.batch_size, out_dir)
        x_global = x_global.float()
        if step == 0:
            input_scale = sae.input_scale(x_global) if cfg.normalise_input else 1.0
            _init_b_dec(sae, sae.target(x_global * input_scale), cfg.b_dec_init)
        x_global = x_global * input_scale
        target_global = sae.target(x_global)  # x itself for an SAE; the output site's half for a transcoder
        scale = LossScale(cfg.batch_size, float((target_global - target_global.mean(0)).pow(2).sum()))
        x = x_global[local]

        lr = lr_at(step, cfg, base_lr, plateau)
        for group in optimiser.param_groups:
            group["lr"] = lr
        out = sae.training_step(x, silent_tokens >= cfg.dead_after_tokens, scale, step)
        if not torch.isfinite(out.loss):
            raise NonFiniteError(
                f"The loss became {out.loss.item()} at step {step} (lr {lr:.2e}). Training stopped; {checkpoint_note(out_dir)} Lower TrainConfig.lr."
            )
        out.loss.backward()
        if world > 1:
            for p in sae.parameters():
                torch.distributed.all_reduce(p.grad)
        if sae_cfg.unit_norm_decoder:
            sae.remove_parallel_grad_()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if sae_cfg.unit_norm_decoder:
            sae.normalise_decoder_()

        with torch.no_grad():
            fired = global_sum(out.fired.long()) > 0
            silent_tokens += cfg.batch_size
            silent_tokens[fired] = 0
            stats = global_sum(
                torch.stack(
                    [
                        (out.sae_out - sae.target(x)).pow(2).sum(),
                        out.l0 * len(x),
                        out.loss.detach(),
                        out.aux_loss.detach() / world,
                    ]
                )
            )
        row = dict(
            step=step,
            tokens=(step + 1) * cfg.batch_size,
            lr=lr,
            loss=float(stats[2]),
            fvu=float(stats[0]) / scale.total_variance,
            l0=float(stats[1]) / cfg.batch_size,
            dead_fraction=float((silent_tokens >= cfg.dead_after_tokens).float().mean()),
            aux_loss=float(stats[3]),
        )
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            curve.append(row)
            bar.set_postfix(L0=f"{row['l0']:.1f}", FVU=f"{row['fvu']:.3f}", dead=f"{row['dead_fraction']:.2f}")
        fvu_by_step.append(row["fvu"])
        at_checkpoint = (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end
        if (
            cfg.until_converged
            and plateau is None
            and at_checkpoint
            and step + 1 >= cfg.min_steps
            and abs(fvu_change(fvu_by_step, cfg.converge_window)) < cfg.converge_tol
        ):
            plateau = step + 1  # the FVU has plateaued at this lr: anneal, then stop
            end = plateau + anneal_steps(plateau, cfg)
            bar.total = end
        if step + 1 == end and step % cfg.log_every:
            curve.append(row)
        if out_dir is not None and rank == 0 and at_checkpoint:
            save_checkpoint(
                out_dir,
                dict(
                    step=step + 1,
                    sae=sae.state_dict(),
                    optimiser=optimiser.state_dict(),
                    silent_tokens=silent_tokens,
                    curve=curve,
                    fvu_by_step=fvu_by_step,
                    plateau=plateau,
                    input_scale=input_scale,
                    sae_config=sae_cfg.to_dict(),
                    train_config=asdict(cfg),
                    hook_name=hook_name,
                ),
                cfg.keep_checkpoints,
            )
        if (
            on_step is not None
        ):  # after the checkpoint: a callback that stops the run (a time budget) loses no finished step
            on_step(step, row)
        step += 1
        bar.update(1)
    bar.close()

    sae.fold_input_scale_(input_scale)
    frame = pd.DataFrame(curve)
    if out_dir is not None and rank == 0:
        _save_sae_atomic(
            sae,
            out_dir / "sae",
            hook_name=hook_name,
            model_name=model_name,
            extra={
                "input_scale": input_scale if isinstance(input_scale, float) else input_scale.tolist(),
                "train_config": asdict(cfg),
                **({"hook_name_out": hook_name_out} if hook_name_out else {}),
                **training_summary(fvu_by_step, cfg, plateau),
            },
        )
        buffer = io.BytesIO()
        frame.to_parquet(buffer)
        atomic_write_bytes(out_dir / "training_curve.parquet", buffer.getvalue())
    return TrainResult(sae.eval(), frame, out_dir)


def _save_sae_atomic(sae: Sae, directory: Path, **kwargs) -> None:
    """save_sae into a temporary sibling folder, then swap it in: a kill leaves the old SAE folder or the new, whole."""
    import shutil

    from sae.io import save_sae

    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_sae(sae, tmp, **kwargs)
    old = directory.with_name(f".{directory.name}.{os.getpid()}.old")
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def training_summary(fvu_by_step: list[float], cfg: TrainConfig, plateau: int | None = None) -> dict:
    """Steps trained; the relative FVU change over the last converge_window of them; for a run until converged, the plateau step, the change
    over the last converge_window of the steps up to it, and the change the anneal made (mean FVU of its last 5% against the plateau's last 5%).

    converged: the change over the last converge_window of the constant-lr steps (of all steps, for a fixed schedule) is within converge_tol.
    """
    change = fvu_change(fvu_by_step, cfg.converge_window)
    out = dict(
        steps_trained=len(fvu_by_step), fvu_change_last_window=change, converged=bool(abs(change) < cfg.converge_tol)
    )
    if cfg.until_converged:
        at_plateau = fvu_change(fvu_by_step[:plateau], cfg.converge_window) if plateau else float("nan")
        fvus = torch.as_tensor(fvu_by_step, dtype=torch.float64)
        width = max(1, round(0.05 * (plateau or 1)))
        anneal = (
            float(fvus[-width:].mean() / fvus[plateau - width : plateau].mean() - 1)
            if plateau and len(fvus) > plateau
            else float("nan")
        )
        out |= dict(
            plateau_step=plateau,
            fvu_change_at_plateau=at_plateau,
            anneal_fvu_change=anneal,
            converged=plateau is not None,
        )
    return out


@torch.no_grad()
def _init_b_dec(sae: Sae, x: Tensor, how: str) -> None:
    if how == "geometric_median":
        sae.b_dec.copy_(geometric_median(x))
    elif how == "mean":
        sae.b_dec.copy_(x.mean(0))


@dataclass(frozen=True)
class SaeTrainRun:
    """What `train_at_site` records in config.json: the site, the SAE's and the trainer's settings, where activations came from."""

    site: str
    sae: dict
    train: dict
    source: str  # "store" or "model"
    analysis: str = "sae_train"
    output_site: str | None = None  # a transcoder's output site (site is its input)
