"""The new evaluations, each on a synthetic SAE whose value is known in closed form (positive controls), with shuffled
labels as negative controls; the transcoder splice against TransformerLens's own hooks."""

import math
import time

import numpy as np
import pytest
import torch

from sae.evals.absorption import absorption_from_rows, absorption_metrics
from sae.evals.linear import fit_logistic
from sae.evals.probing import probing_metrics, sparse_probing_from_rows, token_labels
from sae.evaluate import evaluate_sae
from sae.models import ReluConfig, SkipTranscoderConfig, build_sae
from sae.train import geometric_median
from tests.test_dashboards import needs_chromium

SITE = "blocks.1.hook_resid_post"
GEN = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


@pytest.fixture(scope="module")
def tokens(tiny_model):
    return torch.randint(0, tiny_model.cfg.d_vocab, (6, 12), generator=GEN(0))


def site_rows(model, tokens, site=SITE):
    _, cache = model.run_with_cache(tokens, names_filter=site)
    return cache[site].reshape(-1, cache[site].shape[-1])


def halving_sae(d_in, centre):
    """ReLU SAE with latents +e_i and -e_i, decoder rows halved and b_dec = centre: x_hat = centre + (x - centre) / 2."""
    sae = build_sae(ReluConfig(d_in, 2 * d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.encoder.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]) / 2)
        sae.b_enc.zero_()
        sae.b_dec.copy_(centre)
    return sae.eval()


def test_geometric_median_centred_explained_variance_is_three_quarters_for_the_halving_sae(tiny_model, tokens):
    x = site_rows(tiny_model, tokens).double()
    median = geometric_median(x.float())
    metrics = evaluate_sae(tiny_model, halving_sae(64, median), SITE, tokens).metrics
    # x - x_hat = (x - m) / 2 with m the geometric median: the SSE is a quarter of the variance about m
    assert metrics["explained_variance_gm"] == pytest.approx(0.75, abs=1e-4)
    about_mean = ((x - x.mean(0)) ** 2).sum()
    about_median = ((x - median.double()) ** 2).sum()
    assert metrics["explained_variance"] == pytest.approx(float(1 - 0.25 * about_median / about_mean), abs=1e-4)
    assert metrics["explained_variance_gm"] > metrics["explained_variance"]  # the median is not the variance minimiser


def test_dead_and_dense_fractions_match_latents_built_dead_dense_and_sparse(tiny_model, tokens):
    sae = halving_sae(64, torch.zeros(64))
    with torch.no_grad():
        sae.b_enc[:16] = -1e6  # 16 of 128 never fire
        sae.b_enc[16:40] = 1e6  # 24 always fire
    x = site_rows(tiny_model, tokens)
    density = (sae.encode(x) > 0).double().mean(0)
    result = evaluate_sae(tiny_model, sae, SITE, tokens, dense_threshold=0.6)
    assert result.metrics["dead_fraction"] == pytest.approx(float((density == 0).double().mean()))
    assert result.metrics["dense_fraction"] == pytest.approx(float((density > 0.6).double().mean()))
    assert result.metrics["dead_fraction"] >= 16 / 128 and result.metrics["dense_fraction"] >= 24 / 128
    np.testing.assert_allclose(result.latents.density.values, density.numpy())
    with pytest.raises(ValueError, match="dense_threshold=1.5"):
        evaluate_sae(tiny_model, sae, SITE, tokens, dense_threshold=1.5)


