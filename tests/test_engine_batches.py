"""The patching engine's mid-size batches against TransformerLens (issue 22).

A budget of one variant per batch, or a whole layer per batch, never runs the key/value-prefix path
with several variants stacked (variants of different positions sharing one prefix) nor the padded
path with several variants. Here the budget is taken from the engine's own batch sizing so that each
batch holds 2 or 3 variants, and every number is compared with TransformerLens's own patching
(`transformer_lens.patching`, or `run_with_hooks` on each prompt alone for the padded prompts).
"""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from interp import metrics
from interp.hooks import transient_bytes_per_sequence
from interp.patching import PatchingTask, patch_heads, patch_layer_positions, patch_neurons
from interp.patching.engine import variants_per_batch


def budget_for(task: PatchingTask, variants: int) -> int:
    """The smallest memory budget for which the engine stacks `variants` variants per batch."""
    cfg = task.model.cfg
    per_sequence = transient_bytes_per_sequence(task.model, task.seq_len) + cfg.d_vocab * cfg.dtype.itemsize
    budget = variants * per_sequence * task.n_prompts
    assert variants_per_batch(task, budget) == variants and variants_per_batch(task, budget - 1) == variants - 1
    return budget


@pytest.fixture(scope="module")
def task3(tiny_model):
    # three prompts, so stacking variants variant-major (repeat) and prompt-major (repeat_interleave) differ
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 3, 7), generator=torch.Generator().manual_seed(5))
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


def tl_metric(task):
    return lambda logits: metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean()


def max_diff(ours: pd.DataFrame, reference) -> float:
    return float(abs(ours["metric"].to_numpy() - torch.as_tensor(reference).flatten().numpy()).max())


@pytest.mark.parametrize("variants", [2, 3])
def test_heads_by_position_in_batches_of_2_or_3_match_transformer_lens(task3, variants):
    _, clean_cache = task3.model.run_with_cache(task3.clean_tokens)
    reference = tl_patching.get_act_patch_attn_head_out_by_pos(
        task3.model, task3.corrupted_tokens, clean_cache, tl_metric(task3)
    )  # [layer, pos, head]
    ours = patch_heads(task3, by_position=True, memory_budget=budget_for(task3, variants))
    assert max_diff(ours, reference) < 1e-4
    # the check has teeth: the patches move the metric by far more than the tolerance
    assert float(reference.abs().max()) > 0 and float((reference - task3.corrupted_metric).abs().max()) > 0.05


@pytest.mark.parametrize("variants", [2, 3])
def test_layer_position_sweeps_in_batches_of_2_or_3_match_transformer_lens(task3, variants):
    _, clean_cache = task3.model.run_with_cache(task3.clean_tokens)
    for component, tl_function in (
        ("resid_pre", tl_patching.get_act_patch_resid_pre),
        ("attn_out", tl_patching.get_act_patch_attn_out),
        ("mlp_out", tl_patching.get_act_patch_mlp_out),
    ):
        reference = tl_function(task3.model, task3.corrupted_tokens, clean_cache, tl_metric(task3))  # [layer, pos]
        ours = patch_layer_positions(task3, component, memory_budget=budget_for(task3, variants))
        assert max_diff(ours, reference) < 1e-4, component


def neuron_setter(corrupted_activation, index, clean_activation):
    _, pos, neuron = index
    corrupted_activation[:, pos, neuron] = clean_activation[:, pos, neuron]
    return corrupted_activation


@pytest.mark.parametrize("variants", [2, 3])
def test_neurons_by_position_in_batches_of_2_or_3_match_transformer_lens(task3, variants):
    layers, neurons, positions = [0, 2], [1, 64, 127], [0, 3, 6]
    ours = patch_neurons(
        task3, layers=layers, neurons=neurons, positions=positions, memory_budget=budget_for(task3, variants)
    )
    _, clean_cache = task3.model.run_with_cache(task3.clean_tokens)
    rows = pd.DataFrame(
        [(layer, p, n) for layer in layers for n in neurons for p in positions], columns=["layer", "pos", "neuron"]
    )
    reference = tl_patching.generic_activation_patch(
        task3.model, task3.corrupted_tokens, clean_cache, tl_metric(task3), neuron_setter, "post", index_df=rows
    )
    assert max_diff(ours, reference) < 1e-4
    # every position at once, too
    all_pos = patch_neurons(task3, layers=layers, neurons=neurons, memory_budget=budget_for(task3, variants))

    def setter(corrupted_activation, index, clean_activation):
        corrupted_activation[:, :, index[1]] = clean_activation[:, :, index[1]]
        return corrupted_activation

    rows = pd.DataFrame([(layer, n) for layer in layers for n in neurons], columns=["layer", "neuron"])
    reference = tl_patching.generic_activation_patch(
        task3.model, task3.corrupted_tokens, clean_cache, tl_metric(task3), setter, "post", index_df=rows
    )
    assert max_diff(all_pos, reference) < 1e-4


