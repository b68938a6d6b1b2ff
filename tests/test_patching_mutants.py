"""The patching engine's padded path and its input checks on a tiny model with a tokenizer (issue 22, point 4).

The SmolLM2 versions of these tests (tests/test_patching.py, tests/test_engine_batches.py) take seconds to minutes
per run, too slow to run once per mutant; here the same checks run on the tiny GQA model with a small byte-level
BPE tokenizer (tests/tiny_families.py). align=True with corrupted prompts of three different lengths, at
positions that are padding in some pairs, in batches of 2 and 3 variants, against each pair run alone and
unpadded with TransformerLens hooks; and the errors for bad prompts, answers, sites and options.
"""

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError, UnknownSiteError
from interp.models import load_model
from interp.patching import PatchingTask, patch_heads, patch_layer_positions, patch_neurons, patch_sites
from interp.sites import Site
from tests.conftest import TINY_GQA
from tests.test_engine_batches import budget_for, max_diff, unpadded_reference
from tests.tiny_families import VOCAB, write_tokenizer


def worded_model(folder):
    """The tiny GQA model with the tiny tokenizer (written to `folder`), and the words that are one token each."""
    write_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = load_model(dict(TINY_GQA, d_vocab=VOCAB), seed=0)
    model.set_tokenizer(tokenizer, default_padding_side="right")
    words = []
    for i in range(3, VOCAB):
        text = tokenizer.decode([i])
        if text.startswith(" ") and text[1:].isalpha() and tokenizer.encode(text, add_special_tokens=False) == [i]:
            words.append(text)
    assert len(words) >= 12
    return model, words


@pytest.fixture(scope="module")
def worded(tmp_path_factory):
    return worded_model(tmp_path_factory.mktemp("tokenizer"))


def prompts(words, lengths, seed):
    """Pairs of prompts of `lengths` words each; the corrupted prompt differs in its last two words."""
    gen = torch.Generator().manual_seed(seed)
    clean, corrupted = [], []
    for n in lengths:
        pick = [words[i] for i in torch.randint(0, len(words), (n + 2,), generator=gen).tolist()]
        clean.append("".join(pick[:n]))
        corrupted.append("".join(pick[: n - 2] + pick[n:]))
    return clean, corrupted


@pytest.fixture(scope="module")
def aligned(worded):
    model, words = worded
    clean, corrupted = prompts(words, [4, 6, 9], seed=1)
    return PatchingTask(model, clean, corrupted, [5, 40, 77], [9, 60, 13], align=True), clean, corrupted


@pytest.mark.parametrize("variants", [2, 3])
def test_align_with_unequal_lengths_in_batches_matches_unpadded_runs(aligned, variants):
    task, clean, corrupted = aligned
    lengths = task.corrupted_mask.sum(1).tolist()
    assert len(set(lengths)) == 3 and task.corrupted_mask[:, 0].tolist() == [0, 0, 1]
    positions = [task.seq_len - 6, task.seq_len - 2, task.seq_len - 1]  # the first is padding in the shortest pair
    assert task.corrupted_mask[:, positions[0]].tolist() == [0, 1, 1]
    resid = unpadded_reference(
        task, clean, corrupted, [(f"blocks.{lay}.hook_resid_pre", p, lambda a: a) for lay in (1, 2) for p in positions]
    )
    heads = unpadded_reference(
        task, clean, corrupted, [("blocks.1.attn.hook_z", p, lambda a: a[:, :, 2]) for p in positions]
    )
    assert float((resid - task.corrupted_metric).abs().max()) > 0.05  # patches that move the metric
    budget = budget_for(task, variants)
    assert max_diff(patch_layer_positions(task, layers=[1, 2], positions=positions, memory_budget=budget), resid) < 1e-4
    ours = patch_heads(task, layers=[1], heads=[2], positions=positions, by_position=True, memory_budget=budget)
    assert max_diff(ours, heads) < 1e-4
    # negative positions count from the end of the padded prompts
    last = patch_layer_positions(task, layers=[2], positions=[-1], memory_budget=budget)
    assert list(last.position) == [task.seq_len - 1] and max_diff(last, resid[5:6]) < 1e-4
    # the baselines are each pair's own unpadded runs
    with torch.no_grad():
        for j, (c, x) in enumerate(zip(clean, corrupted)):
            for prompt, logits in ((c, task.clean_logits), (x, task.corrupted_logits)):
                alone = task.model(task.model.to_tokens(prompt))[0, -1]
                assert float((alone - logits[j]).abs().max()) < 1e-4


