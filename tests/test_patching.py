"""The batched engine against transformer_lens.patching (the reference) and hand-written loops."""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from interp import metrics
from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError, UnknownSiteError
from interp.patching import PatchingTask, patch_heads, patch_layer_positions, patch_neurons, patch_sites
from interp.sites import Site

CLEAN = ["The capital of France is", "The capital of Spain is"]
CORRUPTED = ["The capital of Spain is", "The capital of France is"]
ANSWERS, WRONG = [" Paris", " Madrid"], [" Madrid", " Paris"]


@pytest.fixture(scope="module")
def capitals(model):
    return PatchingTask(model, CLEAN, CORRUPTED, ANSWERS, WRONG)


@pytest.fixture(scope="module")
def tiny_task(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 2, 6), generator=torch.Generator().manual_seed(0))
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7], wrong_answers=[9, 1])


def tl_reference(task, setter, activation, index_rows, columns, metric=None):
    """transformer_lens.patching.generic_activation_patch over the given index rows (flattened)."""
    metric = metric or (lambda logits: metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean())
    _, clean_cache = task.model.run_with_cache(task.clean_tokens)
    index_df = pd.DataFrame(index_rows, columns=columns)
    return tl_patching.generic_activation_patch(
        task.model, task.corrupted_tokens, clean_cache, metric, setter, activation, index_df=index_df
    ).numpy()


def max_diff(ours: pd.DataFrame, reference) -> float:
    return float(abs(ours["metric"].to_numpy() - reference).max())


# Against TransformerLens on the bundled SmolLM2 (a subset of layers to stay fast)


def test_resid_pre_layer_position_matches_transformer_lens(capitals):
    layers, positions = [0], range(capitals.seq_len)
    ours = patch_layer_positions(capitals, layers=layers)
    rows = [(layer, p) for layer in layers for p in positions]
    assert (
        max_diff(ours, tl_reference(capitals, tl_patching.layer_pos_patch_setter, "resid_pre", rows, ["layer", "pos"]))
        < 1e-4
    )
    assert list(zip(ours.layer, ours.position)) == rows
    # Patching the country token at layer 0 makes the corrupted run the clean one.
    subject = ours[(ours.layer == 0) & (ours.position == 3)].restoration.item()
    assert subject == pytest.approx(1.0, abs=1e-4)


def test_heads_all_positions_match_transformer_lens(capitals):
    ours = patch_heads(capitals, layers=[17], heads=[0, 4, 8])
    rows = [(17, h) for h in (0, 4, 8)]
    assert (
        max_diff(ours, tl_reference(capitals, tl_patching.layer_head_vector_patch_setter, "z", rows, ["layer", "head"]))
        < 1e-4
    )
    assert (ours.component == "z").all() and list(ours["head"]) == [0, 4, 8]


def test_heads_by_position_match_transformer_lens_also_in_small_batches(capitals):
    # A tiny memory budget makes one variant per batch, so late positions reuse the cached prefix.
    ours = patch_heads(capitals, layers=[10], heads=[8], positions=[1, 4], by_position=True, memory_budget=1)
    rows = [(10, p, 8) for p in (1, 4)]
    assert (
        max_diff(
            ours,
            tl_reference(capitals, tl_patching.layer_pos_head_vector_patch_setter, "z", rows, ["layer", "pos", "head"]),
        )
        < 1e-4
    )


# Against TransformerLens's full sweeps on the tiny GQA model


@pytest.mark.parametrize(
    "component, tl_function",
    [
        ("resid_pre", tl_patching.get_act_patch_resid_pre),
        ("resid_mid", tl_patching.get_act_patch_resid_mid),
        ("attn_out", tl_patching.get_act_patch_attn_out),
        ("mlp_out", tl_patching.get_act_patch_mlp_out),
    ],
)
@pytest.mark.parametrize("memory_budget", [1 << 30, 1])
def test_layer_position_sweeps_match_transformer_lens(tiny_task, component, tl_function, memory_budget):
    _, clean_cache = tiny_task.model.run_with_cache(tiny_task.clean_tokens)
    metric = lambda logits: metrics.logit_diff(logits, tiny_task.answer_tokens, tiny_task.wrong_tokens).mean()  # noqa: E731
    reference = tl_function(tiny_task.model, tiny_task.corrupted_tokens, clean_cache, metric)  # [layer, pos]
    ours = patch_layer_positions(tiny_task, component, memory_budget=memory_budget)
    assert max_diff(ours, reference.flatten().numpy()) < 1e-4


