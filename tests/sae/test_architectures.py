"""Gated, Matryoshka, transcoder and skip transcoder: each against the paper's formula written as a loop,
against SAELens's own implementation of the same architecture, and through the shared trainer (learning, resume)."""

import pytest
import torch

from sae.activations import TensorBatches
from sae.io import load_sae, save_sae
from sae.models import (
    GatedConfig,
    MatryoshkaConfig,
    SkipTranscoderConfig,
    TranscoderConfig,
    build_sae,
)
from sae.models.base import LossScale
from sae.train import TrainConfig, train_sae

D_IN, D_OUT, D_SAE, K = 10, 7, 24, 4
GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def randomised(cfg, seed=0):
    sae = build_sae(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=GEN(seed + p.numel())) * 0.5)
        if cfg.architecture == "matryoshka":
            sae.threshold.fill_(0.3)
    return sae


def no_dead():
    return torch.zeros(D_SAE, dtype=torch.bool)


# -- gated ---------------------------------------------------------------------------------------


def gated_loop(sae, x):
    """The paper's definition, one token and one latent at a time."""
    W, b_gate, r, b_mag, b_dec = (t.detach() for t in (sae.W_enc, sae.b_enc, sae.r_mag, sae.b_mag, sae.b_dec))
    out = torch.zeros(len(x), D_SAE)
    for t in range(len(x)):
        for j in range(D_SAE):
            centred = [float(x[t, i] - b_dec[i]) for i in range(D_IN)]
            gate = sum(c * float(W[i, j]) for i, c in enumerate(centred)) + float(b_gate[j])
            mag = sum(c * float(W[i, j]) * float(r[j].exp()) for i, c in enumerate(centred)) + float(b_mag[j])
            out[t, j] = max(mag, 0.0) if gate > 0 else 0.0
    return out


def test_gated_encode_matches_the_papers_loop_and_its_loss_the_papers_three_terms():
    cfg = GatedConfig(D_IN, D_SAE, l1_coefficient=0.3, aux_coefficient=0.7)
    sae = randomised(cfg)
    x = torch.randn(6, D_IN, generator=GEN(1))
    torch.testing.assert_close(sae.encode(x), gated_loop(sae, x), atol=1e-5, rtol=1e-5)
    scale = LossScale(6, 3.5)
    out = sae.training_step(x, no_dead(), scale, step=0)
    acts = gated_loop(sae, x)
    W_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()
    gate = ((x - b_dec) @ sae.W_enc.detach() + sae.b_enc.detach()).relu()
    recon = sum(float(((acts[t] @ W_dec + b_dec - x[t]) ** 2).sum()) for t in range(6)) / 3.5
    l1 = sum(float(gate[t, j] * W_dec[j].norm()) for t in range(6) for j in range(D_SAE)) / 6
    aux = sum(float(((gate[t] @ W_dec + b_dec - x[t]) ** 2).sum()) for t in range(6)) / 3.5
    assert float(out.loss.detach()) == pytest.approx(recon + 0.3 * l1 + 0.7 * aux, rel=1e-5)
    assert float(out.aux_loss) == pytest.approx(aux, rel=1e-5)


def test_gated_auxiliary_loss_sends_no_gradient_to_the_decoder():
    """The auxiliary reconstruction uses a frozen copy of the decoder (the paper's stop-gradient)."""
    cfg = GatedConfig(D_IN, D_SAE, l1_coefficient=0.0, aux_coefficient=1.0)
    sae = randomised(cfg)
    x = torch.randn(8, D_IN, generator=GEN(2))
    with torch.no_grad():
        sae.b_mag.fill_(-100.0)  # every magnitude is zero: the main reconstruction is b_dec alone
    sae.training_step(x, no_dead(), LossScale(8, 1.0), 0).loss.backward()
    assert sae.W_dec.grad.abs().max() == 0  # the aux term reaches W_enc / b_gate only
    assert sae.encoder.grad.abs().max() > 0 and sae.b_enc.grad.abs().max() > 0