def test_prompt_and_answer_errors_name_the_argument(worded):
    model, words = worded
    clean, corrupted = prompts(words, [4, 6], seed=2)
    with pytest.raises(
        ShapeMismatchError, match=r"Pair 1: the clean prompt has 7 tokens but the corrupted prompt has 5\. .*align=True"
    ):
        PatchingTask(model, clean, [corrupted[0], corrupted[0]], [5, 6], [7, 8])
    with pytest.raises(
        ShapeMismatchError, match=r"Prompt pairs have different token lengths \(\[5, 7\]\)\..*align=True"
    ):
        PatchingTask(model, clean, corrupted, [5, 6], [7, 8])
    with pytest.raises(InterpError, match="clean_prompts is empty"):
        PatchingTask(model, [], corrupted, [5, 6], [7, 8])
    with pytest.raises(ShapeMismatchError, match="clean_prompts has 2 prompts but corrupted_prompts has 1"):
        PatchingTask(model, clean, corrupted[:1], [5, 6], [7, 8])
    two = words[0] + words[1]
    with pytest.raises(InterpError, match=rf"answers: {two!r} is 2 tokens .* each answer must be a single token"):
        PatchingTask(model, clean, corrupted, [words[0], two], [7, 8], align=True)
    with pytest.raises(ShapeMismatchError, match=r"wrong_answers: expected one answer per prompt pair \(2\), got 1"):
        PatchingTask(model, clean, corrupted, [5, 6], [7], align=True)
    with pytest.raises(ShapeMismatchError, match=rf"answers: token ids must lie in 0\.\.{VOCAB - 1}"):
        PatchingTask(model, clean, corrupted, [5, VOCAB], [7, 8], align=True)
    with pytest.raises(InterpError, match="metric='logit_diff' needs wrong_answers"):
        PatchingTask(model, clean, corrupted, [5, 6], align=True)
    with pytest.raises(InterpError, match="metric='logit_dif' is not a known metric. Did you mean: 'logit_diff'"):
        PatchingTask(model, clean, corrupted, [5, 6], [7, 8], metric="logit_dif", align=True)
    # string answers are read as one token each
    task = PatchingTask(model, clean, corrupted, [words[0], words[1]], [words[2], 8], align=True)
    ids = [model.to_single_token(w) for w in words[:3]]
    assert task.answer_tokens.tolist() == ids[:2] and task.wrong_tokens.tolist() == [ids[2], 8]


def test_bad_sites_and_options_are_named(tiny_task):
    cfg = tiny_task.model.cfg
    with pytest.raises(UnknownSiteError, match="Did you mean: 'resid_pre'"):
        patch_layer_positions(tiny_task, "resid_pr")
    with pytest.raises(UnknownSiteError, match=r"patch_layer_positions\(component='z'\) is not supported"):
        patch_layer_positions(tiny_task, "z")
    with pytest.raises(
        OutOfRangeError, match=rf"layer={cfg.n_layers} is out of range; .* has layers 0..{cfg.n_layers - 1}"
    ):
        patch_layer_positions(tiny_task, layers=[cfg.n_layers])
    with pytest.raises(OutOfRangeError, match=r"position=6 is out of range for prompts of 6 tokens"):
        patch_layer_positions(tiny_task, positions=[6])
    with pytest.raises(OutOfRangeError, match=rf"head={cfg.n_heads} is out of range; .* has {cfg.n_heads} query heads"):
        patch_heads(tiny_task, heads=[cfg.n_heads])
    with pytest.raises(OutOfRangeError, match=rf"neuron={cfg.d_mlp} is out of range"):
        patch_neurons(tiny_task, neurons=[cfg.d_mlp])
    with pytest.raises(InterpError, match="layers is empty"):
        patch_heads(tiny_task, layers=[])
    with pytest.raises(InterpError, match="pass by_position=True too"):
        patch_heads(tiny_task, positions=[0])
    with pytest.raises(InterpError, match="memory_budget=0: must be a positive number of bytes"):
        patch_heads(tiny_task, memory_budget=0)
    with pytest.raises(InterpError, match="sites is empty"):
        patch_sites(tiny_task, [])
    with pytest.raises(UnknownSiteError, match=r"patch Site\(0, 'resid_pre'\) instead"):
        patch_sites(tiny_task, [Site(None, "embed")])
    with pytest.raises(UnknownSiteError, match="is not a hook of this model"):
        patch_sites(tiny_task, ["blocks.0.hook_resid_prex"])