def test_head_sweeps_match_transformer_lens(tiny_task):
    _, clean_cache = tiny_task.model.run_with_cache(tiny_task.clean_tokens)
    metric = lambda logits: metrics.logit_diff(logits, tiny_task.answer_tokens, tiny_task.wrong_tokens).mean()  # noqa: E731
    all_pos = tl_patching.get_act_patch_attn_head_out_all_pos(
        tiny_task.model, tiny_task.corrupted_tokens, clean_cache, metric
    )  # [layer, head]
    by_pos = tl_patching.get_act_patch_attn_head_out_by_pos(
        tiny_task.model, tiny_task.corrupted_tokens, clean_cache, metric
    )  # [layer, pos, head]
    assert all_pos.shape == (3, 4)  # z is per query head under GQA (4 query heads, 2 kv heads)
    assert max_diff(patch_heads(tiny_task), all_pos.flatten().numpy()) < 1e-4
    assert max_diff(patch_heads(tiny_task, by_position=True), by_pos.flatten().numpy()) < 1e-4
    values = tl_patching.get_act_patch_attn_head_v_all_pos(
        tiny_task.model, tiny_task.corrupted_tokens, clean_cache, metric
    )  # kv heads
    assert max_diff(patch_heads(tiny_task, component="v"), values.flatten().numpy()) < 1e-4


def test_kl_and_callable_metrics_match_transformer_lens(tiny_model, tiny_task):
    kl_task = PatchingTask(
        tiny_model, tiny_task.clean_tokens, tiny_task.corrupted_tokens, answers=[3, 7], metric="kl_div"
    )
    _, clean_cache = tiny_model.run_with_cache(tiny_task.clean_tokens)
    kl = lambda logits: metrics.kl_div(logits, kl_task.clean_logits).mean()  # noqa: E731
    reference = tl_patching.get_act_patch_resid_pre(tiny_model, tiny_task.corrupted_tokens, clean_cache, kl)
    ours = patch_layer_positions(kl_task)
    assert max_diff(ours, reference.flatten().numpy()) < 1e-4
    assert kl_task.clean_metric == pytest.approx(0.0, abs=1e-6) and ours.attrs["metric"] == "kl_div"
    # A TransformerLens-style metric function reading logits[:, -1] gives the named metric's numbers.
    tl_style = lambda logits: (logits[:, -1, 3] - logits[:, -1, 9]).mean()  # noqa: E731
    custom = PatchingTask(
        tiny_model,
        tiny_task.clean_tokens,
        tiny_task.corrupted_tokens,
        answers=[3, 3],
        wrong_answers=[9, 9],
        metric=tl_style,
    )
    named = PatchingTask(
        tiny_model, tiny_task.clean_tokens, tiny_task.corrupted_tokens, answers=[3, 3], wrong_answers=[9, 9]
    )
    assert max_diff(patch_heads(custom), patch_heads(named)["metric"].to_numpy()) < 1e-5


# Neurons against a hand-written loop


def test_neuron_sweep_matches_a_slow_loop(tiny_model, tiny_task):
    layers, neurons = [0, 2], [0, 5, 127]
    ours = patch_neurons(tiny_task, layers=layers, neurons=neurons, memory_budget=1, progress=True)
    _, clean_cache = tiny_model.run_with_cache(tiny_task.clean_tokens)
    expected = []
    for layer in layers:
        for n in neurons:

            def hook(act, hook, n=n, layer=layer):
                act[:, :, n] = clean_cache[f"blocks.{layer}.mlp.hook_post"][:, :, n]
                return act

            logits = tiny_model.run_with_hooks(
                tiny_task.corrupted_tokens, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)]
            )
            expected.append(float((logits[[0, 1], -1, [3, 7]] - logits[[0, 1], -1, [9, 1]]).mean().detach()))
    assert max_diff(ours, torch.tensor(expected).numpy()) < 1e-4
    assert list(zip(ours.layer, ours.neuron)) == [(layer, n) for layer in layers for n in neurons]
    restored = (ours.metric - tiny_task.corrupted_metric) / (tiny_task.clean_metric - tiny_task.corrupted_metric)
    assert max(abs(restored - ours.restoration)) < 1e-9


# align=True: left padding, checked against each prompt run alone, unpadded


