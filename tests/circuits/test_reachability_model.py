"""Continuous-thought forward on the KV cache vs. full recomputation; greedy chains; training."""

import copy

import pytest
import torch

from circuits.reachability.graphs import GraphConfig, make_problems
from circuits.reachability.model import ModelConfig, build_model, continuous_forward, greedy_chain
from circuits.reachability.tokens import SequenceLayout
from circuits.reachability.train import TrainConfig, accuracy, sequence_loss, stage_at, train, trainable_parameters
from interp.errors import InterpError
from interp.hooks import cache_sites
from interp.sites import Site

GRAPH = GraphConfig(n_node_ids=16, n_levels=3, max_width=2, n_edges=12)
LAYOUT = SequenceLayout(GRAPH, 3)


@pytest.fixture(scope="module")
def reach_model():
    torch.manual_seed(0)
    model = build_model(LAYOUT, ModelConfig(d_model=32, n_heads=4, d_mlp=64), seed=0)
    with torch.no_grad():  # larger-than-init weights so thoughts differ visibly from token embeddings
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def tokens():
    return LAYOUT.encode_batch(make_problems(GRAPH, 6, seed=3), n_latent=3)


def full_recompute(model, tokens, first, n_latent):
    """Coconut's way: one full TL forward per thought, the final hidden state (unembed input) fed back."""
    embeds = model.W_E[tokens]
    for j in range(n_latent):
        saved = {}
        with model.hooks(fwd_hooks=[("unembed.hook_in", lambda act, hook: saved.update(hidden=act))]):  # not detached, unlike run_with_cache
            model(embeds + model.W_pos[: tokens.shape[1]], start_at_layer=0)
        embeds = torch.cat([embeds[:, : first + j], saved["hidden"][:, first + j - 1 : first + j], embeds[:, first + j + 1 :]], 1)
    return model(embeds + model.W_pos[: tokens.shape[1]], start_at_layer=0), embeds[:, first : first + n_latent]


def test_cached_thoughts_equal_full_recomputation(reach_model, tokens):
    model64 = copy.deepcopy(reach_model).to(torch.float64)  # float64: agreement to rounding, not to float32 noise
    model64.cfg.dtype = torch.float64
    run = continuous_forward(model64, tokens, LAYOUT.chain.start, 3)
    logits, thoughts = full_recompute(model64, tokens, LAYOUT.chain.start, 3)
    torch.testing.assert_close(run.thoughts, thoughts, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(run.logits, logits, atol=1e-10, rtol=1e-10)
    assert (run.thoughts[:, 0] - run.thoughts[:, 1]).abs().max() > 1e-2  # thoughts really change
    # gradients through the cache equal gradients through the recomputation
    grads = []
    for forward in (lambda: continuous_forward(model64, tokens, LAYOUT.chain.start, 3).logits, lambda: full_recompute(model64, tokens, LAYOUT.chain.start, 3)[0]):
        model64.zero_grad()
        forward()[:, LAYOUT.answer_marker].logsumexp(-1).sum().backward()
        grads.append(model64.blocks[0].attn.W_Q.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=1e-9)


def test_no_latents_is_the_plain_forward_and_hooks_fire(reach_model, tokens):
    plain = LAYOUT.encode_batch(make_problems(GRAPH, 6, seed=3), n_latent=0)
    with torch.no_grad():
        torch.testing.assert_close(continuous_forward(reach_model, plain, LAYOUT.chain.start, 0).logits, reach_model(plain), atol=1e-5, rtol=1e-5)
    seen = []
    reach_model.add_hook("hook_embed", lambda act, hook: seen.append(act.shape[1]))
    try:
        with torch.no_grad():
            run = continuous_forward(reach_model, tokens, LAYOUT.chain.start, 3)
    finally:
        reach_model.reset_hooks()
    assert seen == [LAYOUT.chain.start, 1, 1, 1, LAYOUT.seq_len - LAYOUT.chain.start - 3]
    site = Site(1, "pattern", head=2)
    cached = cache_sites(reach_model, plain, [site])[site]
    _, reference = reach_model.run_with_cache(plain)
    torch.testing.assert_close(cached, reference[site.hook_name][:, 2])
    assert run.residual.shape == (6, LAYOUT.seq_len, 32)


def test_tied_embeddings_unembed_with_the_input_embedding(tokens):
    tied = build_model(LAYOUT, ModelConfig(d_model=32, n_heads=4, d_mlp=64), seed=1)
    parameters = trainable_parameters(tied)
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    tied(tokens)[:, -2].logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in parameters) and len(parameters) == len(list(tied.parameters())) - 1
    optimizer.step()  # W_E moved; the logits must still use it
    saved = {}
    with torch.no_grad(), tied.hooks(fwd_hooks=[("unembed.hook_in", lambda act, hook: saved.update(hidden=act))]):
        logits = tied(tokens)
    torch.testing.assert_close(logits, saved["hidden"] @ tied.embed.W_E.T + tied.unembed.b_U)
    untied = build_model(LAYOUT, ModelConfig(d_model=32, n_heads=4, d_mlp=64, tied_embeddings=False), seed=1)
    assert not torch.equal(untied.W_U, untied.W_E.T) and len(trainable_parameters(untied)) == len(list(untied.parameters()))