@pytest.fixture(scope="module")
def tiny_task(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 2, 6), generator=torch.Generator().manual_seed(0))
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7], wrong_answers=[9, 1])


def test_the_result_table_and_its_progress_bar(tiny_task, capsys):
    from interp.patching import RESULT_COLUMNS

    sites = [Site(0, "z", head=1), Site(1, "mlp_post", neuron=3), Site(1, "resid_pre", position=2)]
    frame = patch_sites(tiny_task, sites, progress=True)
    bar = capsys.readouterr().err
    assert "patching" in bar and "3/3" in bar and "variant" in bar
    assert list(frame.columns) == RESULT_COLUMNS == [
        "component", "layer", "head", "neuron", "position", "hook_name", "metric", "restoration"
    ]  # fmt: skip
    assert list(frame["component"]) == ["z", "mlp_post", "resid_pre"]
    assert list(frame["hook_name"]) == ["blocks.0.attn.hook_z", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_pre"]
    for column, values in (("head", [1, None, None]), ("neuron", [None, 3, None]), ("position", [None, None, 2])):
        assert str(frame[column].dtype) == "Int64"
        assert [None if v is pd.NA else int(v) for v in frame[column]] == values
    assert frame.attrs == {
        "metric": tiny_task.metric_name,
        "clean_metric": tiny_task.clean_metric,
        "corrupted_metric": tiny_task.corrupted_metric,
    }
    patch_sites(tiny_task, sites)  # 3 variants in one batch: no bar unless asked
    assert capsys.readouterr().err == ""
    with pytest.raises(InterpError, match=r"^sites is empty: pass at least one Site or hook name to patch\.$"):
        patch_sites(tiny_task, [])


def test_sweep_defaults_and_the_argument_each_error_names(tiny_task):
    heads = patch_heads(tiny_task, layers=[0])
    assert heads["position"].isna().all() and list(heads["component"].unique()) == ["z"]
    neurons = patch_neurons(tiny_task, layers=[1], neurons=[0, 2])
    assert list(neurons["component"].unique()) == ["mlp_post"] and neurons["position"].isna().all()
    with pytest.raises(UnknownSiteError, match=r"^patch_heads\(component='resid_pre'\) is not supported\. Choose one"):
        patch_heads(tiny_task, component="resid_pre")
    with pytest.raises(UnknownSiteError, match=r"^patch_neurons\(component='z'\) is not supported\. Choose one of: "):
        patch_neurons(tiny_task, component="z")
    for kwargs, argument in (
        (dict(heads=[]), "heads"),
        (dict(layers=[]), "layers"),
        (dict(by_position=True, positions=[]), "positions"),
    ):
        with pytest.raises(InterpError, match=rf"^{argument} is empty: pass at least one index, or None for all"):
            patch_heads(tiny_task, **kwargs)
    for kwargs, argument in (
        (dict(neurons=[]), "neurons"),
        (dict(layers=[]), "layers"),
        (dict(positions=[]), "positions"),
    ):
        with pytest.raises(InterpError, match=rf"^{argument} is empty: pass at least one index"):
            patch_neurons(tiny_task, **kwargs)


def test_ablations_sharing_a_hook_in_one_batch_equal_each_alone(tiny_model):
    """Several ablations at the same hook (other heads, other neurons) in one stacked batch: each equals its own call."""
    from interp.interventions import Ablation
    from interp.patching.ablate import ablated_last_logits

    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (3, 6), generator=torch.Generator().manual_seed(4))
    ablations = [
        Ablation((Site(1, "z", head=0),)),
        Ablation((Site(1, "z", head=2),)),
        Ablation((Site(0, "mlp_post", neuron=3), Site(1, "z", head=1))),
        Ablation((Site(0, "mlp_post", neuron=5),)),
    ]
    batched = ablated_last_logits(tiny_model, tokens, ablations)
    alone = torch.stack([ablated_last_logits(tiny_model, tokens, [a])[0] for a in ablations])
    assert batched.shape == (4, 3, tiny_model.cfg.d_vocab)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert float((batched[0] - batched[1]).abs().max()) > 1e-3  # the ablations differ
    kept = ablated_last_logits(tiny_model, tokens, ablations, reduce=lambda logits: logits[..., :7].sum(-1))
    torch.testing.assert_close(kept, batched[..., :7].sum(-1), atol=1e-5, rtol=1e-5)
    assert ablated_last_logits(tiny_model, tokens, []).shape == (0, 3, tiny_model.cfg.d_vocab)
    with pytest.raises(InterpError, match=r"^ablated_last_logits\(memory_budget=0\): must be a positive number"):
        ablated_last_logits(tiny_model, tokens, ablations, memory_budget=0)


