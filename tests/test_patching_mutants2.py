"""More checks of interp/patching aimed at the mutants that survived tests/test_patching_mutants.py (issue 22).

Each number is compared with an independent computation: TransformerLens's own forward with `run_with_hooks`, a
hand-written metric (softmax, argmax), a closed-form FLOP count, or the exact strings of the messages and columns.
The tiny models here cover what the tiny GQA model cannot: shortformer positions, standard positions with plain
multi-head attention, a logit soft cap, bfloat16 weights and attention-only blocks.
"""

import csv
import functools

import numpy as np
import pytest
import torch
from transformer_lens.components import Unembed

from interp.errors import InterpError, ShapeMismatchError, UnknownSiteError
from interp.interventions import Ablation
from interp.models import load_model
from interp.patching import PatchingTask, patch_heads, patch_layer_positions, patch_neurons, patch_sites
from interp.patching import engine
from interp.patching.ablate import ablated_last_logits
from interp.patching.cost import BlockFlops, sweep_flops, variant_flops
from interp.patching.pairs import builtin_pairs, check_pair, read_pairs
from interp.patching.sweeps import head_sites, layer_position_sites
from interp.patching.task import last_position_logits
from interp.sites import Site
from tests.conftest import TINY_GQA
from tests.test_engine_batches import budget_for
from tests.test_patching_mutants import prompts, worded_model

SMALL = dict(n_layers=3, d_model=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=60, n_ctx=16, act_fn="gelu")
SHORTFORMER = dict(SMALL, normalization_type="LN", positional_embedding_type="shortformer")
STANDARD_MHA = dict(SMALL, normalization_type="LN", positional_embedding_type="standard")


def random_tokens(model, *shape, seed):
    return torch.randint(0, model.cfg.d_vocab, shape, generator=torch.Generator().manual_seed(seed))


def tl_patched(model, clean, corrupted, site: Site, answers, wrong, fn=None) -> float:
    """TransformerLens's own patched run: the clean activation written into `site`'s slice of the corrupted run; the
    mean over prompts of fn(last logits) (default the logit difference)."""
    _, cache = model.run_with_cache(clean)
    index = site.index()

    def hook(act, hook):
        act[index] = cache[site.hook_name][index]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(site.hook_name, hook)])[:, -1]
    if fn is None:
        return float((logits.gather(1, answers[:, None]) - logits.gather(1, wrong[:, None])).mean())
    return float(fn(logits).float().mean())


# --- pairs -------------------------------------------------------------------------------------------------------


def test_builtin_pairs_by_hand():
    three = builtin_pairs(3)
    assert three == (
        {"clean": "The capital of France is", "corrupted": "The capital of Spain is", "answer": " Paris", "wrong": " Madrid"},
        {"clean": "The capital of Spain is", "corrupted": "The capital of Italy is", "answer": " Madrid", "wrong": " Rome"},
        {"clean": "The capital of Italy is", "corrupted": "The capital of France is", "answer": " Rome", "wrong": " Paris"},
    )  # fmt: skip
    every = builtin_pairs()
    assert len(every) == 16 and every[-1]["clean"] == "The capital of Kenya is" and every[-1]["wrong"] == " Paris"


def test_check_pair_token_ids_and_the_exact_messages():
    row = {"clean": "a", "corrupted": "b", "answer": 5, "wrong": 0}
    assert check_pair(row, "f:1") is row  # non-negative int token ids are answers
    assert check_pair(dict(row, answer=" x", wrong=7), "f:1")["wrong"] == 7
    for key, value, message in (
        ("answer", None, "f:1: 'answer' is null; it must be a string (or a token id)."),
        ("answer", True, "f:1: 'answer' is bool; it must be a string (or a token id)."),
        ("answer", -1, "f:1: 'answer' is int; it must be a string (or a token id)."),
        ("wrong", 2.0, "f:1: 'wrong' is float; it must be a string (or a token id)."),
        ("clean", 3, "f:1: 'clean' is int; it must be a string."),
        ("corrupted", None, "f:1: 'corrupted' is null; it must be a string."),
    ):
        with pytest.raises(InterpError) as error:
            check_pair(dict(row, **{key: value}), "f:1")
        assert str(error.value) == message


