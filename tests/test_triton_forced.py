"""End to end with the Triton kernels forced on CPU (TRITON_INTERPRET=1, INTERP_FORCE_TRITON=1), issue 22:
an AtP sweep and a sparse TopK SAE training step give the numbers of the torch twins (the default
CPU path), so the kernels are exercised inside the code that calls them, not only alone."""

import numpy as np
import pandas as pd
import pytest
import torch

from interp.attribution import attribution_sweep
from interp.kernels import triton_available
from interp.patching import PatchingTask
from sae.models import TopKConfig, build_sae
from sae.models.base import LossScale

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton (its CPU interpreter)")


def forced_and_default(monkeypatch, compute):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("INTERP_FORCE_TRITON", "1")
    forced = compute()
    monkeypatch.delenv("INTERP_FORCE_TRITON")
    return forced, compute()


def test_atp_sweep_with_forced_kernels_equals_the_torch_path(tiny_model, monkeypatch):
    import interp.kernels.patching as kp

    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 2, 6), generator=torch.Generator().manual_seed(3))
    task = PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7], wrong_answers=[9, 1])
    calls = []
    monkeypatch.setattr(
        kp, "attribution_scores_triton", lambda *a, _f=kp.attribution_scores_triton: calls.append(1) or _f(*a)
    )
    forced, default = forced_and_default(
        monkeypatch, lambda: attribution_sweep(task, ("heads", "neurons", "resid_pre"), layers=[0, 2])
    )
    assert calls  # the kernel really ran
    for name in forced:
        pd.testing.assert_frame_equal(forced[name], default[name], check_exact=False, rtol=1e-4, atol=1e-5)
    assert np.abs(default["heads"]["metric"] - task.corrupted_metric).max() > 1e-3


def test_sparse_topk_training_step_with_forced_kernels_equals_the_torch_path(monkeypatch):
    d_in, d_sae, k, n = 16, 64, 4, 24
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=gen)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[:20] = True  # AuxK runs too

    def step():
        sae = build_sae(TopKConfig(d_in, d_sae, k=k, sparse_backward=True, seed=1))
        with torch.no_grad():
            sae.b_enc.sub_(0.3)  # some selected values <= 0: the ReLU mask matters
        out = sae.training_step(x.clone(), dead, LossScale(n, float((x - x.mean(0)).pow(2).sum())), 0)
        out.loss.backward()
        return {
            "loss": out.loss.detach(),
            "out": out.sae_out.detach(),
            **{name: p.grad.clone() for name, p in sae.named_parameters()},
        }

    import interp.kernels.sparse_rows as sr
    import interp.kernels.topk as tk

    calls = []
    for module, name in (
        (sr, "rows_sum_triton"),
        (sr, "rows_dot_triton"),
        (sr, "rows_grad_triton"),
        (tk, "row_topk_triton"),
    ):
        monkeypatch.setattr(module, name, lambda *a, _f=getattr(module, name), _n=name: calls.append(_n) or _f(*a))
    forced, default = forced_and_default(monkeypatch, step)
    assert {"rows_sum_triton", "rows_dot_triton", "rows_grad_triton", "row_topk_triton"} <= set(
        calls
    )  # every kernel really ran
    assert forced.keys() == default.keys()
    for name in forced:
        torch.testing.assert_close(forced[name], default[name], atol=1e-5, rtol=1e-4, msg=name)