def test_torchrun_shards_of_the_batches_by_hand():
    """shard_batches: a batch at layer L costs (n_layers - L) x its variants; largest first, to the least-loaded rank
    (ties to the lower rank); every batch lands on exactly one rank."""
    from interp.patching.engine import shard_batches

    batches = [(0, [0, 1]), (2, [2, 3, 4]), (3, [5]), (1, [6]), (2, [7])]  # costs 8, 6, 1, 3, 2 with 4 layers
    shards = shard_batches(batches, 2, 4)
    # 8 -> rank 0 (8); 6 -> rank 1 (6); 3 -> rank 1 (9); 2 -> rank 0 (10); 1 -> rank 1 (10)
    assert shards == [[(0, [0, 1]), (2, [7])], [(2, [2, 3, 4]), (1, [6]), (3, [5])]]
    three = shard_batches(batches, 3, 4)
    assert three == [[(0, [0, 1])], [(2, [2, 3, 4])], [(1, [6]), (2, [7]), (3, [5])]]
    assert sorted(b for shard in three for b in shard) == sorted(batches)
    assert shard_batches(batches, 1, 4) == [sorted(batches, key=lambda b: (-(4 - b[0]) * len(b[1]), b[0], b[1][0]))]


def test_named_sweeps_list_their_sites(tiny_task):
    from interp.patching.sweeps import SWEEPS, sweep, sweep_sites

    cfg, n = tiny_task.model.cfg, tiny_task.seq_len
    expected = {
        "heads": [Site(layer, "z", head=h) for layer in [1] for h in range(cfg.n_heads)],
        "heads_by_pos": [Site(1, "z", head=h, position=p) for p in range(n) for h in range(cfg.n_heads)],
        "neurons": [Site(1, "mlp_post", neuron=i) for i in range(cfg.d_mlp)],
        "neurons_by_pos": [Site(1, "mlp_post", neuron=i, position=p) for p in range(n) for i in range(cfg.d_mlp)],
        "resid_pre": [Site(1, "resid_pre", position=p) for p in range(n)],
        "attn_out": [Site(1, "attn_out", position=p) for p in range(n)],
    }
    for name, sites in expected.items():
        assert sorted(sweep_sites(tiny_task, name, layers=[1]), key=repr) == sorted(sites, key=repr), name
    assert set(SWEEPS) >= set(expected)
    with pytest.raises(InterpError, match=r"^sweeps: 'head' is not a sweep\. Did you mean: 'heads'"):
        sweep_sites(tiny_task, "head")
    frame = sweep(tiny_task, "resid_pre", layers=[1])
    reference = patch_layer_positions(tiny_task, "resid_pre", layers=[1])
    assert frame["metric"].tolist() == reference["metric"].tolist()
