"""Training until converged (the dark-matter grid's "to convergence" cells): the stopping rule, the schedule, resuming after a stop."""

import json

import numpy as np
import pytest
import torch

from interp.errors import OutOfRangeError
from sae.activations import TensorBatches
from sae.models import TopKConfig
from sae.train import TrainConfig, fvu_change, lr_at, train_sae


def _data(n=4096, d=24, n_features=72, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    coeffs = (torch.rand(n, n_features, generator=gen) < 0.05) * torch.rand(n, n_features, generator=gen) * 4
    return coeffs @ features + 1.0


def _by_hand(fvus, window=0.2, span=0.05):
    n = len(fvus)
    width, opens = max(1, round(span * n)), round((1 - window) * n)
    start, end = np.mean(fvus[opens - width : opens]), np.mean(fvus[n - width :])
    return (end - start) / start


def test_fvu_change_is_the_relative_change_over_the_last_fifth():
    fvus = list(np.linspace(1.0, 0.5, 200))
    assert fvu_change(fvus) == pytest.approx(_by_hand(fvus), abs=1e-12)
    # a curve flat from 70% on: no change over the last 20%
    flat = list(np.linspace(1.0, 0.5, 140)) + [0.5] * 60
    assert fvu_change(flat) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(fvu_change([1.0] * 5))


def test_lr_is_constant_until_the_plateau_then_anneals_to_zero():
    cfg = TrainConfig(steps=100, warmup_steps=10, until_converged=True, decay_fraction=0.2)
    assert (
        lr_at(0, cfg, 1.0) == pytest.approx(0.1) and lr_at(99, cfg, 1.0) == 1.0 and lr_at(5000, cfg, 1.0) == 1.0
    )  # no plateau yet: constant
    assert (
        lr_at(399, cfg, 1.0, plateau=400) == 1.0
        and lr_at(440, cfg, 1.0, plateau=400) == pytest.approx(0.5)
        and lr_at(479, cfg, 1.0, plateau=400) == pytest.approx(1 / 80)
    )
    with pytest.raises(OutOfRangeError, match="converge_window"):
        TrainConfig(converge_window=1.5)


def test_training_plateaus_then_anneals_and_records_it(tmp_path):
    data = _data()
    cfg = TrainConfig(
        steps=3000,
        batch_size=256,
        lr=4e-3,
        warmup_steps=10,
        checkpoint_every=50,
        until_converged=True,
        min_steps=200,
        decay_fraction=0.2,
    )
    result = train_sae(TopKConfig(24, 96, k=4), TensorBatches(data, 256), cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["interp_toolkit"]
    plateau, steps = saved["plateau_step"], saved["steps_trained"]
    assert 200 <= plateau < 3000 and plateau % 50 == 0 and steps == plateau + round(0.2 * plateau), (
        saved
    )  # stopped early, at a checkpoint, then annealed
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    fvus = state["fvu_by_step"]
    assert len(fvus) == steps and abs(_by_hand(fvus[:plateau])) < 0.01 and saved["converged"]
    assert saved["fvu_change_at_plateau"] == pytest.approx(_by_hand(fvus[:plateau]), abs=1e-12)
    # the rule did not hold at the checkpoint before (or it would have stopped there), unless that was before min_steps
    if plateau - 50 >= 200:
        assert abs(_by_hand(fvus[: plateau - 50])) >= 0.01
    w = round(0.05 * plateau)
    assert saved["anneal_fvu_change"] == pytest.approx(
        np.mean(fvus[-w:]) / np.mean(fvus[plateau - w : plateau]) - 1, abs=1e-12
    )
    assert saved["anneal_fvu_change"] < 0  # annealing the lr lowers the FVU below the plateau
    assert result.curve.step.iloc[-1] == steps - 1 and result.curve.lr.iloc[-1] < 4e-3 * 0.05


def test_a_tolerance_never_met_runs_to_the_cap_and_says_not_converged(tmp_path):
    cfg = TrainConfig(
        steps=120,
        batch_size=256,
        lr=4e-3,
        warmup_steps=10,
        checkpoint_every=40,
        until_converged=True,
        converge_tol=1e-12,
    )
    train_sae(TopKConfig(24, 96, k=4), TensorBatches(_data(), 256), cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["interp_toolkit"]
    assert saved["steps_trained"] == 120 and not saved["converged"] and saved["plateau_step"] is None


class Stop(Exception):
    pass


def test_stopped_at_a_checkpoint_and_resumed_equals_uninterrupted(tmp_path):
    """What the experiment's time budget does: an on_step callback raises after a checkpoint; rerunning resumes to the same weights."""
    data, sae_cfg = _data(), TopKConfig(24, 96, k=4, seed=0)
    cfg = TrainConfig(
        steps=1000, batch_size=256, lr=4e-3, warmup_steps=10, checkpoint_every=10, until_converged=True, min_steps=100
    )
    whole = train_sae(sae_cfg, TensorBatches(data, 256), cfg, tmp_path / "whole", progress=False)
    whole_plateau = json.loads((tmp_path / "whole" / "sae" / "cfg.json").read_text())["interp_toolkit"]["plateau_step"]
    assert whole_plateau is not None

    def stop(step, row):
        if step + 1 == 100 or step + 1 == whole_plateau + 20:  # once before the plateau, once during the anneal
            raise Stop

    for _ in range(2):
        with pytest.raises(Stop):
            train_sae(sae_cfg, TensorBatches(data, 256), cfg, tmp_path / "split", progress=False, on_step=stop)
        assert not (tmp_path / "split" / "sae").exists()
    resumed = train_sae(sae_cfg, TensorBatches(data, 256), cfg, tmp_path / "split", progress=False)
    for name, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, rtol=0, atol=0)
