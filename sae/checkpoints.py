"""SAE training checkpoints: where they live, writing one atomically, reading the latest, and refusing to resume
checkpoints written with other settings (sae.train's loop and `interp sae train --plan` use these)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from interp.errors import CorruptFileError, InterpError
from interp.fileio import atomic_path
from sae.models import SaeConfig

if TYPE_CHECKING:
    from sae.train import TrainConfig

RESUME_IGNORES = (
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
)  # bookkeeping: may change between a run and its resume


def checkpoint_note(out_dir: Path | None) -> str:
    latest = checkpoint_files(out_dir)[-1:] if out_dir else []
    return (
        f"the last checkpoint {latest[0]} is kept; rerun with the same out_dir to resume from it."
        if latest
        else "no checkpoint had been written yet."
    )


def checkpoint_files(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def save_checkpoint(out_dir: Path, state: dict, keep: int) -> None:
    folder = out_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{state['step']:08d}.pt"
    with atomic_path(path) as tmp:  # a kill mid-write leaves the previous checkpoint intact
        torch.save(state, tmp)
    for old in checkpoint_files(out_dir)[:-keep]:
        old.unlink()


def load_latest(out_dir: Path) -> dict | None:
    found = checkpoint_files(out_dir) if out_dir else []
    if not found:
        return None
    try:
        return torch.load(found[-1], weights_only=False)
    except Exception as exc:
        raise CorruptFileError(
            f"Checkpoint {found[-1]} cannot be read ({exc}). Delete it to resume from the one before."
        ) from exc


def check_resume(out_dir: Path, state: dict, sae_cfg: SaeConfig, cfg: TrainConfig, hook_name: str | None) -> None:
    """Refuse to continue checkpoints written with other settings, naming the fields that differ."""
    saved_sae, wanted_sae = state.get("sae_config", {}), sae_cfg.to_dict()
    differ = [
        f"sae.{k} (saved {saved_sae.get(k)!r}, asked {wanted_sae.get(k)!r})"
        for k in sorted(set(saved_sae) | set(wanted_sae))
        if saved_sae.get(k) != wanted_sae.get(k)
    ]
    saved_train, wanted_train = state.get("train_config"), asdict(cfg)
    if saved_train is not None:
        for k in sorted(set(saved_train) | set(wanted_train)):
            old, new = saved_train.get(k), wanted_train.get(k)
            if k not in RESUME_IGNORES and (list(old) if isinstance(old, tuple) else old) != (
                list(new) if isinstance(new, tuple) else new
            ):
                differ.append(f"train.{k} (saved {old!r}, asked {new!r})")
    if hook_name is not None and state.get("hook_name") not in (None, hook_name):
        differ.append(f"site (saved {state['hook_name']!r}, asked {hook_name!r})")
    if differ:
        raise InterpError(
            f"{out_dir} holds checkpoints of another run (a different SAE config or training settings): {'; '.join(differ)}. A run directory holds one run: "
            "use a new --out, the same settings to resume, or --overwrite to start again."
        )
