"""Evaluation against TransformerLens's own cache and loss; the splice with the error term kept."""

import json

import pytest
import torch

from interp.errors import ShapeMismatchError
from sae.evaluate import density_histogram, evaluate_sae, evaluate_saved, run_with_sae
from sae.io import save_sae
from sae.models import TopKConfig, build_sae

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def sae():
    sae = build_sae(TopKConfig(64, 256, k=8, seed=1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    return sae.eval()


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return torch.randint(0, tiny_model.cfg.d_vocab, (6, 12), generator=torch.Generator().manual_seed(0))


def test_splice_with_error_kept_and_no_edit_is_the_clean_model(tiny_model, sae, tokens):
    with torch.no_grad():
        torch.testing.assert_close(
            run_with_sae(tiny_model, tokens, sae, SITE, keep_error=True), tiny_model(tokens), atol=1e-4, rtol=1e-4
        )


def test_latent_edit_with_error_kept_moves_the_site_by_exactly_that_latents_decoder_row(tiny_model, sae, tokens):
    _, cache = tiny_model.run_with_cache(tokens, names_filter=SITE)
    x = cache[SITE].reshape(-1, 64)
    latent = int(sae.encode(x).gt(0).sum(0).argmax())

    def zero_latent(acts):
        acts = acts.clone()
        acts[:, latent] = 0
        return acts

    seen = {}
    tiny_model.add_hook("blocks.2.hook_resid_pre", lambda act, hook: seen.update(act=act.clone()))
    try:
        with torch.no_grad():
            run_with_sae(tiny_model, tokens, sae, SITE, keep_error=True, edit=zero_latent)
    finally:
        tiny_model.reset_hooks()
    expected = x - sae.encode(x)[:, latent, None] * sae.W_dec[latent]
    torch.testing.assert_close(seen["act"].reshape(-1, 64), expected.detach(), atol=1e-5, rtol=1e-5)


def test_metrics_match_an_independent_computation(tiny_model, sae, tokens):
    result = evaluate_sae(tiny_model, sae, SITE, tokens, batch_size=4)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=SITE)
    x = cache[SITE].reshape(-1, 64).double()
    with torch.no_grad():
        x_hat, acts = sae(x.float()).double(), sae.encode(x.float())
        ce_clean = float(tiny_model(tokens, return_type="loss"))
        ce_zero = float(
            tiny_model.run_with_hooks(
                tokens, return_type="loss", fwd_hooks=[(SITE, lambda a, hook: torch.zeros_like(a))]
            )
        )
        ce_sae = float(
            tiny_model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(SITE, lambda a, hook: sae(a))])
        )
        clean_lp = tiny_model(tokens).log_softmax(-1)[:, :-1]
        sae_lp = tiny_model.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda a, hook: sae(a))]).log_softmax(-1)[:, :-1]
    m = result.metrics
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-5) and m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-5)
    assert m["l0"] == pytest.approx(float((acts > 0).sum(1).float().mean()))
    assert m["mse"] == pytest.approx(float((x - x_hat).pow(2).mean()), rel=1e-5)
    assert m["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(x, x_hat).mean()), rel=1e-5)
    assert (m["ce_clean"], m["ce_zero_ablation"], m["ce_sae"]) == pytest.approx((ce_clean, ce_zero, ce_sae), rel=1e-5)
    assert m["ce_loss_recovered"] == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean), rel=1e-4)
    assert m["kl_sae"] == pytest.approx(
        float(torch.nn.functional.kl_div(sae_lp, clean_lp, log_target=True, reduction="none").sum(-1).mean()), rel=1e-4
    )
    assert m["dead_fraction"] == pytest.approx(float((acts > 0).sum(0).eq(0).float().mean()))
    torch.testing.assert_close(
        torch.tensor(result.per_token.error_norm.values), (x - x_hat).norm(dim=-1), atol=1e-5, rtol=1e-5
    )
    assert len(result.per_token) == tokens.numel() and result.per_token.ce_clean.isna().sum() == len(tokens)
    hist = density_histogram(result.latents)
    assert hist.latents.sum() == 256 and hist.latents.iloc[0] == int((acts > 0).sum(0).eq(0).sum())


def test_sae_of_the_wrong_width_for_the_site_is_refused(tiny_model, tokens):
    wide = build_sae(TopKConfig(48, 128, k=4))
    with pytest.raises(ShapeMismatchError, match=r"64 wide per token.*d_in=48"):
        evaluate_sae(tiny_model, wide, SITE, tokens)


def test_evaluate_saved_reads_the_site_and_writes_results(tiny_model, sae, tokens, tmp_path):
    save_sae(sae, tmp_path / "sae", hook_name=SITE)
    result = evaluate_saved(tmp_path, tiny_model, tokens)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["fvu"] == pytest.approx(result.metrics["fvu"])
    assert {p.name for p in (tmp_path / "eval").iterdir()} == {
        "metrics.json",
        "per_token.parquet",
        "latents.parquet",
        "density_histogram.parquet",
    }


def test_top_activating_contexts_are_the_largest_activations(tiny_model, sae, tokens):
    from interp.errors import OutOfRangeError
    from sae.latents import top_activating_contexts

    _, cache = tiny_model.run_with_cache(tokens, names_filter=SITE)
    acts = sae.encode(cache[SITE]).detach()  # [seqs, pos, d_sae]
    latents = [int(j) for j in acts.gt(0).sum((0, 1)).topk(2).indices]
    frame = top_activating_contexts(tiny_model, sae, SITE, tokens, latents, top=3, batch_size=4)
    for latent in latents:
        rows = frame[frame.latent == latent]
        expected = acts[..., latent].flatten().topk(3).values
        torch.testing.assert_close(torch.tensor(rows.activation.values, dtype=torch.float32), expected)
        assert all(
            float(acts[r.seq, r.pos, latent]) == pytest.approx(r.activation) and tokens[r.seq, r.pos] == r.token
            for r in rows.itertuples()
        )
    with pytest.raises(OutOfRangeError, match="d_sae=256"):
        top_activating_contexts(tiny_model, sae, SITE, tokens, [300])