# align=True: corrupted prompts of different lengths, several positions, 2-3 variants per batch

ALIGN_CLEAN = ["The capital of France is", "The capital city of Spain is", "As everyone knows, the capital of Japan is"]
ALIGN_CORRUPTED = [
    "The capital of Italy is",
    "The capital city of Japan is",
    "As everyone knows, the capital of Spain is",
]
ALIGN_ANSWERS, ALIGN_WRONG = [" Paris", " Madrid", " Tokyo"], [" Rome", " Tokyo", " Madrid"]


@pytest.fixture(scope="module")
def aligned(model):
    return PatchingTask(model, ALIGN_CLEAN, ALIGN_CORRUPTED, ALIGN_ANSWERS, ALIGN_WRONG, align=True)


@torch.no_grad()
def unpadded_reference(
    task: PatchingTask, clean_prompts: list[str], corrupted_prompts: list[str], patches: list[tuple[str, int, object]]
) -> torch.Tensor:
    """Per (hook name, position, slice of the activation to patch): the mean logit difference over pairs,
    each pair run alone and unpadded with TransformerLens hooks. `position` counts in the padded
    sequence; where it falls on padding in a pair, that pair runs unpatched."""
    model, values = task.model, torch.zeros(len(patches), len(clean_prompts))
    for j, (clean, corrupted, answer, wrong) in enumerate(
        zip(clean_prompts, corrupted_prompts, task.answer_tokens, task.wrong_tokens)
    ):
        clean_tokens = model.to_tokens(clean, prepend_bos=model.cfg.default_prepend_bos)
        corrupted_tokens = model.to_tokens(corrupted, prepend_bos=model.cfg.default_prepend_bos)
        assert clean_tokens.shape == corrupted_tokens.shape  # same length within a pair, different across pairs
        _, cache = model.run_with_cache(clean_tokens, names_filter=lambda name: name in {h for h, _, _ in patches})
        for i, (hook_name, position, select) in enumerate(patches):
            p = position - (task.seq_len - corrupted_tokens.shape[1])
            hooks = []
            if p >= 0:

                def hook(act, hook, p=p, select=select, clean_act=cache[hook_name]):
                    select(act)[:, p] = select(clean_act)[:, p]
                    return act

                hooks = [(hook_name, hook)]
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=hooks)
            values[i, j] = logits[0, -1, answer] - logits[0, -1, wrong]
    return values.mean(1)


def test_align_with_unequal_corrupted_lengths_in_batches_matches_unpadded_runs(aligned):
    lengths = aligned.corrupted_mask.sum(1).tolist()
    assert len(set(lengths)) == 3  # three different corrupted lengths
    # positions: the last two (real in every prompt), and one that is padding in some prompts only
    positions = [aligned.seq_len - min(lengths) - 1, aligned.seq_len - 2, aligned.seq_len - 1]
    assert 0 < aligned.corrupted_mask[:, positions[0]].sum() < 3
    resid = unpadded_reference(
        aligned,
        ALIGN_CLEAN,
        ALIGN_CORRUPTED,
        [(f"blocks.{layer}.hook_resid_pre", p, lambda act: act) for layer in (1, 6) for p in positions],
    )
    heads = unpadded_reference(
        aligned,
        ALIGN_CLEAN,
        ALIGN_CORRUPTED,
        [("blocks.3.attn.hook_z", p, lambda act: act[:, :, 5]) for p in positions],
    )
    assert max(abs(e - aligned.corrupted_metric) for e in resid) > 0.5  # patches that matter
    for variants in (2, 3):
        budget = budget_for(aligned, variants)
        assert (
            max_diff(patch_layer_positions(aligned, layers=[1, 6], positions=positions, memory_budget=budget), resid)
            < 1e-4
        ), variants
        assert (
            max_diff(
                patch_heads(
                    aligned, layers=[3], heads=[5], positions=positions, by_position=True, memory_budget=budget
                ),
                heads,
            )
            < 1e-4
        ), variants
