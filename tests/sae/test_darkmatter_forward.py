"""Gradient pursuit against a per-token loop; the spliced error parts against TransformerLens's own loss."""

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import ShapeMismatchError
from interp.sites import Site
from sae.darkmatter import (
    LinearMap,
    ce_shares,
    fit_linear_map,
    gradient_pursuit,
    pursuit_reconstruction,
    spliced_losses,
)
from sae.models import TopKConfig, TopKSae
from tests.shapecheck import shapes_unchecked


def _slow_pursuit(decoder: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """One token, written as the method reads: add argmax(D r), gradient step on the support with the optimal size, clamp."""
    codes, support = np.zeros(len(decoder)), []
    for _ in range(k):
        residual = target - codes @ decoder
        match = decoder @ residual
        match[support] = -np.inf
        support.append(int(np.argmax(match)))
        gradient = np.zeros(len(decoder))
        gradient[support] = (decoder @ residual)[support]
        moved = gradient @ decoder
        codes = np.maximum(codes + (residual @ moved) / (moved @ moved) * gradient, 0)
    return codes


def test_gradient_pursuit_matches_the_per_token_loop():
    sae = TopKSae(TopKConfig(16, 48, k=4, seed=1))
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(20, 16, generator=torch.Generator().manual_seed(3))
    k = torch.randint(1, 7, (20,), generator=torch.Generator().manual_seed(4))
    codes = gradient_pursuit(sae, x, k)
    decoder, target = sae.W_dec.detach().double().numpy(), (x - sae.b_dec.detach()).double().numpy()
    for i in range(20):
        np.testing.assert_allclose(codes[i].numpy(), _slow_pursuit(decoder, target[i], int(k[i])), rtol=1e-4, atol=1e-5)
        assert (codes[i] > 0).sum() <= k[i]


def test_gradient_pursuit_recovers_a_sparse_code_on_an_orthonormal_dictionary():
    sae = TopKSae(TopKConfig(32, 32, k=3, seed=0))
    with torch.no_grad():
        sae.W_dec.copy_(torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(5)))[0])
    true = torch.zeros(10, 32)
    for i in range(10):
        true[i, torch.randperm(32, generator=torch.Generator().manual_seed(i))[:3]] = torch.rand(3) + 0.5
    x = true @ sae.W_dec.detach()
    torch.testing.assert_close(gradient_pursuit(sae, x, torch.full((10,), 3)), true, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pursuit_reconstruction(sae, x, torch.full((10,), 3)), x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ShapeMismatchError, match="k: expected one L0 per row"), shapes_unchecked():
        gradient_pursuit(sae, x, torch.full((3,), 3))


SITE = "blocks.1.hook_resid_post"


def _ce_with_hand_hook(model, tokens, replace):
    """TransformerLens's own per-token loss with the residual stream at SITE replaced by replace(x)."""

    def hook(act, hook):
        return replace(act.reshape(-1, act.shape[-1])).reshape(act.shape)

    return model.run_with_hooks(tokens, fwd_hooks=[(SITE, hook)], return_type="loss", loss_per_token=True)


def test_spliced_losses_match_transformer_lens_loss_per_token(tiny_model):
    torch.manual_seed(0)
    sae = TopKSae(TopKConfig(64, 128, k=8, seed=0))
    tokens = torch.randint(0, 101, (4, 12), generator=torch.Generator().manual_seed(1))
    acts = tiny_model.run_with_cache(tokens, names_filter=SITE)[1][SITE].reshape(-1, 64)
    with torch.no_grad():
        error_map = fit_linear_map(acts, acts - sae(acts))
    losses = spliced_losses(tiny_model, tokens, sae, SITE, error_map, batch_size=3)
    assert len(losses) == 4 * 11
    with torch.no_grad():
        linear = lambda x: error_map.predict(x).float()  # noqa: E731
        expected = dict(
            ce_clean=tiny_model(tokens, return_type="loss", loss_per_token=True),
            ce_sae=_ce_with_hand_hook(tiny_model, tokens, sae),
            ce_sae_plus_linear=_ce_with_hand_hook(tiny_model, tokens, lambda x: sae(x) + linear(x)),
            ce_sae_plus_nonlinear=_ce_with_hand_hook(tiny_model, tokens, lambda x: sae(x) + (x - sae(x) - linear(x))),
        )
    for column, value in expected.items():
        np.testing.assert_allclose(
            losses[column].to_numpy(), value.reshape(-1).double().numpy(), atol=2e-5, err_msg=column
        )
    shares = ce_shares(losses)
    increase = shares["ce_sae"] - shares["ce_clean"]
    assert shares["ce_share_nonlinear"] == pytest.approx(
        (losses.ce_sae_plus_linear.mean() - losses.ce_clean.mean()) / increase
    )