def test_gated_round_trips_through_saelens(tmp_path):
    from sae_lens import SAE, GatedSAE, GatedSAEConfig

    ours = randomised(GatedConfig(D_IN, D_SAE))
    save_sae(ours, tmp_path / "ours", hook_name="blocks.0.hook_resid_post")
    theirs = SAE.load_from_disk(tmp_path / "ours")
    assert isinstance(theirs, GatedSAE)
    x = torch.randn(32, D_IN, generator=GEN(3))
    with torch.no_grad():
        acts = ours.encode(x)
        assert 0 < (acts > 0).float().mean() < 1
        torch.testing.assert_close(theirs.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    torch.manual_seed(0)
    native = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE))
    with torch.no_grad():
        for p in native.parameters():
            p.normal_()
    native.save_model(tmp_path / "theirs")
    back = load_sae(tmp_path / "theirs")
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), native.encode(x), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(back(x), native(x), atol=1e-4, rtol=1e-5)


# -- matryoshka ----------------------------------------------------------------------------------


def test_matryoshka_loss_is_the_sum_of_each_prefixs_reconstruction_loss():
    cfg = MatryoshkaConfig(D_IN, D_SAE, k=K, widths=(3, 9), aux_coefficient=0.0)
    assert cfg.widths == (3, 9, D_SAE)
    sae = randomised(cfg)
    x = torch.randn(8, D_IN, generator=GEN(4))
    out = sae.training_step(x, no_dead(), LossScale(8, 2.0), 0)
    acts = sae.batch_topk(sae.pre_acts(x)).detach()
    assert int((acts > 0).sum()) == K * 8
    W_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()
    expected = 0.0
    for width in cfg.widths:  # a loop over prefixes, latents and tokens
        for t in range(8):
            recon = b_dec.clone()
            for j in range(width):
                recon += acts[t, j] * W_dec[j]
            expected += float(((recon - x[t]) ** 2).sum()) / 2.0
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


def test_matryoshka_loss_equals_saelens_matryoshka_batchtopk():
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import TrainStepInput

    cfg = MatryoshkaConfig(D_IN, D_SAE, k=K, widths=(4, 12), aux_coefficient=0.0)
    ours = randomised(cfg)
    theirs = MatryoshkaBatchTopKTrainingSAE(
        MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=K, matryoshka_widths=[4, 12, D_SAE], rescale_acts_by_decoder_norm=False
        )
    )
    with torch.no_grad():
        theirs.W_enc.copy_(ours.W_enc)
        theirs.b_enc.copy_(ours.b_enc)
        theirs.W_dec.copy_(ours.W_dec)
        theirs.b_dec.copy_(ours.b_dec)
    x = torch.randn(16, D_IN, generator=GEN(5))
    step = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    theirs_out = theirs.training_forward_pass(step)
    ours_out = ours.training_step(x, no_dead(), LossScale(16, 1.0), 0)  # total_variance 1: a sum of squares / n
    assert float(ours_out.loss) / 16 == pytest.approx(float(theirs_out.loss), rel=1e-5)
    torch.testing.assert_close(ours_out.sae_out, theirs_out.sae_out, atol=1e-5, rtol=1e-5)


def test_matryoshka_saves_as_saelens_jumprelu_with_its_threshold(tmp_path):
    from sae_lens import SAE

    ours = randomised(MatryoshkaConfig(D_IN, D_SAE, k=K, widths=(6,)))
    save_sae(ours, tmp_path)
    theirs = SAE.load_from_disk(tmp_path)
    x = torch.randn(32, D_IN, generator=GEN(6))
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), atol=1e-5, rtol=1e-5)
    again = load_sae(tmp_path)
    assert again.cfg == ours.cfg and float(again.threshold) == pytest.approx(0.3)


