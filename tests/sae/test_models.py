"""Each architecture's encode against a hand-written per-token loop; configs, registry, STE gradients, scale folding."""

import math

import pytest
import torch

from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError
from sae.models import (
    ARCHITECTURES,
    BatchTopKConfig,
    JumpReluConfig,
    ReluConfig,
    TopKConfig,
    build_sae,
    config_from_dict,
    make_config,
)
from sae.models.jumprelu import JumpReluFunction, StepFunction

D_IN, D_SAE, K = 12, 40, 5


def randomised(cfg, seed=0):
    sae = build_sae(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        if cfg.architecture == "jumprelu":
            sae.log_threshold.copy_(torch.randn(D_SAE, generator=gen) * 0.3 - 1)
        if cfg.architecture == "batchtopk":
            sae.threshold.fill_(0.4)
    return sae


def loop_encode(sae, x):
    """One token, one latent at a time: the definition of each activation."""
    W_enc, b_enc, b_dec = sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach()
    out = torch.zeros(len(x), D_SAE)
    for t in range(len(x)):
        pre = [
            sum(float(x[t, i] - b_dec[i]) * float(W_enc[i, j]) for i in range(D_IN)) + float(b_enc[j])
            for j in range(D_SAE)
        ]
        arch = sae.cfg.architecture
        for j, p in enumerate(pre):
            if arch == "relu":
                out[t, j] = max(p, 0.0)
            elif arch == "topk":
                out[t, j] = max(p, 0.0) if sorted(pre, reverse=True).index(p) < K else 0.0
            elif arch == "batchtopk":
                out[t, j] = p if p > float(sae.threshold) and p > 0 else 0.0
            else:
                out[t, j] = p if p > math.exp(float(sae.log_threshold.detach()[j])) else 0.0
    return out


CONFIGS = [
    ReluConfig(D_IN, D_SAE),
    TopKConfig(D_IN, D_SAE, k=K),
    BatchTopKConfig(D_IN, D_SAE, k=K),
    JumpReluConfig(D_IN, D_SAE),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.architecture)
def test_encode_decode_match_per_token_loop(cfg):
    sae = randomised(cfg)
    x = torch.randn(6, D_IN, generator=torch.Generator().manual_seed(1))
    acts = sae.encode(x)
    torch.testing.assert_close(acts, loop_encode(sae, x), atol=1e-5, rtol=1e-5)
    expected = torch.stack([sum(acts[t, j] * sae.W_dec[j] for j in range(D_SAE)) + sae.b_dec for t in range(len(x))])
    torch.testing.assert_close(sae(x), expected.detach(), atol=1e-5, rtol=1e-5)
    assert sae.encode(x[None]).shape == (1, 6, D_SAE)  # any leading shape


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.architecture)
def test_folding_input_scale_gives_the_same_reconstruction_on_raw_inputs(cfg):
    sae = randomised(cfg)
    x = torch.randn(20, D_IN, generator=torch.Generator().manual_seed(2))
    scale = 3.7
    expected_recon = sae(x * scale) / scale
    expected_acts = sae.encode(x * scale) / scale
    sae.fold_input_scale_(scale)
    torch.testing.assert_close(sae(x), expected_recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x), expected_acts, atol=1e-5, rtol=1e-5)


def test_registry_and_configs():
    assert set(ARCHITECTURES) == {
        "relu",
        "topk",
        "batchtopk",
        "jumprelu",
        "gated",
        "matryoshka",
        "transcoder",
        "skip_transcoder",
    }
    cfg = make_config("topk", d_in=8, d_sae=32, k=4)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InterpError, match="Unknown SAE architecture 'topkk'.*'topk'"):
        make_config("topkk", d_in=8, d_sae=32)
    with pytest.raises(InterpError, match="no field.*'kk'.*Did you mean.*'k'"):
        make_config("topk", d_in=8, d_sae=32, kk=3)


@pytest.mark.parametrize("k", [32, 40, 0])
def test_k_must_be_below_d_sae(k):
    with pytest.raises(OutOfRangeError, match=f"k={k}.*0 < k < d_sae=32"):
        TopKConfig(d_in=8, d_sae=32, k=k)
    with pytest.raises(OutOfRangeError, match="k="):
        BatchTopKConfig(d_in=8, d_sae=32, k=k)


def test_wrong_width_input_names_d_in():
    sae = build_sae(TopKConfig(D_IN, D_SAE, k=K))
    with pytest.raises(ShapeMismatchError, match=f"last dimension is 7 but this SAE has d_in={D_IN}"):
        sae.encode(torch.randn(3, 7))


def test_jumprelu_straight_through_gradients_match_closed_form():
    pre = torch.tensor([[0.10, 0.52, 0.90], [0.47, 0.30, 1.20]], requires_grad=True)
    threshold = torch.tensor([0.5, 0.5, 1.0], requires_grad=True)
    bw = 0.1
    (JumpReluFunction.apply(pre, threshold, bw) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    # inside the window |pre - t| < bw/2: (0,?) no; (1,0)=0.47 yes; (0,1)=0.52 yes; (0,2)=0.9 no; (1,2)=1.2 no
    expected_t = -torch.tensor([0.5 / bw * 1.0, 0.5 / bw * 2.0, 0.0])
    torch.testing.assert_close(threshold.grad, expected_t)
    torch.testing.assert_close(pre.grad, torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]]))
    threshold.grad = None
    StepFunction.apply(pre, threshold, bw).sum().backward()
    torch.testing.assert_close(threshold.grad, -torch.tensor([1 / bw, 1 / bw, 0.0]))


def test_batchtopk_training_selects_k_per_row_on_average_and_learns_its_threshold():
    sae = randomised(BatchTopKConfig(D_IN, D_SAE, k=K, threshold_lr=1.0))
    sae.threshold.zero_()
    x = torch.randn(16, D_IN, generator=torch.Generator().manual_seed(3))
    pre = sae.pre_acts(x).detach()
    acts = sae.batch_topk(pre)
    assert int((acts > 0).sum()) == K * len(x)
    kth = pre.relu().flatten().sort(descending=True).values[K * len(x) - 1]
    torch.testing.assert_close(acts[acts > 0].min(), kth)
    from sae.models.base import LossScale

    sae.training_step(x, torch.zeros(D_SAE, dtype=torch.bool), LossScale(16, 1.0), 0)
    assert float(sae.threshold) == pytest.approx(float(kth))