def test_spliced_losses_reuse_the_clean_ce_only_for_the_same_tokens(tiny_model, monkeypatch):
    sae, other = TopKSae(TopKConfig(64, 128, k=8, seed=0)), TopKSae(TopKConfig(64, 256, k=8, seed=1))
    tokens = torch.randint(0, 101, (4, 12), generator=torch.Generator().manual_seed(1))
    error_map = LinearMap(torch.zeros(64, 64, dtype=torch.float64), None)
    fresh = spliced_losses(tiny_model, tokens, sae, SITE, error_map, from_position=1)
    earlier = spliced_losses(tiny_model, tokens, other, SITE, error_map, from_position=1)
    runs = []
    forward = type(tiny_model).forward
    monkeypatch.setattr(type(tiny_model), "forward", lambda self, *a, **k: runs.append(1) or forward(self, *a, **k))
    reused = spliced_losses(tiny_model, tokens, sae, SITE, error_map, from_position=1, clean=earlier)
    pd.testing.assert_frame_equal(reused, fresh)
    calls_reused, runs[:] = len(runs), []
    other_tokens = tokens.flip(0)  # another order: the earlier clean CE does not belong to these rows
    pd.testing.assert_frame_equal(
        spliced_losses(tiny_model, other_tokens, sae, SITE, error_map, from_position=1, clean=earlier),
        spliced_losses(tiny_model, other_tokens, sae, SITE, error_map, from_position=1),
    )
    assert (
        calls_reused == 4 and len(runs) == 2 * 5
    )  # one batch: the layers up to the site, then 3 variants (4 when not reused)


def test_resumable_spliced_losses_equal_one_call_and_resume_from_saved_chunks(tiny_model, tmp_path, monkeypatch):
    from sae.darkmatter import downstream

    sae = TopKSae(TopKConfig(64, 128, k=8, seed=0))
    tokens = torch.randint(0, 101, (20, 10), generator=torch.Generator().manual_seed(3))
    error_map = LinearMap(
        torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.01, None
    )
    whole = spliced_losses(tiny_model, tokens, sae, SITE, error_map, from_position=1)
    calls, real = [], downstream.spliced_losses

    def dies_after_the_first_chunk(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(downstream, "spliced_losses", dies_after_the_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        downstream.resumable_spliced_losses(
            tmp_path, tiny_model, tokens, sae, SITE, error_map, from_position=1, chunk_seqs=8
        )
    assert len(list(tmp_path.glob("*.parquet"))) == 1  # the first 8 sequences saved
    monkeypatch.setattr(downstream, "spliced_losses", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = downstream.resumable_spliced_losses(
        tmp_path, tiny_model, tokens, sae, SITE, error_map, from_position=1, chunk_seqs=8, clean=whole
    )
    pd.testing.assert_frame_equal(resumed, whole)
    assert len(calls) == 3  # the first chunk from its file; the other two (8 and 4 sequences) spliced
    with pytest.raises(ShapeMismatchError, match="chunk_seqs=12"):
        downstream.resumable_spliced_losses(tmp_path, tiny_model, tokens, sae, SITE, error_map, chunk_seqs=12)


def test_zero_linear_map_leaves_the_whole_error_or_none(tiny_model):
    sae = TopKSae(TopKConfig(64, 128, k=8, seed=0))
    tokens = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(2))
    losses = spliced_losses(tiny_model, tokens, sae, SITE, LinearMap(torch.zeros(64, 64, dtype=torch.float64), None))
    np.testing.assert_allclose(losses.ce_sae_plus_linear, losses.ce_sae, atol=1e-6)  # Sae(x) + 0
    np.testing.assert_allclose(losses.ce_sae_plus_nonlinear, losses.ce_clean, atol=1e-5)  # Sae(x) + e = x
    assert ce_shares(losses)["ce_share_nonlinear"] == pytest.approx(1.0, abs=1e-5)


def test_spliced_losses_reject_a_head_site(tiny_model):
    sae = TopKSae(TopKConfig(16, 32, k=4))
    with pytest.raises(ShapeMismatchError, match="no head, neuron or position"):
        spliced_losses(
            tiny_model,
            torch.zeros(1, 4, dtype=torch.long),
            sae,
            Site(0, "z", head=1),
            LinearMap(torch.zeros(16, 16), None),
        )


def test_from_position_keeps_the_first_positions_clean(tiny_model):
    sae = TopKSae(TopKConfig(64, 128, k=8, seed=0))
    tokens = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(3))
    error_map = LinearMap(torch.zeros(64, 64, dtype=torch.float64), None)
    losses = spliced_losses(tiny_model, tokens, sae, SITE, error_map, from_position=2)
    assert losses.pos.min() == 2 and len(losses) == 2 * 7

    def keep_first_two(x):
        out = sae(x).reshape(2, 10, 64)
        out[:, :2] = x.reshape(2, 10, 64)[:, :2]
        return out.reshape(-1, 64)

    with torch.no_grad():
        expected = _ce_with_hand_hook(tiny_model, tokens, keep_first_two)[:, 2:]
    np.testing.assert_allclose(losses.ce_sae.to_numpy(), expected.reshape(-1).double().numpy(), atol=2e-5)
    with pytest.raises(ShapeMismatchError, match="from_position=9"):
        spliced_losses(tiny_model, tokens, sae, SITE, error_map, from_position=9)