def test_greedy_chain_matches_a_slow_loop(reach_model):
    tokens = LAYOUT.encode_batch(make_problems(GRAPH, 5, seed=4))
    allowed = torch.arange(GRAPH.n_node_ids)
    fast = greedy_chain(reach_model, tokens, LAYOUT.chain.start, 3, allowed)
    slow = tokens.clone()
    with torch.no_grad():
        for pos in LAYOUT.chain:
            slow[:, pos] = reach_model(slow[:, :pos])[:, -1, : GRAPH.n_node_ids].argmax(-1)
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:, LAYOUT.answer_marker:], tokens[:, LAYOUT.answer_marker:])


def test_curriculum_schedule():
    config = TrainConfig(steps=400, earlier_stage_prob=0.0)
    g = torch.Generator().manual_seed(0)
    assert [stage_at(s, config, 4, g) for s in (0, 99, 100, 250, 399)] == [0, 0, 1, 2, 3]
    mixed = TrainConfig(steps=400, earlier_stage_prob=0.5)
    stages = [stage_at(399, mixed, 4, g) for _ in range(200)]
    assert set(stages) == {0, 1, 2, 3} and 70 < stages.count(3) < 130


def test_sequence_loss_scores_the_chain_after_the_latents(reach_model):
    problems = make_problems(GRAPH, 4, seed=5)
    for n_latent in (0, 2):
        tokens = LAYOUT.encode_batch(problems, n_latent)
        logits = continuous_forward(reach_model, tokens, LAYOUT.chain.start, n_latent).logits
        targets = [*LAYOUT.chain[n_latent:], LAYOUT.answer_marker + 1]
        by_hand = torch.stack([-logits[b, p - 1].log_softmax(-1)[tokens[b, p]] for b in range(4) for p in targets]).mean()
        torch.testing.assert_close(sequence_loss(reach_model, tokens, LAYOUT, n_latent), by_hand)


def test_training_lowers_the_loss_for_every_mode():
    problems = make_problems(GRAPH, 200, seed=6)
    for mode in ("continuous", "discrete_cot", "no_cot"):
        model, curve = train(mode, problems, LAYOUT, ModelConfig(d_model=32, n_heads=2, d_mlp=64), TrainConfig(steps=24, batch_size=16, warmup_steps=2), progress=False)
        assert curve["loss"].iloc[-4:].mean() < curve["loss"].iloc[:4].mean()
        assert set(curve["stage"]) <= set(range(4)) and (mode != "continuous" or curve["stage"].iloc[-1] == 3 or curve["stage"].max() == 3)
        assert 0.0 <= accuracy(model, mode, problems[:20], LAYOUT) <= 1.0


def test_bad_input_is_named(reach_model, tokens, tiny_model):
    with pytest.raises(InterpError, match="learned absolute positions"):
        continuous_forward(tiny_model, tokens, 3, 1)
    with pytest.raises(InterpError, match="first_latent=0"):
        continuous_forward(reach_model, tokens, 0, 1)
    with pytest.raises(InterpError, match="n_latent=99"):
        continuous_forward(reach_model, tokens, LAYOUT.chain.start, 99)
    with pytest.raises(InterpError, match="mode='cot'"):
        accuracy(reach_model, "cot", [], LAYOUT)
    with pytest.raises(InterpError, match="problems is empty"):
        train("no_cot", [], LAYOUT, ModelConfig(), TrainConfig())


def test_training_is_deterministic_for_a_seed():
    problems = make_problems(GRAPH, 100, seed=7)
    config = TrainConfig(steps=8, batch_size=8, warmup_steps=2, seed=3)
    runs = [train("continuous", problems, LAYOUT, ModelConfig(d_model=32, n_heads=2, d_mlp=64), config, progress=False) for _ in range(2)]
    assert runs[0][1].equals(runs[1][1])
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(a, b)