def test_align_left_pads_and_matches_unpadded_runs(model):
    clean = ["The capital of France is", "The capital city of Spain is"]
    corrupted = ["The capital of Italy is", "The capital of Japan is"]
    task = PatchingTask(model, clean, corrupted, [" Paris", " Madrid"], [" Rome", " Tokyo"], align=True)
    assert task.seq_len == 6 and task.corrupted_mask[:, 0].tolist() == [0, 0]
    ours = patch_layer_positions(task, layers=[5], positions=[-1])
    per_prompt = []
    for c, x, a, w in zip(clean, corrupted, task.answer_tokens, task.wrong_tokens):
        _, clean_cache = model.run_with_cache(c, prepend_bos=False)

        def hook(act, hook):
            act[:, -1] = clean_cache[hook.name][:, -1]
            return act

        logits = model.run_with_hooks(x, prepend_bos=False, fwd_hooks=[("blocks.5.hook_resid_pre", hook)])
        per_prompt.append(float((logits[0, -1, a] - logits[0, -1, w]).detach()))
    assert ours.metric.item() == pytest.approx(sum(per_prompt) / 2, abs=1e-4)
    assert list(ours.position) == [5]  # negative positions count from the end of the padded prompts


# Bad input: a clear error naming the argument and the fix


def test_different_token_lengths_error_unless_aligned(model):
    with pytest.raises(
        ShapeMismatchError, match=r"Pair 1: the clean prompt has 6 tokens but the corrupted prompt has 5.*align=True"
    ):
        PatchingTask(model, ["The capital of France is", "The capital city of Spain is"], CORRUPTED, ANSWERS, WRONG)


def test_bad_prompts_and_answers(model):
    with pytest.raises(InterpError, match="clean_prompts is empty"):
        PatchingTask(model, [], CORRUPTED, ANSWERS, WRONG)
    with pytest.raises(ShapeMismatchError, match="clean_prompts has 2 prompts but corrupted_prompts has 1"):
        PatchingTask(model, CLEAN, CORRUPTED[:1], ANSWERS, WRONG)
    with pytest.raises(
        InterpError, match=r"answers: ' Washington DC' is 2 tokens .* each answer must be a single token"
    ):
        PatchingTask(model, CLEAN, CORRUPTED, [" Paris", " Washington DC"], WRONG)
    with pytest.raises(ShapeMismatchError, match=r"wrong_answers: expected one answer per prompt pair \(2\), got 1"):
        PatchingTask(model, CLEAN, CORRUPTED, ANSWERS, WRONG[:1])
    with pytest.raises(InterpError, match="metric='logit_diff' needs wrong_answers"):
        PatchingTask(model, CLEAN, CORRUPTED, ANSWERS)
    with pytest.raises(InterpError, match="metric='logit_dif' is not a known metric. Did you mean: 'logit_diff'"):
        PatchingTask(model, CLEAN, CORRUPTED, ANSWERS, WRONG, metric="logit_dif")


def test_bad_sites_and_options(capitals):
    with pytest.raises(UnknownSiteError, match="Did you mean: 'resid_pre'"):
        patch_layer_positions(capitals, "resid_pr")
    with pytest.raises(UnknownSiteError, match="patch_layer_positions\\(component='z'\\) is not supported"):
        patch_layer_positions(capitals, "z")
    with pytest.raises(OutOfRangeError, match="layer=30 is out of range; .* has layers 0..29"):
        patch_layer_positions(capitals, layers=[30])
    with pytest.raises(OutOfRangeError, match="position=5 is out of range for prompts of 5 tokens"):
        patch_layer_positions(capitals, positions=[5])
    with pytest.raises(OutOfRangeError, match="head=9 is out of range; .* has 9 query heads"):
        patch_heads(capitals, heads=[9])
    with pytest.raises(OutOfRangeError, match="neuron=1536 is out of range"):
        patch_neurons(capitals, neurons=[1536])
    with pytest.raises(InterpError, match="layers is empty"):
        patch_heads(capitals, layers=[])
    with pytest.raises(InterpError, match="pass by_position=True too"):
        patch_heads(capitals, positions=[0])
    with pytest.raises(InterpError, match="memory_budget=0: must be a positive number of bytes"):
        patch_heads(capitals, memory_budget=0)
    with pytest.raises(InterpError, match="sites is empty"):
        patch_sites(capitals, [])
    with pytest.raises(UnknownSiteError, match="patch Site\\(0, 'resid_pre'\\) instead"):
        patch_sites(capitals, [Site(None, "embed")])
    with pytest.raises(UnknownSiteError, match="is not a hook of this model"):
        patch_sites(capitals, ["blocks.0.hook_resid_prex"])
