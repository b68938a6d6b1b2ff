"""Continuous-thought forward on the KV cache vs. full recomputation; greedy chains; training."""

import copy
import random
from dataclasses import replace

import pytest
import torch

from circuits.reachability.graphs import GraphConfig, make_problems
from circuits.reachability.model import ModelConfig, build_model, continuous_forward, greedy_chain
from circuits.reachability.tokens import SequenceLayout
from circuits.reachability.train import (
    IGNORE,
    TrainConfig,
    accuracy,
    chain_answer,
    eval_tokens,
    predict_answers,
    random_shortest_path,
    sample_stage,
    scheduled_stage,
    sequence_loss,
    train,
    trainable_parameters,
    training_batch,
    training_sample,
)
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
        with model.hooks(
            fwd_hooks=[("unembed.hook_in", lambda act, hook: saved.update(hidden=act))]
        ):  # not detached, unlike run_with_cache
            model(embeds + model.W_pos[: tokens.shape[1]], start_at_layer=0)
        embeds = torch.cat(
            [embeds[:, : first + j], saved["hidden"][:, first + j - 1 : first + j], embeds[:, first + j + 1 :]], 1
        )
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
    for forward in (
        lambda: continuous_forward(model64, tokens, LAYOUT.chain.start, 3).logits,
        lambda: full_recompute(model64, tokens, LAYOUT.chain.start, 3)[0],
    ):
        model64.zero_grad()
        forward()[:, LAYOUT.answer_marker].logsumexp(-1).sum().backward()
        grads.append(model64.blocks[0].attn.W_Q.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=1e-9)


def test_no_latents_is_the_plain_forward_and_hooks_fire(reach_model, tokens):
    plain = LAYOUT.encode_batch(make_problems(GRAPH, 6, seed=3), n_latent=0)
    with torch.no_grad():
        torch.testing.assert_close(
            continuous_forward(reach_model, plain, LAYOUT.chain.start, 0).logits,
            reach_model(plain),
            atol=1e-5,
            rtol=1e-5,
        )
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
    assert not torch.equal(untied.W_U, untied.W_E.T) and len(trainable_parameters(untied)) == len(
        list(untied.parameters())
    )


def test_greedy_chain_matches_a_slow_loop(reach_model):
    tokens = LAYOUT.encode_batch(make_problems(GRAPH, 5, seed=4))
    allowed = torch.arange(GRAPH.n_node_ids)
    fast = greedy_chain(reach_model, tokens, LAYOUT.chain.start, 3, allowed)
    slow = tokens.clone()
    with torch.no_grad():
        for pos in LAYOUT.chain:
            slow[:, pos] = reach_model(slow[:, :pos])[:, -1, : GRAPH.n_node_ids].argmax(-1)
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:, LAYOUT.answer_marker :], tokens[:, LAYOUT.answer_marker :])


