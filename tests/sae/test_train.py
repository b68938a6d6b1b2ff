"""Training: schedule, init, learning, bad input, exact resume after SIGKILL, torchrun data parallel."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.optimize import minimize

from interp.errors import CorruptFileError, InterpError, ShapeMismatchError
from sae.activations import ModelBatches, StoreBatches, TensorBatches, site_width
from sae.models import JumpReluConfig, ReluConfig, TopKConfig, BatchTopKConfig
from sae.site_training import train_at_site
from sae.train import NonFiniteError, TrainConfig, geometric_median, lr_at, train_sae

WORKER = Path(__file__).with_name("train_worker.py")
REPO = Path(__file__).parents[2]


def sparse_data(n=4096, d=32, n_features=96, seed=0):
    """Rows that are sparse sums of unit feature directions, plus an offset: what an SAE should recover."""
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n_features, d, generator=gen)
    features /= features.norm(dim=1, keepdim=True)
    coeffs = (torch.rand(n, n_features, generator=gen) < 0.04) * torch.rand(n, n_features, generator=gen) * 4
    return coeffs @ features + 2.0


def test_geometric_median_matches_scipy():
    pts = torch.randn(200, 5, generator=torch.Generator().manual_seed(0)) ** 3
    ours = geometric_median(pts).double().numpy()
    p = pts.double().numpy()
    best = minimize(
        lambda m: np.linalg.norm(p - m, axis=1).sum(),
        p.mean(0),
        method="Nelder-Mead",
        options=dict(xatol=1e-9, fatol=1e-12, maxiter=20000),
    ).x
    np.testing.assert_allclose(ours, best, atol=1e-4)


def test_lr_schedule_warms_up_holds_and_decays_to_zero():
    cfg = TrainConfig(steps=100, warmup_steps=10, decay_fraction=0.2)
    lrs = [lr_at(s, cfg, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[79] == 1.0
    assert lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)


@pytest.mark.parametrize(
    "sae_cfg",
    [TopKConfig(32, 128, k=4), BatchTopKConfig(32, 128, k=4), ReluConfig(32, 128), JumpReluConfig(32, 128)],
    ids=lambda c: c.architecture,
)
def test_every_architecture_learns_sparse_data(sae_cfg):
    data = sparse_data()
    result = train_sae(
        sae_cfg,
        TensorBatches(data, 256),
        TrainConfig(steps=150, batch_size=256, lr=4e-3, warmup_steps=10),
        progress=False,
    )
    x = sparse_data(512, seed=0)
    with torch.no_grad():
        fvu = float((result.sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        l0 = float((result.sae.encode(x) > 0).float().sum(1).mean())
    assert fvu < 0.35, (fvu, result.curve.tail(3))
    assert 0 < l0 < 0.35 * 128  # a ReLU SAE, at 150 steps, is the least sparse
    assert result.curve.fvu.iloc[-1] < result.curve.fvu.iloc[0] / 2
    if sae_cfg.unit_norm_decoder:
        torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(128))


def test_saved_weights_take_raw_inputs_and_b_dec_starts_at_the_geometric_median(tmp_path):
    data = sparse_data() * 50  # far from unit scale: normalisation must be folded back out
    cfg = TrainConfig(steps=1, batch_size=256, lr=1e-12, warmup_steps=0)
    result = train_sae(TopKConfig(32, 128, k=4), TensorBatches(data, 256), cfg, tmp_path, progress=False)
    first = next(iter(TensorBatches(data, 256)))
    torch.testing.assert_close(result.sae.b_dec.detach(), geometric_median(first), atol=1e-3, rtol=1e-4)
    assert (tmp_path / "sae" / "cfg.json").exists() and (tmp_path / "training_curve.parquet").exists()


def test_nan_in_activations_stops_with_the_last_checkpoint_kept(tmp_path):
    data = sparse_data(64 * 30)
    data[64 * 25 + 3, 7] = float("nan")  # in step 25's batch (batches are unshuffled slices below)
    batches = [data[i : i + 64] for i in range(0, len(data), 64)]
    with pytest.raises(NonFiniteError, match=r"step 25 contain NaN or Inf in 1 rows.*step_00000020.pt is kept"):
        train_sae(
            TopKConfig(32, 128, k=4),
            batches,
            TrainConfig(steps=30, batch_size=64, checkpoint_every=10),
            tmp_path,
            progress=False,
        )
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000010.pt", "step_00000020.pt"]


def test_d_in_that_does_not_match_the_activations_is_refused():
    with pytest.raises(ShapeMismatchError, match=r"shape \(64, 32\), expected \[64, d_in=48\].*site's width"):
        train_sae(
            TopKConfig(48, 128, k=4),
            TensorBatches(sparse_data(256), 64),
            TrainConfig(steps=2, batch_size=64),
            progress=False,
        )


def test_on_the_fly_activations_from_the_model(tiny_model):
    site = "blocks.1.hook_resid_post"
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (32, 16), generator=torch.Generator().manual_seed(0))
    assert site_width(tiny_model, site) == 64
    batches = ModelBatches(tiny_model, tokens, site, 128, seqs_per_chunk=32)
    first = next(iter(batches))
    _, cache = tiny_model.run_with_cache(tokens, names_filter=site)
    rows = cache[site].reshape(-1, 64)
    assert all(
        any(torch.allclose(r, c, atol=1e-6) for c in rows) for r in first[:5]
    )  # batches are rows of the real activations
    torch.testing.assert_close(next(iter(batches)), first)  # deterministic: resume relies on it
    result = train_sae(
        TopKConfig(64, 256, k=8),
        batches,
        TrainConfig(steps=30, batch_size=128, lr=2e-3, warmup_steps=5),
        progress=False,
    )
    assert result.curve.fvu.iloc[-1] < 0.8


def _run_worker(data, out, *extra, torchrun=False, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if torchrun
        else [sys.executable]
    )
    return subprocess.Popen([*cmd, str(WORKER), str(data), str(out), *extra], env=env, cwd=REPO, **popen)


def test_run_killed_with_sigkill_and_resumed_ends_with_the_same_weights(tmp_path):
    data = tmp_path / "acts.pt"
    torch.save(sparse_data(2048), data)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for d in (whole, killed):
        d.mkdir()
    baseline = _run_worker(data, whole)
    victim = _run_worker(data, killed, "--pause-at", "25")
    deadline = time.time() + 120
    while not (killed / "paused").exists():
        assert victim.poll() is None and time.time() < deadline, "the worker exited or stalled before reaching step 25"
        time.sleep(0.2)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (killed / "sae").exists()
    assert [p.name for p in sorted((killed / "checkpoints").iterdir())] == ["step_00000010.pt", "step_00000020.pt"]
    assert _run_worker(data, killed).wait(timeout=120) == 0
    assert baseline.wait(timeout=120) == 0
    a, b = (
        load_file(str(whole / "sae" / "sae_weights.safetensors")),
        load_file(str(killed / "sae" / "sae_weights.safetensors")),
    )
    for key in a:
        assert torch.equal(a[key], b[key]), key
    import pandas as pd

    pd.testing.assert_frame_equal(
        pd.read_parquet(whole / "training_curve.parquet"), pd.read_parquet(killed / "training_curve.parquet")
    )
    assert pd.read_parquet(whole / "training_curve.parquet").dead_fraction.max() > 0  # AuxK and dead tracking were live


def test_torchrun_two_processes_equal_one_process(tmp_path):
    data = tmp_path / "acts.pt"
    torch.save(sparse_data(2048), data)
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    single = _run_worker(data, one)
    pair = _run_worker(data, two, torchrun=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = pair.communicate(timeout=180)[0].decode()
    assert pair.returncode == 0, output[-3000:]
    assert single.wait(timeout=120) == 0
    a, b = (
        load_file(str(one / "sae" / "sae_weights.safetensors")),
        load_file(str(two / "sae" / "sae_weights.safetensors")),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def test_train_at_site_from_a_store_writes_a_results_dir(tiny_model, tmp_path):
    from interp.store import build_store

    site = "blocks.2.hook_resid_post"
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (48, 16), generator=torch.Generator().manual_seed(1))
    store = build_store(
        tiny_model, [site], tokens, tmp_path / "store", n_tokens=48 * 16, seq_len=16, shard_tokens=256, progress=False
    )
    cfg = TrainConfig(steps=20, batch_size=64, lr=2e-3, warmup_steps=2, checkpoint_every=10)
    result = train_at_site(
        tiny_model,
        site,
        TopKConfig(64, 256, k=8),
        cfg,
        tmp_path / "run",
        store=store,
        eval_tokens=tokens[:4],
        progress=False,
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"fvu", "l0", "ce_loss_recovered", "final_fvu"} <= set(metrics)
    assert metrics["final_fvu"] == pytest.approx(result.curve.fvu.iloc[-1])
    first = next(iter(StoreBatches(store, site, 64)))
    assert first.shape == (64, 64) and torch.isin(first[:, 0], store.activations(site)[:, 0]).all()


def test_altered_store_shard_and_wrong_d_in_are_refused(tiny_model, tmp_path):
    from interp.store import build_store, open_store

    site = "blocks.2.hook_resid_post"
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (16, 16), generator=torch.Generator().manual_seed(2))
    build_store(
        tiny_model, [site], tokens, tmp_path / "store", n_tokens=256, seq_len=16, shard_tokens=128, progress=False
    )
    with pytest.raises(
        ShapeMismatchError, match=r"TopKConfig\(d_in=32\) does not match blocks.2.hook_resid_post.*64 wide. Use d_in=64"
    ):
        train_at_site(
            tiny_model,
            site,
            TopKConfig(32, 128, k=4),
            TrainConfig(steps=2, batch_size=64),
            tmp_path / "run",
            store=open_store(tmp_path / "store"),
            progress=False,
        )
    shard = sorted((tmp_path / "store").glob("shard_*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="is corrupt: sha256"):
        train_sae(
            TopKConfig(64, 128, k=4),
            StoreBatches(open_store(tmp_path / "store"), site, 64),
            TrainConfig(steps=2, batch_size=64),
            progress=False,
        )


def test_unreadable_checkpoint_and_changed_config_are_refused_on_resume(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=64, checkpoint_every=1)
    train_sae(TopKConfig(32, 128, k=4), TensorBatches(sparse_data(256), 64), cfg, tmp_path, progress=False)
    with pytest.raises(InterpError, match="different SAE config"):
        train_sae(TopKConfig(32, 128, k=8), TensorBatches(sparse_data(256), 64), cfg, tmp_path, progress=False)
    (tmp_path / "checkpoints" / "step_00000002.pt").write_bytes(b"truncated")
    with pytest.raises(
        CorruptFileError, match="step_00000002.pt cannot be read.*Delete it to resume from the one before"
    ):
        train_sae(TopKConfig(32, 128, k=4), TensorBatches(sparse_data(256), 64), cfg, tmp_path, progress=False)
