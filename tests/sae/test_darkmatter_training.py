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


def test_lr_is_constant_after_warm_up_when_training_until_converged():
    cfg = TrainConfig(steps=100, warmup_steps=10, until_converged=True)
    assert lr_at(0, cfg, 1.0) == pytest.approx(0.1) and lr_at(99, cfg, 1.0) == 1.0
    with pytest.raises(OutOfRangeError, match="converge_window"):
        TrainConfig(converge_window=1.5)


def test_training_stops_once_converged_and_records_it(tmp_path):
    data = _data()
    cfg = TrainConfig(steps=3000, batch_size=256, lr=4e-3, warmup_steps=10, checkpoint_every=50, until_converged=True, min_steps=200)
    result = train_sae(TopKConfig(24, 96, k=4), TensorBatches(data, 256), cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["interp_toolkit"]
    steps = saved["steps_trained"]
    assert 200 <= steps < 3000 and steps % 50 == 0, steps  # stopped early, at a checkpoint
    state = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    fvus = state["fvu_by_step"]
    assert len(fvus) == steps and abs(_by_hand(fvus)) < 0.01 and saved["converged"]
    # the rule did not hold at the checkpoint before (or it would have stopped there), unless that was before min_steps
    if steps - 50 >= 200:
        assert abs(_by_hand(fvus[: steps - 50])) >= 0.01
    assert result.curve.step.iloc[-1] == steps - 1


def test_a_tolerance_never_met_runs_to_the_cap_and_says_not_converged(tmp_path):
    cfg = TrainConfig(steps=120, batch_size=256, lr=4e-3, warmup_steps=10, checkpoint_every=40, until_converged=True, converge_tol=1e-12)
    train_sae(TopKConfig(24, 96, k=4), TensorBatches(_data(), 256), cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "sae" / "cfg.json").read_text())["interp_toolkit"]
    assert saved["steps_trained"] == 120 and not saved["converged"]


class Stop(Exception):
    pass


def test_stopped_at_a_checkpoint_and_resumed_equals_uninterrupted(tmp_path):
    """What the experiment's time budget does: an on_step callback raises after a checkpoint; rerunning resumes to the same weights."""
    data, sae_cfg = _data(), TopKConfig(24, 96, k=4, seed=2)
    cfg = TrainConfig(steps=1000, batch_size=256, lr=4e-3, warmup_steps=10, checkpoint_every=50, until_converged=True, min_steps=100)
    whole = train_sae(sae_cfg, TensorBatches(data, 256), cfg, tmp_path / "whole", progress=False)

    def stop(step, row):
        if step + 1 == 100:
            raise Stop

    with pytest.raises(Stop):
        train_sae(sae_cfg, TensorBatches(data, 256), cfg, tmp_path / "split", progress=False, on_step=stop)
    assert not (tmp_path / "split" / "sae").exists()
    resumed = train_sae(sae_cfg, TensorBatches(data, 256), cfg, tmp_path / "split", progress=False)
    for name, value in whole.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, rtol=0, atol=0)
