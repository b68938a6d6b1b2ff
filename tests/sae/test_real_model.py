"""A TopK SAE on the bundled SmolLM2-135M, trained on the fly from the default corpus, spliced back in."""

import pytest

from interp.corpus import token_batches
from interp.hooks import cache_sites
from sae.activations import TensorBatches
from sae.evaluate import evaluate_sae
from sae.models import TopKConfig
from sae.train import TrainConfig, train_sae

SITE = "blocks.3.hook_resid_post"


@pytest.fixture(scope="module")
def corpus_tokens(model):
    batches = token_batches(model, None, seq_len=64, batch_size=40)
    return next(batches)


@pytest.mark.slow  # ~100 s of CPU: the 135M model runs forward on 2.5k tokens
def test_topk_sae_on_the_bundled_model_reconstructs_and_recovers_ce(model, corpus_tokens):
    train, held_out = corpus_tokens[:32], corpus_tokens[32:]
    acts = cache_sites(model, train, [SITE])  # one forward of the real model; training reuses these rows
    batches = TensorBatches(next(iter(acts.values())).reshape(-1, 576), 256)
    result = train_sae(
        TopKConfig(576, 1152, k=32),
        batches,
        TrainConfig(steps=40, batch_size=256, lr=2e-3, warmup_steps=4),
        progress=False,
    )
    metrics = evaluate_sae(model, result.sae, SITE, held_out, batch_size=8).metrics
    assert result.curve.fvu.iloc[-1] < result.curve.fvu.iloc[0]
    assert metrics["l0"] <= 32 and metrics["fvu"] < 0.6, metrics
    assert metrics["ce_sae"] < metrics["ce_zero_ablation"] and metrics["ce_loss_recovered"] > 0.5, metrics