def test_read_pairs_missing_file_and_csv_line_breaks(tmp_path):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(InterpError) as error:
        read_pairs(missing)
    assert str(error.value) == (
        f"pairs: {missing} does not exist; give a .jsonl or .csv file with fields clean, corrupted, answer, wrong."
    )
    # a Windows file whose first prompt holds a line break inside quotes: the field keeps it as written
    path = tmp_path / "pairs.csv"
    path.write_bytes(b'clean,corrupted,answer,wrong\r\n"A\r\nB is",C is, x, y\r\n"D\ris",E is, z, w\r\n')
    with open(path, newline="", encoding="utf-8") as handle:
        expected = tuple(dict(row) for row in csv.DictReader(handle))
    assert expected[0]["clean"] == "A\r\nB is" and expected[1]["clean"] == "D\ris"
    assert read_pairs(path) == expected
    # old Mac line ends (a lone carriage return) end a row as well
    path.write_bytes(b"clean,corrupted,answer,wrong\rA is,C is, x, y\rD is,E is, z, w\r")
    assert read_pairs(path) == (
        {"clean": "A is", "corrupted": "C is", "answer": " x", "wrong": " y"},
        {"clean": "D is", "corrupted": "E is", "answer": " z", "wrong": " w"},
    )


@pytest.fixture(scope="module")
def worded(tmp_path_factory):
    return worded_model(tmp_path_factory.mktemp("tokenizer"))


def test_from_pairs_equals_the_constructor(worded):
    model, words = worded
    clean, corrupted = prompts(words, [4, 4], seed=3)
    pairs = [
        {"clean": c, "corrupted": x, "answer": words[i], "wrong": words[i + 5]}
        for i, (c, x) in enumerate(zip(clean, corrupted))
    ]
    task = PatchingTask.from_pairs(model, pairs)
    reference = PatchingTask(model, clean, corrupted, [words[0], words[1]], [words[5], words[6]])
    assert task.metric_name == "logit_diff"
    assert torch.equal(task.clean_tokens, reference.clean_tokens)
    assert torch.equal(task.corrupted_tokens, reference.corrupted_tokens)
    assert task.answer_tokens.tolist() == [model.to_single_token(w) for w in words[:2]]
    assert task.wrong_tokens.tolist() == [model.to_single_token(w) for w in words[5:7]]
    assert task.clean_metric == reference.clean_metric and task.corrupted_metric == reference.corrupted_metric
    # metric and align are passed on
    uneven = [dict(pairs[0], corrupted=corrupted[0] + words[2])]
    probs = PatchingTask.from_pairs(model, uneven, metric="answer_prob", align=True)
    assert probs.metric_name == "answer_prob" and probs.clean_mask[0].tolist()[0] == 0
    with pytest.raises(ShapeMismatchError, match="align=True"):
        PatchingTask.from_pairs(model, uneven)


# --- task ----------------------------------------------------------------------------------------------------------


def test_answers_one_scalar_token_zero_and_the_pieces_of_a_long_answer(tiny_model, worded):
    tokens = random_tokens(tiny_model, 2, 1, 6, seed=1)
    task = PatchingTask(tiny_model, tokens[0], tokens[1], answers=3, wrong_answers=0)
    assert task.answer_tokens.tolist() == [3] and task.wrong_tokens.tolist() == [0]
    model, words = worded
    clean, corrupted = prompts(words, [4], seed=2)
    two = words[0] + words[1]
    with pytest.raises(InterpError) as error:
        PatchingTask(model, clean, corrupted, [two], [words[2]])
    assert str(error.value) == (
        f"answers: {two!r} is 2 tokens {[words[0], words[1]]}; each answer must be a single token "
        "(mind the leading space, e.g. ' Paris')."
    )