# -- transcoders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("k", [K, None])
def test_transcoder_forward_matches_its_formula(skip, k):
    cfg = (SkipTranscoderConfig if skip else TranscoderConfig)(D_IN, D_SAE, d_out=D_OUT, k=k)
    sae = randomised(cfg)
    x = torch.randn(5, D_IN, generator=GEN(7))
    with torch.no_grad():
        y = sae(x)
    assert y.shape == (5, D_OUT)
    W_enc, b_enc, W_dec, b_dec = (t.detach() for t in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    for t in range(5):
        pre = [sum(float(x[t, i]) * float(W_enc[i, j]) for i in range(D_IN)) + float(b_enc[j]) for j in range(D_SAE)]
        keep = sorted(range(D_SAE), key=lambda j: -pre[j])[:K] if k else range(D_SAE)
        expected = b_dec.clone()
        for j in keep:
            expected += max(pre[j], 0.0) * W_dec[j]
        if skip:
            expected += sae.W_skip.detach() @ x[t]
        torch.testing.assert_close(y[t], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("skip", [False, True])
def test_relu_transcoders_round_trip_through_saelens(skip, tmp_path):
    from sae_lens import SAE, SkipTranscoder, SkipTranscoderConfig as TheirSkip, Transcoder, TranscoderConfig as Theirs

    ours = randomised((SkipTranscoderConfig if skip else TranscoderConfig)(D_IN, D_SAE, d_out=D_OUT, k=None))
    save_sae(ours, tmp_path / "ours", hook_name="blocks.0.ln2.hook_normalized", extra={"hook_name_out": "x"})
    theirs = SAE.load_from_disk(tmp_path / "ours")
    assert type(theirs) is (SkipTranscoder if skip else Transcoder)
    x = torch.randn(16, D_IN, generator=GEN(8))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-5, rtol=1e-5)
    torch.manual_seed(1)
    native = (SkipTranscoder if skip else Transcoder)(
        (TheirSkip if skip else Theirs)(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, apply_b_dec_to_input=False)
    )
    with torch.no_grad():
        for p in native.parameters():
            p.normal_()
    native.save_model(tmp_path / "theirs")
    back = load_sae(tmp_path / "theirs")
    assert back.cfg.architecture == ("skip_transcoder" if skip else "transcoder") and back.cfg.k is None
    with torch.no_grad():
        torch.testing.assert_close(back(x), native(x), atol=1e-4, rtol=1e-5)


def test_topk_transcoder_saves_under_a_name_saelens_will_not_misread(tmp_path):
    ours = randomised(TranscoderConfig(D_IN, D_SAE, d_out=D_OUT, k=K))
    save_sae(ours, tmp_path)
    import json

    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "topk_transcoder"
    x = torch.randn(8, D_IN, generator=GEN(9))
    with torch.no_grad():
        torch.testing.assert_close(load_sae(tmp_path)(x), ours(x))


def planted_mlp(n=4096, seed=0):
    """Rows [x, y]: x and y are both read-outs of the same sparse codes c (x = c F + 0.3, y = c B + 0.5), 40 codes in
    10 input dimensions, so y is not linear in x but a transcoder with the codes as latents maps x to y exactly."""
    gen = GEN(seed)
    F, B = torch.randn(40, D_IN, generator=gen), torch.randn(40, D_OUT, generator=gen)
    c = (torch.rand(n, 40, generator=gen) < 0.06) * torch.rand(n, 40, generator=gen)
    return torch.cat([c @ F + 0.3, c @ B + 0.5], dim=1)


@pytest.mark.parametrize(
    "cfg",
    [TranscoderConfig(D_IN, 96, d_out=D_OUT, k=6), SkipTranscoderConfig(D_IN, 96, d_out=D_OUT, k=6)],
    ids=lambda c: c.architecture,
)
def test_transcoders_beat_the_best_linear_map_on_a_planted_sparse_mlp_and_take_raw_inputs(cfg):
    rows = planted_mlp() * 30  # far from unit scale: the normalisation must be folded out
    train = TrainConfig(steps=300, batch_size=256, lr=1e-2, warmup_steps=10)
    result = train_sae(cfg, TensorBatches(rows, 256), train, progress=False)
    x, y = rows[:1024, :D_IN], rows[:1024, D_IN:]
    ones = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    linear = ones @ torch.linalg.lstsq(ones, y).solution  # the best affine map, fitted on these very rows
    variance = (y - y.mean(0)).pow(2).sum()
    with torch.no_grad():
        fvu = float((result.sae(x) - y).pow(2).sum() / variance)
    linear_fvu = float((linear - y).pow(2).sum() / variance)
    assert fvu < 0.7 * linear_fvu, (fvu, linear_fvu)
    assert fvu == pytest.approx(result.curve.fvu.iloc[-1], abs=0.1)  # raw inputs give the training FVU: scale folded


# -- the shared trainer: learning and exact resume ------------------------------------------------


def sparse_rows(n=2048, d=D_IN, seed=0):
    gen = GEN(seed)
    features = torch.randn(40, d, generator=gen)
    mask = torch.rand(n, 40, generator=gen) < 0.08
    return (mask * torch.rand(n, 40, generator=gen)) @ features + 0.3


TRAINED = {
    "gated": (GatedConfig(D_IN, 64, l1_coefficient=5e-3), lambda: sparse_rows()),
    "matryoshka": (MatryoshkaConfig(D_IN, 64, k=4, widths=(8, 24)), lambda: sparse_rows()),
    "transcoder": (TranscoderConfig(D_IN, 64, d_out=D_OUT, k=4), lambda: planted_mlp(2048)),
}


@pytest.mark.parametrize("name", list(TRAINED))
def test_interrupted_and_resumed_training_equals_one_uninterrupted_run(name, tmp_path):
    cfg, data = TRAINED[name]
    rows = data()
    train = TrainConfig(steps=24, batch_size=128, lr=3e-3, warmup_steps=2, checkpoint_every=8, dead_after_tokens=512)
    whole = train_sae(cfg, TensorBatches(rows, 128), train, tmp_path / "whole", progress=False)

    class Stop(Exception):
        pass

    def stop_at(step, row):
        if step == 13:
            raise Stop

    with pytest.raises(Stop):
        train_sae(cfg, TensorBatches(rows, 128), train, tmp_path / "cut", progress=False, on_step=stop_at)
    resumed = train_sae(cfg, TensorBatches(rows, 128), train, tmp_path / "cut", progress=False)
    for (key, a), b in zip(whole.sae.state_dict().items(), resumed.sae.state_dict().values()):
        assert torch.equal(a, b), key
    assert whole.curve.fvu.iloc[-1] < whole.curve.fvu.iloc[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gated", "transcoder"])
def test_torchrun_two_processes_equal_one_process_for_the_new_architectures(arch, tmp_path):
    """Matryoshka is left out: BatchTopK selects over each process's slice, as SAELens's does per device."""
    import subprocess

    from safetensors.torch import load_file

    from tests.sae.test_train import _run_worker, sparse_data

    data = tmp_path / "acts.pt"
    torch.save(sparse_data(2048), data)
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
    single = _run_worker(data, one, "--arch", arch)
    pair = _run_worker(data, two, "--arch", arch, torchrun=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = pair.communicate(timeout=240)[0].decode()
    assert pair.returncode == 0, output[-3000:]
    assert single.wait(timeout=120) == 0
    a, b = (load_file(str(d / "sae" / "sae_weights.safetensors")) for d in (one, two))
    assert set(a) == set(b) and (arch != "gated" or "r_mag" in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("skip", [False, True])
def test_topk_transcoder_sparse_step_has_the_dense_formulas_loss_and_gradients(skip):
    cfg = (SkipTranscoderConfig if skip else TranscoderConfig)(D_IN, D_SAE, d_out=D_OUT, k=K, aux_coefficient=0.0)
    sae = randomised(cfg)
    rows = torch.randn(12, D_IN + D_OUT, generator=GEN(10))
    scale = LossScale(12, 5.0)
    sae.training_step(rows, no_dead(), scale, 0).loss.backward()
    sparse_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    x, y = rows[:, :D_IN], rows[:, D_IN:]
    pre = x @ sae.encoder.T + sae.b_enc  # the dense formula, through autograd
    values, indices = pre.topk(K, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    y_hat = acts @ sae.W_dec + sae.b_dec + (x @ sae.W_skip.T if skip else 0)
    ((y_hat - y) ** 2).sum().div(5.0).backward()
    for name, p in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