def test_per_sample_thought_counts_equal_separate_runs(reach_model):
    """A batch with 1, 2 and 3 thoughts per sample equals each sample run alone with its own count."""
    problems = make_problems(GRAPH, 3, seed=8)
    counts = torch.tensor([1, 3, 2])
    rows = [
        LAYOUT.padded(LAYOUT.head_tokens(p) + [LAYOUT.special("<latent>")] * int(k) + [LAYOUT.special("[A]")])
        for p, k in zip(problems, counts)
    ]
    tokens = torch.tensor(rows)
    model64 = copy.deepcopy(reach_model).to(torch.float64)  # float64: agreement to rounding
    model64.cfg.dtype = torch.float64
    with torch.no_grad():
        batched = continuous_forward(model64, tokens, LAYOUT.chain.start, counts)
        for b, k in enumerate(counts.tolist()):
            alone = continuous_forward(model64, tokens[b : b + 1], LAYOUT.chain.start, k)
            torch.testing.assert_close(batched.thoughts[b, :k], alone.thoughts[0], atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(batched.logits[b], alone.logits[0], atol=1e-10, rtol=1e-10)


def test_curriculum_schedule_and_stage_sampling():
    config = TrainConfig(steps=900, final_fraction=2 / 3)  # 300 pre-final steps: 100 per stage for D = 3
    assert [scheduled_stage(s, config, 3) for s in (0, 99, 100, 250, 299, 300, 899)] == [0, 0, 1, 2, 2, 3, 3]
    fixed = TrainConfig(steps=10, stage_steps=50)
    assert [scheduled_stage(s, fixed, 3) for s in (0, 49, 50, 149, 150, 5000)] == [0, 0, 1, 2, 3, 3]
    assert scheduled_stage(7, config, 0) == 0
    rng = random.Random(0)
    assert [sample_stage(3, 2, 0.0, rng) for _ in range(5)] == [2] * 5  # min(stage, path length)
    draws = [sample_stage(3, 3, 0.1, rng) for _ in range(4000)]
    # P(k = 3) = 0.9 + 0.1 / 4; every other k has 0.1 / 4 (the authors' randint(0, min(stage, len)))
    assert 0.91 < draws.count(3) / 4000 < 0.94 and all(0.015 < draws.count(k) / 4000 < 0.037 for k in (0, 1, 2))


def test_training_samples_follow_the_authors_formats():
    problems = make_problems(GRAPH, 60, seed=9)
    rng = random.Random(1)
    config = TrainConfig(uniform_prob=0.0)
    latent, marker, pad = (LAYOUT.special(t) for t in ("<latent>", "[A]", "<pad>"))
    for p in problems:
        for stage in range(4):
            tokens, labels, k = training_sample("continuous", p, LAYOUT, stage, config, rng)
            assert k == min(stage, p.n_hops) and len(tokens) == LAYOUT.seq_len
            chain = tokens[LAYOUT.chain.start :]
            assert chain[:k] == [latent] * k
            supervised = [i for i, y in enumerate(labels) if y != IGNORE]
            assert len(supervised) == 1 and labels[supervised[0]] == tokens[supervised[0]]
            if k < p.n_hops:  # one node at distance k + 1 on a shortest path, right after the thoughts
                assert supervised == [LAYOUT.chain.start + k] and p.distance[tokens[supervised[0]]] == k + 1
                assert tokens[supervised[0]] in p.on_shortest_paths(k + 1)
            else:  # [A] after d thoughts, the answer supervised
                assert (
                    chain[k] == marker
                    and supervised == [LAYOUT.chain.start + k + 1]
                    and tokens[supervised[0]] == p.answer
                )
            assert set(tokens[supervised[0] + 1 :]) <= {pad}
            # edges reshuffled, but the same edge set
            head = tokens[: LAYOUT.chain.start]
            assert sorted(zip(head[1 : 3 * GRAPH.n_edges : 3], head[2 : 3 * GRAPH.n_edges : 3])) == sorted(p.edges)
        tokens, labels, _ = training_sample("discrete_cot", p, LAYOUT, 0, config, rng)
        path = tokens[LAYOUT.chain.start - 1 : LAYOUT.chain.start + p.n_hops]
        assert path[0] == p.root and path[-1] == p.answer and all(e in p.edges for e in zip(path, path[1:]))
        assert tokens[LAYOUT.chain.start + p.n_hops : LAYOUT.chain.start + p.n_hops + 2] == [marker, p.answer]
        assert [i for i, y in enumerate(labels) if y != IGNORE] == list(
            range(LAYOUT.chain.start, LAYOUT.chain.start + p.n_hops + 2)
        )
        tokens, labels, _ = training_sample("no_cot", p, LAYOUT, 0, config, rng)
        assert (
            len(tokens) == LAYOUT.chain.start + 2
            and tokens[-2:] == [marker, p.answer]
            and labels[-2:] == [marker, p.answer]
        )
    # random shortest paths cover every shortest path of a branching problem
    branching = next(
        p for p in make_problems(GraphConfig(n_node_ids=16, n_edges=16), 100, seed=2) if len(p.on_shortest_paths(1)) > 1
    )
    assert {tuple(random_shortest_path(branching, rng))[1] for _ in range(200)} == set(branching.on_shortest_paths(1))


def test_sequence_loss_is_the_mean_over_supervised_tokens(reach_model):
    problems = make_problems(GRAPH, 4, seed=5)
    tokens, labels, counts = training_batch(
        "continuous", problems, LAYOUT, 1, TrainConfig(uniform_prob=0.0), random.Random(0)
    )
    logits = continuous_forward(reach_model, tokens, LAYOUT.chain.start, counts).logits
    by_hand = torch.stack(
        [
            -logits[b, q - 1].log_softmax(-1)[labels[b, q]]
            for b in range(4)
            for q in range(LAYOUT.seq_len)
            if labels[b, q] != IGNORE
        ]
    ).mean()
    torch.testing.assert_close(sequence_loss(reach_model, tokens, labels, LAYOUT, counts), by_hand)


def test_evaluation_reads_the_token_after_the_marker(reach_model):
    problems = make_problems(GRAPH, 5, seed=10)
    tokens, counts = eval_tokens("continuous", problems, LAYOUT)
    assert counts.tolist() == [p.n_hops for p in problems]
    with torch.no_grad():
        logits = continuous_forward(reach_model, tokens, LAYOUT.chain.start, counts).logits
    expected = torch.stack([logits[b, LAYOUT.chain.start + p.n_hops].argmax() for b, p in enumerate(problems)])
    assert tokens[0, LAYOUT.chain.start + problems[0].n_hops] == LAYOUT.special("[A]")
    assert torch.equal(predict_answers(reach_model, "continuous", problems, LAYOUT), expected)
    marker = LAYOUT.special("[A]")
    generated = torch.full((3, LAYOUT.seq_len), 0)
    generated[0, LAYOUT.chain.start + 1], generated[0, LAYOUT.chain.start + 2] = marker, 7
    generated[1, LAYOUT.chain.start], generated[1, LAYOUT.chain.start + 1] = marker, 5
    assert chain_answer(generated, LAYOUT).tolist() == [7, 5, -1]


def test_training_lowers_the_loss_for_every_mode():
    problems = make_problems(GRAPH, 200, seed=6)
    for mode in ("continuous", "discrete_cot", "no_cot"):
        model, curve, acc = train(
            mode,
            problems,
            LAYOUT,
            ModelConfig(d_model=32, n_heads=2, d_mlp=64),
            TrainConfig(steps=24, batch_size=16, warmup_steps=2, eval_every=12),
            progress=False,
            eval_problems=problems[:20],
        )
        assert curve["loss"].iloc[-4:].mean() < curve["loss"].iloc[:4].mean()
        assert set(curve["stage"]) <= set(range(4)) and (mode != "continuous" or curve["stage"].iloc[-1] == 3)
        assert acc["step"].tolist() == [0, 12, 24] and acc["accuracy"].iloc[-1] == pytest.approx(
            accuracy(model, mode, problems[:20], LAYOUT)
        )


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
    runs = [
        train("continuous", problems, LAYOUT, ModelConfig(d_model=32, n_heads=2, d_mlp=64), config, progress=False)
        for _ in range(2)
    ]
    assert runs[0][1].equals(runs[1][1])
    for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(a, b)


def test_resuming_from_a_checkpoint_equals_one_straight_run(tmp_path):
    problems = make_problems(GRAPH, 100, seed=11)
    model_config = ModelConfig(d_model=32, n_heads=2, d_mlp=64)
    config = TrainConfig(steps=8, batch_size=8, warmup_steps=2, seed=4, stage_steps=2, eval_every=4)
    straight, straight_curve, straight_acc = train(
        "continuous", problems, LAYOUT, model_config, config, progress=False, eval_problems=problems[:10]
    )
    path = tmp_path / "continuous.pt"
    train(
        "continuous",
        problems,
        LAYOUT,
        model_config,
        replace(config, steps=4),
        progress=False,
        eval_problems=problems[:10],
        checkpoint=path,
    )
    resumed, resumed_curve, resumed_acc = train(
        "continuous",
        problems,
        LAYOUT,
        model_config,
        config,
        progress=False,
        eval_problems=problems[:10],
        checkpoint=path,
    )
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert straight_curve["loss"].round(5).tolist() == resumed_curve["loss"].round(5).tolist()
    assert resumed_acc["step"].tolist() == [0, 4, 8] and resumed_curve.attrs["steps_trained"] == 8
    # a finished checkpoint trains nothing; another setup is refused by name
    again = train("continuous", problems, LAYOUT, model_config, config, progress=False, checkpoint=path)[0]
    assert all(torch.equal(a, b) for a, b in zip(resumed.parameters(), again.parameters()))
    with pytest.raises(InterpError, match="written by another setup"):
        train(
            "continuous",
            problems,
            LAYOUT,
            ModelConfig(d_model=64, n_heads=2, d_mlp=64),
            config,
            progress=False,
            checkpoint=path,
        )