def test_corrupted_prompt_errors_name_corrupted_prompts(tiny_model, unchecked_shapes):
    tokens = random_tokens(tiny_model, 2, 6, seed=2)
    with pytest.raises(InterpError) as error:
        PatchingTask(tiny_model, tokens, [], [3, 4], [5, 6])
    assert str(error.value) == "corrupted_prompts is empty: pass at least one prompt."
    with pytest.raises(ShapeMismatchError) as error:
        PatchingTask(tiny_model, tokens, tokens[0], [3, 4], [5, 6])
    assert str(error.value) == "corrupted_prompts: expected token ids of shape [batch, pos], got (6,)."


def test_align_without_a_tokenizer_pads_with_zero_and_keeps_each_prompts_own_run(tiny_model):
    """One pair, clean 4 tokens and corrupted 6: the clean prompt is left-padded with token 0 (no tokenizer, so no pad
    token), in the caller's integer dtype; each baseline is that prompt's own unpadded run."""
    assert tiny_model.tokenizer is None
    clean, corrupted = random_tokens(tiny_model, 1, 4, seed=3), random_tokens(tiny_model, 1, 6, seed=4)
    task = PatchingTask(tiny_model, clean.int(), corrupted.int(), [3], [5], align=True)
    assert task.clean_tokens.dtype == task.corrupted_tokens.dtype == torch.int32
    assert task.clean_tokens.tolist() == [[0, 0, *clean[0].tolist()]]
    assert task.clean_mask.tolist() == [[0, 0, 1, 1, 1, 1]] and task.corrupted_mask.tolist() == [[1] * 6]
    with torch.no_grad():
        torch.testing.assert_close(task.clean_logits, tiny_model(clean)[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(task.corrupted_logits, tiny_model(corrupted)[:, -1], atol=1e-5, rtol=1e-5)


def test_metric_names_and_the_exact_logit_diff_message(tiny_model):
    tokens = random_tokens(tiny_model, 2, 2, 5, seed=5)

    def mine(logits):
        return logits[:, -1, 3] - logits[:, -1, 9]

    unnamed = functools.partial(mine)  # a callable without __name__
    task = PatchingTask(tiny_model, tokens[0], tokens[1], [3, 4], metric=unnamed)
    assert task.metric_name == "custom"
    assert patch_sites(task, [Site(0, "resid_pre", position=1)]).attrs["metric"] == "custom"
    assert PatchingTask(tiny_model, tokens[0], tokens[1], [3, 4], metric=mine).metric_name == "mine"
    with pytest.raises(InterpError) as error:
        PatchingTask(tiny_model, tokens[0], tokens[1], [3, 4])
    assert str(error.value) == (
        "metric='logit_diff' needs wrong_answers (one wrong answer per pair, e.g. the corrupted prompt's answer)."
    )


def test_answer_prob_and_accuracy_by_hand(tiny_model):
    tokens = random_tokens(tiny_model, 2, 3, 6, seed=6)
    with torch.no_grad():
        clean_last, corrupted_last = tiny_model(tokens[0])[:, -1], tiny_model(tokens[1])[:, -1]
    answers = clean_last.argmax(-1)  # the clean run's top tokens: clean accuracy 1
    site = Site(1, "resid_pre", position=3)

    def prob(logits):
        return logits.softmax(-1).gather(1, answers[:, None])[:, 0]

    def top(logits):
        return (logits.argmax(-1) == answers).float()

    task = PatchingTask(tiny_model, tokens[0], tokens[1], answers, metric="answer_prob")
    assert task.clean_metric == pytest.approx(float(prob(clean_last).mean()), abs=1e-6)
    assert task.corrupted_metric == pytest.approx(float(prob(corrupted_last).mean()), abs=1e-6)
    patched = patch_sites(task, [site]).metric[0]
    assert patched == pytest.approx(tl_patched(tiny_model, tokens[0], tokens[1], site, None, None, prob), abs=1e-5)
    task = PatchingTask(tiny_model, tokens[0], tokens[1], answers, metric="accuracy")
    assert task.clean_metric == 1.0 and task.corrupted_metric == float(top(corrupted_last).mean()) < 1.0
    patched = patch_sites(task, [site, Site(2, "resid_post", position=5)]).metric.tolist()
    assert patched == [
        tl_patched(tiny_model, tokens[0], tokens[1], site, None, None, top),
        1.0,  # the clean final residual at the last position: the clean logits, so the clean answers
    ]


# --- models the tiny GQA model does not cover ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def shortformer():
    return load_model(SHORTFORMER, seed=0)


def test_shortformer_patching_matches_transformer_lens(shortformer):
    model = shortformer
    tokens = random_tokens(model, 2, 3, 6, seed=7)
    answers, wrong = torch.tensor([3, 7, 11]), torch.tensor([9, 1, 4])
    task = PatchingTask(model, tokens[0], tokens[1], answers, wrong)
    assert task.shortformer_pos_embed is not None and not engine._last_position_block_ok(model)
    sites = [Site(layer, "resid_pre", position=p) for layer in (0, 1) for p in (2, 4)] + [Site(1, "z", head=2)]
    reference = [tl_patched(model, tokens[0], tokens[1], s, answers, wrong) for s in sites]
    assert max(abs(r - task.corrupted_metric) for r in reference) > 0.05  # the patches move the metric
    for budget in (budget_for(task, 2), None):  # 2 variants a batch, and all of a layer in one
        ours = patch_sites(task, sites, **({} if budget is None else {"memory_budget": budget}))
        np.testing.assert_allclose(ours.metric.to_numpy(), reference, atol=1e-5, rtol=0)
    with pytest.raises(InterpError) as error:
        ablated_last_logits(model, tokens[0], [Ablation((Site(0, "z", head=0),))])
    assert str(error.value) == (
        "ablated_last_logits: shortformer positional embeddings are not supported; use interventions.run_ablated per "
        "ablation."
    )


def test_shortformer_aligned_positions_count_from_each_prompts_first_token(shortformer):
    """Corrupted prompts 2 tokens shorter than the clean ones are left-padded: their positional embeddings start at
    their first real token, as in their own unpadded run (each pair run alone with TransformerLens hooks)."""
    model = shortformer
    clean, corrupted = random_tokens(model, 2, 7, seed=8), random_tokens(model, 2, 5, seed=9)
    answers, wrong = torch.tensor([3, 7]), torch.tensor([9, 1])
    task = PatchingTask(model, clean, corrupted, answers, wrong, align=True)
    assert task.corrupted_mask[:, :2].sum() == 0
    for layer, position in ((0, 4), (1, 6)):
        values = []
        for j in range(2):
            _, cache = model.run_with_cache(clean[j : j + 1])

            def hook(act, hook, j=j):
                act[:, position - 2] = cache[hook.name][:, position]
                return act

            with torch.no_grad():
                name = f"blocks.{layer}.hook_resid_pre"
                logits = model.run_with_hooks(corrupted[j : j + 1], fwd_hooks=[(name, hook)])[0, -1]
            values.append(float(logits[answers[j]] - logits[wrong[j]]))
        ours = patch_sites(task, [Site(layer, "resid_pre", position=position)]).metric[0]
        assert ours == pytest.approx(float(np.mean(values)), abs=1e-5)


def test_standard_positions_and_plain_multi_head_attention_use_the_last_position_block(monkeypatch):
    model = load_model(STANDARD_MHA, seed=0)
    assert model.cfg.n_key_value_heads is None and engine._last_position_block_ok(model)
    tokens = random_tokens(model, 2, 3, 6, seed=10)
    answers, wrong = torch.tensor([3, 7, 11]), torch.tensor([9, 1, 4])
    task = PatchingTask(model, tokens[0], tokens[1], answers, wrong)
    calls = []
    original = engine._keys_values
    monkeypatch.setattr(engine, "_keys_values", lambda *a: calls.append(1) or original(*a))
    sites = [Site(0, "resid_pre", position=p) for p in (None, 1, 3)] + [Site(1, "z", head=h) for h in (0, 3)]
    ours = patch_sites(task, sites, memory_budget=budget_for(task, 2))
    assert calls, "the last-position path never ran"
    reference = [tl_patched(model, tokens[0], tokens[1], s, answers, wrong) for s in sites]
    assert max(abs(r - task.corrupted_metric) for r in reference) > 0.05
    np.testing.assert_allclose(ours.metric.to_numpy(), reference, atol=1e-5, rtol=0)


def test_configurations_the_last_position_block_refuses():
    """Keys and values that are not plain projections of ln1's output: the block runs at every position."""
    assert engine._last_position_block_ok(load_model(STANDARD_MHA, seed=0))
    for changes in (dict(use_attn_in=True), dict(use_split_qkv_input=True), dict(parallel_attn_mlp=True)):
        assert not engine._last_position_block_ok(load_model(dict(STANDARD_MHA, **changes), seed=0)), changes


def test_logit_soft_cap_is_applied(tiny_model):
    model = load_model(dict(TINY_GQA, output_logits_soft_cap=0.3), seed=0)
    tokens = random_tokens(model, 2, 3, 6, seed=11)
    answers, wrong = torch.tensor([3, 7, 11]), torch.tensor([9, 1, 4])
    task = PatchingTask(model, tokens[0], tokens[1], answers, wrong)
    with torch.no_grad():
        capped = model(tokens[1])[:, -1]
        assert float(capped.abs().max()) < 0.3 and float(tiny_model(tokens[1])[:, -1].abs().max()) > 0.3
    sites = [Site(0, "resid_pre", position=2), Site(1, "mlp_post", neuron=5), Site(2, "z", head=1)]
    reference = [tl_patched(model, tokens[0], tokens[1], s, answers, wrong) for s in sites]
    np.testing.assert_allclose(patch_sites(task, sites).metric.to_numpy(), reference, atol=1e-5, rtol=0)


def test_last_position_logits_in_float32_skip_the_unembed_copy_and_in_bfloat16_use_it(tiny_model, monkeypatch):
    tokens = random_tokens(tiny_model, 3, 6, seed=12)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens)
        resid = cache["blocks.2.hook_resid_post"]
        expected = tiny_model(tokens)[:, -1:]
        half = load_model(TINY_GQA, seed=0, dtype=torch.bfloat16)
        _, half_cache = half.run_with_cache(tokens)
        half_expected = half(tokens)[:, -1:]
    # bfloat16: TransformerLens's own unembedding (its rounding), bit for bit
    assert torch.equal(last_position_logits(half, half_cache["blocks.2.hook_resid_post"]), half_expected)

    def refuse(self, residual):
        raise AssertionError("float32 logits went through Unembed.forward (a copy of W_U per call)")

    monkeypatch.setattr(Unembed, "forward", refuse)
    torch.testing.assert_close(last_position_logits(tiny_model, resid), expected, atol=1e-5, rtol=1e-5)


# --- engine --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tiny_model):
    tokens = random_tokens(tiny_model, 2, 3, 6, seed=13)
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


def test_negative_heads_and_neurons_count_from_the_end(task):
    cfg = task.model.cfg  # 4 query heads, 2 key/value heads, d_mlp 128
    frame = patch_sites(task, [Site(1, "k", head=-1), Site(1, "z", head=-1), Site(1, "mlp_post", neuron=-1)])
    assert frame["head"].tolist()[:2] == [1, 3] and frame["neuron"].tolist()[2] == cfg.d_mlp - 1
    answers, wrong = task.answer_tokens, task.wrong_tokens
    reference = [
        tl_patched(task.model, task.clean_tokens, task.corrupted_tokens, s, answers, wrong)
        for s in (Site(1, "k", head=1), Site(1, "z", head=3), Site(1, "mlp_post", neuron=cfg.d_mlp - 1))
    ]
    np.testing.assert_allclose(frame.metric.to_numpy(), reference, atol=1e-5, rtol=0)


def test_progress_bar_by_default_from_nine_batches(task, capsys):
    one = 1  # one variant a batch
    sites = [Site(1, "resid_pre", position=p) for p in range(6)] + [Site(0, "z", head=h) for h in range(3)]
    patch_sites(task, sites[:8], memory_budget=one)  # 8 batches: no bar
    assert capsys.readouterr().err == ""
    patch_sites(task, sites, memory_budget=one)  # 9 batches
    assert "9/9" in capsys.readouterr().err


def test_batches_are_sorted_by_first_changed_position(task):
    sites = [Site(1, "resid_pre", position=p) for p in (5, 0, 4, 1)] + [Site(0, "z", head=2)]
    assert engine.plan_batches(task, sites, budget_for(task, 2)) == [(0, [4]), (1, [1, 3]), (1, [2, 0])]


def test_columns_without_any_value_are_still_nullable_integers(task):
    for frame, empty in (
        (patch_heads(task, layers=[0]), ("neuron", "position")),
        (patch_layer_positions(task, layers=[0], positions=[1]), ("head", "neuron")),
    ):
        for column in ("head", "neuron", "position"):
            assert str(frame[column].dtype) == "Int64", column
        for column in empty:
            assert frame[column].isna().all()


def test_gather_values_in_a_group_of_one(tmp_path):
    from interp.distributed import init_group

    init_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gathered = engine.gather_values(np.array([1.5, 2.0, -3.0, 4.0]), [0, 2])
    finally:
        torch.distributed.destroy_process_group()
    assert gathered.dtype == np.float64 and gathered.tolist() == [1.5, 0.0, -3.0, 0.0]


# --- sweeps --------------------------------------------------------------------------------------------------------


def test_sweep_site_defaults_and_the_argument_each_error_names(task, capsys):
    n_heads = task.model.cfg.n_heads
    assert head_sites(task, layers=[0]) == [Site(0, "z", head=h) for h in range(n_heads)]
    assert layer_position_sites(task, layers=[2]) == [Site(2, "resid_pre", position=p) for p in range(6)]
    for kwargs, argument in ((dict(layers=[]), "layers"), (dict(positions=[]), "positions")):
        with pytest.raises(InterpError) as error:
            layer_position_sites(task, **kwargs)
        assert str(error.value).startswith(f"{argument} is empty: pass at least one index")
    # a component that exists but has no layer x position sweep: no misleading "did you mean"
    with pytest.raises(UnknownSiteError) as error:
        patch_layer_positions(task, "mlp_post")
    assert str(error.value) == (
        "patch_layer_positions(component='mlp_post') is not supported. "
        "Choose one of: resid_pre, resid_mid, resid_post, attn_out, mlp_out."
    )
    # engine options are passed on
    for sweep in (patch_layer_positions, patch_neurons):
        with pytest.raises(InterpError, match="memory_budget=0: must be a positive number of bytes"):
            sweep(task, layers=[0], memory_budget=0)
        sweep(task, layers=[2], positions=[5], progress=True)
        assert "patching" in capsys.readouterr().err


# --- ablate --------------------------------------------------------------------------------------------------------


def test_ablated_forwards_progress_reference_and_reference_cache(tiny_model, capsys):
    tokens = random_tokens(tiny_model, 3, 6, seed=14)
    reference = random_tokens(tiny_model, 4, 6, seed=15)
    ablations = [Ablation((Site(1, "z", head=h),), method="mean", reference=reference) for h in range(2)]
    plain = ablated_last_logits(tiny_model, tokens, ablations)
    assert capsys.readouterr().err == ""  # no bar unless asked
    ablated_last_logits(tiny_model, tokens, ablations, progress=True)
    bar = capsys.readouterr().err
    assert "ablated forwards" in bar and "1/1" in bar and "batch/s" in bar
    # mean ablation by hand: each head's z at each position replaced by its mean over the reference prompts
    _, ref_cache = tiny_model.run_with_cache(reference)
    z = ref_cache["blocks.1.attn.hook_z"]
    for h in range(2):

        def hook(act, hook, h=h):
            act[:, :, h] = z[:, :, h].mean(0)
            return act

        with torch.no_grad():
            expected = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", hook)])[:, -1]
        torch.testing.assert_close(plain[h], expected, atol=1e-5, rtol=1e-5)
    # with a reference cache the activations are read from it (and it must hold the ablated hooks)
    cached = ablated_last_logits(tiny_model, tokens, ablations, reference_cache={"blocks.1.attn.hook_z": z})
    torch.testing.assert_close(cached, plain, atol=1e-6, rtol=0)
    with pytest.raises(InterpError, match=r"lacks hook\(s\) \['blocks.1.attn.hook_z'\]"):
        ablated_last_logits(tiny_model, tokens, ablations, reference_cache={"blocks.0.attn.hook_z": z})
    bad = [Ablation((Site(1, "z", head=0),), method="mean", reference=reference[0])]
    with pytest.raises(ShapeMismatchError) as error:
        ablated_last_logits(tiny_model, tokens, bad)
    assert str(error.value) == "Ablation.reference: expected token ids of shape [batch, pos], got (6,)."


# --- cost ----------------------------------------------------------------------------------------------------------


def test_floors_in_closed_form(tiny_model):
    cfg = tiny_model.cfg  # 3 layers, d_model 64, 4 heads of 16, 2 kv heads, gated d_mlp 128, d_vocab 101
    q, kv, att, w_o, mlp_in, w_out = (
        2 * 64 * 64,
        2 * 2 * 64 * 32,
        2 * 2 * 64,
        2 * 64 * 64,
        2 * 2 * 64 * 128,
        2 * 128 * 64,
    )
    unembed, seq, p = 2 * 64 * 101, 7, 2
    block = BlockFlops.of(cfg)
    assert block.token(5, "mlp") == mlp_in + w_out and block.token(5, "w_o") == w_o + mlp_in + w_out
    # resid_pre at layer 0, position p, causal: layers 0 and 1 at positions p..6 (position t attends to t + 1 keys),
    # the last block's keys and values at p..5 and the whole block at position 6 (7 keys)
    n = seq - p
    keys = sum(range(p + 1, seq + 1))
    full = 2 * (n * (q + kv + w_o + mlp_in + w_out) + att * keys) + (n - 1) * kv + (q + kv + w_o + mlp_in + w_out)
    full += att * seq + unembed
    assert sweep_flops(cfg, [Site(0, "resid_pre", position=p)], 3, seq) == 3 * full
    # a site after the keys and values in the last block: only its own products at the last position
    assert variant_flops(cfg, Site(2, "mlp_post"), seq) == unembed + w_out
    assert variant_flops(cfg, Site(2, "z", position=4), seq) == unembed + w_o + mlp_in + w_out
    # attention-only blocks have no MLP products
    attn_only = load_model(dict(SMALL, attn_only=True, d_mlp=None, normalization_type="LN"), seed=0).cfg
    only = BlockFlops.of(attn_only)
    assert (only.mlp_in, only.w_out) == (0, 0) and only.token(
        3
    ) == 2 * 32 * 32 + 2 * 2 * 32 * 32 + 2 * 2 * 32 * 3 + 2 * 32 * 32