def test_transcoder_splice_equals_replacing_the_mlp_output_by_hand(tiny_model, tokens):
    layer = 1
    site_in, site_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    tc = build_sae(SkipTranscoderConfig(64, 96, d_out=64, k=8, seed=2))
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.1, generator=GEN(1))
        tc.b_dec.normal_(0, 0.1, generator=GEN(2))
    tc.eval()
    _, cache = tiny_model.run_with_cache(tokens, names_filter=site_in)
    with torch.no_grad():
        prediction = tc(cache[site_in].reshape(-1, 64)).reshape(cache[site_in].shape)
        spliced = tiny_model.run_with_hooks(tokens, fwd_hooks=[(site_out, lambda act, hook: prediction)])
        zeroed = tiny_model.run_with_hooks(tokens, fwd_hooks=[(site_out, lambda act, hook: torch.zeros_like(act))])
        clean = tiny_model(tokens)

    def ce(logits):
        lp = logits.log_softmax(-1)
        return float(-lp[:, :-1].gather(-1, tokens[:, 1:, None]).mean())

    metrics = evaluate_sae(tiny_model, tc, site_in, tokens, output_site=site_out).metrics
    assert metrics["ce_sae"] == pytest.approx(ce(spliced), rel=1e-5)
    assert metrics["ce_zero_ablation"] == pytest.approx(ce(zeroed), rel=1e-5)
    expected = (ce(zeroed) - ce(spliced)) / (ce(zeroed) - ce(clean))
    assert metrics["ce_loss_recovered"] == pytest.approx(expected, rel=1e-4)
    _, out_cache = tiny_model.run_with_cache(tokens, names_filter=site_out)
    y = out_cache[site_out].reshape(-1, 64).double()
    fvu = float(((prediction.reshape(-1, 64).double() - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-4)
    with pytest.raises(Exception, match="output_site"):
        evaluate_sae(tiny_model, tc, site_in, tokens)


# -- linear probes and sparse probing ------------------------------------------------------------


def test_logistic_probe_reaches_the_same_optimum_as_scipy():
    from scipy.optimize import minimize

    gen = GEN(3)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(200, generator=gen, dtype=torch.float64) > 0).long()
    probe = fit_logistic(x, y, 2, l2=1e-2)
    z = ((x - x.mean(0)) / x.std(0)).numpy()

    def objective(theta):
        w, b = theta[:10].reshape(2, 5), theta[10:]
        logits = z @ w.T + b
        logz = np.logaddexp(logits[:, 0], logits[:, 1])
        return float(np.mean(logz - logits[np.arange(200), y.numpy()]) + 1e-2 * (w**2).sum())

    theirs = minimize(objective, np.zeros(12), method="BFGS", options={"gtol": 1e-10})
    ours = np.concatenate([probe.weight.numpy().ravel(), probe.bias.numpy()])
    assert objective(ours) == pytest.approx(theirs.fun, abs=1e-8)


def test_sparse_probing_finds_a_planted_latent_and_not_shuffled_labels():
    gen = GEN(4)
    n = 2000
    label = torch.rand(n, generator=gen) < 0.4
    x = torch.randn(n, 16, generator=gen)  # the raw activation knows nothing of the label
    acts = torch.rand(n, 30, generator=gen).relu() * (torch.rand(n, 30, generator=gen) < 0.2)
    acts[:, 7] = label * (1 + torch.rand(n, generator=gen))  # latent 7 fires exactly on the label
    table = sparse_probing_from_rows(x, acts, {"planted": label}, ks=(1, 5), per_class=400)
    sae_k1 = table[(table.features == "sae") & (table.k == 1)].iloc[0]
    assert sae_k1.accuracy == 1.0 and sae_k1.latents == [7]
    raw_full = table[table.features == "raw_full"].iloc[0]
    assert abs(raw_full.accuracy - 0.5) < 3 * math.sqrt(0.25 / raw_full.n_test)  # nothing to find in x
    shuffled = label[torch.randperm(n, generator=GEN(5))]
    control = sparse_probing_from_rows(x, acts, {"shuffled": shuffled}, ks=(1,), per_class=400)
    acc = control[control.features == "sae"].accuracy.iloc[0]
    assert abs(acc - 0.5) < 3 * math.sqrt(0.25 / 400), acc
    metrics = probing_metrics(table)
    assert metrics["sparse_probing_sae_k1"] == 1.0 and metrics["sparse_probing_tasks"] == 1
    assert metrics["sparse_probing_raw_full_ci95"] == pytest.approx(
        1.96 * math.sqrt(raw_full.accuracy * (1 - raw_full.accuracy) / raw_full.n_test)
    )


def test_token_labels_follow_their_rules():
    labels = token_labels([" The", "the", "42", ",", " x1", "\n"])
    assert labels["word_start"].tolist() == [True, False, False, False, True, True]
    assert labels["capitalised"].tolist() == [True, False, False, False, False, False]
    assert labels["has_digit"].tolist() == [False, False, True, False, True, False]
    assert labels["punctuation"].tolist() == [False, False, False, True, False, False]


# -- absorption ----------------------------------------------------------------------------------

N_LETTERS, PER_LETTER = 4, 20


def absorbing_sae(absorbed: set[int]):
    """Rows x_t = e_L(t) + 2 u_t (letter direction plus a token's own direction). Latent L (one per letter) reads e_L and
    writes e_L, but is switched off on the absorbed tokens of letter 0 (its encoder subtracts their u_t); token latents
    read u_t and write u_t, except on absorbed tokens, where they write (e_0 + 2 u_t) / sqrt(5): they absorb letter 0."""
    n = N_LETTERS * PER_LETTER
    d = N_LETTERS + n
    eye = torch.eye(d)
    letters = torch.arange(n) // PER_LETTER
    x = eye[letters] + 2 * eye[N_LETTERS + torch.arange(n)]
    sae = build_sae(ReluConfig(d, N_LETTERS + n))
    with torch.no_grad():
        encoder, decoder = torch.zeros(N_LETTERS + n, d), torch.zeros(N_LETTERS + n, d)
        for letter in range(N_LETTERS):
            encoder[letter, letter] = 1
            decoder[letter, letter] = 1
        for t in range(n):
            encoder[N_LETTERS + t, N_LETTERS + t] = 1
            decoder[N_LETTERS + t, N_LETTERS + t] = 1
            if t in absorbed:
                encoder[0, N_LETTERS + t] = -1  # the main latent of letter 0 is silent on it
                decoder[N_LETTERS + t] = (eye[0] + 2 * eye[N_LETTERS + t]) / math.sqrt(5)
        sae.encoder.copy_(encoder)
        sae.W_dec.copy_(decoder)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval(), x, letters


def test_absorption_rate_equals_the_planted_share_of_absorbed_tokens():
    absorbed = set(range(0, PER_LETTER, 3))  # 7 of letter 0's 20 tokens
    sae, x, letters = absorbing_sae(absorbed)
    table, per_token = absorption_from_rows(sae, x, letters, seed=0)
    first = table.iloc[0]
    assert first.main_latents == [0]
    tested = per_token[per_token.letter == "a"]
    expected = sum(int(r) in absorbed for r in tested.row) / len(tested)
    assert 0 < expected < 1 and first.probe_correct == first.test_tokens  # the probe gets every token right
    assert first.absorption_rate == pytest.approx(expected)
    assert tested.absorbed.tolist() == [int(r) in absorbed for r in tested.row]
    assert (table.absorption_rate.iloc[1:] == 0).all()  # no other letter is absorbed
    metrics = absorption_metrics(table)
    assert metrics["absorption_rate"] == pytest.approx(expected / N_LETTERS)
    # absorbed tokens: all of the letter's projection comes from the token latent; the others: none of it
    assert tested.absorption_fraction.tolist() == pytest.approx(
        [float(int(r) in absorbed) for r in tested.row], abs=1e-9
    )


def test_absorption_is_zero_without_absorbing_latents_and_with_shuffled_letters():
    sae, x, letters = absorbing_sae(set())
    table, _ = absorption_from_rows(sae, x, letters)
    assert (table.absorption_rate == 0).all() and (table.absorption_fraction == 0).all()
    shuffled = letters[torch.randperm(len(letters), generator=GEN(6))]
    control, _ = absorption_from_rows(sae, x, shuffled)
    # with letters shuffled the probe has no letter direction to learn: it is right at chance (1/4) on held-out tokens
    accuracy = control.attrs["probe_test_accuracy"]
    assert accuracy < 0.25 + 3 * math.sqrt(0.25 * 0.75 / 32), accuracy


# -- the whole `interp sae train` -> `interp sae eval` path for a transcoder, and its page ----------


def test_transcoder_trained_at_two_sites_evaluates_from_its_saved_sites_and_the_page_shows_it(tiny_model, tmp_path):
    from dashboards import build_dashboard
    from interp.results import ResultsDir
    from sae.evaluate import evaluate_saved
    from sae.io import read_sae_config
    from sae.models import TranscoderConfig
    from sae.site_training import train_at_site
    from sae.train import TrainConfig

    site_in, site_out = "blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out"
    train_tokens = torch.randint(0, tiny_model.cfg.d_vocab, (32, 16), generator=GEN(7))
    held_out = torch.randint(0, tiny_model.cfg.d_vocab, (4, 16), generator=GEN(8))
    cfg = TranscoderConfig(64, 128, d_out=64, k=8)
    train_at_site(
        tiny_model,
        site_in,
        cfg,
        TrainConfig(steps=6, batch_size=128, warmup_steps=1),
        tmp_path,
        train_tokens=train_tokens,
        output_site=site_out,
        progress=False,
    )
    assert read_sae_config(tmp_path / "sae")["metadata"]["hook_name_out"] == site_out
    result = evaluate_saved(tmp_path, tiny_model, held_out)
    direct = evaluate_sae(tiny_model, result_sae(tmp_path), site_in, held_out, output_site=site_out).metrics
    assert result.metrics["ce_loss_recovered"] == pytest.approx(direct["ce_loss_recovered"], rel=1e-6)
    assert result.metrics["extras_skipped"].startswith("a transcoder")
    page = build_dashboard(ResultsDir.open(tmp_path)).read_text()
    assert "Reconstruction and downstream loss" in page and site_out in page and "Latent density" in page
    with pytest.raises(Exception, match="output_site"):
        train_at_site(
            tiny_model, site_in, cfg, TrainConfig(steps=2, batch_size=128), tmp_path / "x", train_tokens=train_tokens
        )


def result_sae(directory):
    from sae.io import load_sae

    return load_sae(directory / "sae")


@pytest.mark.slow  # ~60 s: the 135M model on the vocabulary's word tokens and 4k corpus tokens
def test_probing_and_absorption_on_the_bundled_model_write_metrics_tables_and_page_sections(model, tmp_path):
    from dashboards.sae_eval import evaluation_sections
    from interp.corpus import corpus_tokens
    from sae.evaluate import evaluate_saved
    from sae.io import save_sae
    from sae.models import TopKConfig

    site = "blocks.3.hook_resid_post"
    sae = build_sae(TopKConfig(576, 1152, k=32, seed=0)).eval()  # untrained: the pipeline, not the quality, is tested
    save_sae(sae, tmp_path / "sae", hook_name=site)
    tokens = corpus_tokens(model, 32, 128, skip_seqs=1000)
    metrics = evaluate_saved(tmp_path, model, tokens, probing_tokens=4096).metrics
    for key in ("sparse_probing_sae_k1", "sparse_probing_raw_full", "absorption_rate", "absorption_probe_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["sparse_probing_tasks"] >= 3 and metrics["absorption_letters"] >= 20
    assert metrics["absorption_probe_accuracy"] > 3 / metrics["absorption_letters"]  # the letter probe beats chance
    titles = [s.title for s in evaluation_sections(tmp_path / "eval")]
    assert titles[-2:] == ["Sparse probing", "Feature absorption (first-letter task)"]


def test_cli_refuses_bad_new_options_in_one_line_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from experiments.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["sae", "eval", str(tmp_path), "--dense-threshold", "1.5"])
    assert bad.exit_code == 2 and "--dense-threshold 1.5" in bad.output, bad.output
    bad = runner.invoke(app, ["sae", "train", "--out", str(tmp_path / "t"), "--architecture", "transcoder"])
    assert bad.exit_code == 2 and "--output-site None: a transcoder needs it" in bad.output, bad.output
    bad = runner.invoke(app, ["sae", "latents", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "not a folder" in bad.output, bad.output


@needs_chromium
def test_evaluation_sections_render_in_chromium_without_errors(tiny_model, tmp_path):
    """The sae_train page with every evaluation section (tables written as `interp sae eval` writes them)."""
    import json as _json

    import pandas as pd

    from dashboards import build_dashboard
    from interp.results import ResultsDir
    from sae.evaluate import density_histogram
    from sae.train import SaeTrainRun
    from tests.test_dashboards import RENDERED, DevToolsPage

    run = ResultsDir.create(tmp_path / "run", SaeTrainRun(site=SITE, sae={}, train={}, source="model"))
    eval_dir = run.path / "eval"
    eval_dir.mkdir()
    metrics = dict(l0=8.0, fvu=0.2, explained_variance=0.8, explained_variance_gm=0.81, dead_fraction=0.1)
    metrics |= dict(dense_fraction=0.05, dense_threshold=0.1, absorption_rate=0.3, sparse_probing_sae_k1=0.7)
    (eval_dir / "metrics.json").write_text(_json.dumps(metrics))
    latents = pd.DataFrame({"latent": range(50), "firing_count": range(50), "density": [i / 100 for i in range(50)]})
    density_histogram(latents).to_parquet(eval_dir / "density_histogram.parquet")
    gen = GEN(9)
    x, acts = torch.randn(400, 8, generator=gen), torch.rand(400, 12, generator=gen)
    labels = {"a": torch.rand(400, generator=gen) < 0.5, "b": acts[:, 3] > 0.5}
    sparse_probing_from_rows(x, acts, labels, ks=(1, 5), per_class=100).to_parquet(eval_dir / "sparse_probing.parquet")
    sae, rows, letters = absorbing_sae({0, 3})
    absorption_from_rows(sae, rows, letters)[0].to_parquet(eval_dir / "absorption_letters.parquet")
    page = build_dashboard(run)
    browser = DevToolsPage(tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable")
        browser.send("Page.navigate", url=page.resolve().as_uri())
        browser.wait_for_event("Page.loadEventFired", timeout=20)
        deadline = time.monotonic() + 10
        while (state := browser.evaluate(RENDERED))["rendered"] < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        text = browser.evaluate("document.body.innerText")
        browser.evaluate("0")
    finally:
        browser.close()
    assert state["plots"] >= 3 and state["rendered"] == state["plots"], state
    for title in ("Latent density", "Sparse probing", "Feature absorption (first-letter task)"):
        assert title in text
    assert browser.errors() == []
    assert all(url.startswith(("file:", "data:")) for url in browser.requested_urls()), browser.requested_urls()
