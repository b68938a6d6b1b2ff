"""The in-context-copy pairs (interp.graph.tasks) on the bundled model: built from its tokenizer, one token per
word, and the model copies (clean prompts favour the original word, corrupted ones the replacement)."""

import pytest

from interp.errors import InterpError
from interp.graph.tasks import copy_pairs
from interp.patching import PatchingTask


def test_copy_pairs_are_repeats_with_the_copied_word_changed(model):
    pairs = copy_pairs(model.tokenizer, n=6, length=5, seed=1)
    assert len(pairs) == 6 and pairs == copy_pairs(model.tokenizer, n=6, length=5, seed=1)  # seeded
    for p in pairs:
        clean = model.to_tokens(p["clean"], prepend_bos=False)[0].tolist()
        corrupted = model.to_tokens(p["corrupted"], prepend_bos=False)[0].tolist()
        assert len(clean) == len(corrupted) == 9
        assert clean[5:] == clean[:4] and corrupted[5:] == clean[:4]  # the second half repeats the first
        assert [i for i in range(9) if clean[i] != corrupted[i]] == [4]  # only the copied word's first occurrence
        assert model.to_tokens(p["answer"], prepend_bos=False)[0].tolist() == [clean[4]]
        assert model.to_tokens(p["wrong"], prepend_bos=False)[0].tolist() == [corrupted[4]]
    task = PatchingTask.from_pairs(model, pairs)
    assert task.clean_metric > 2 and task.corrupted_metric < -2  # the model copies from context


def test_copy_pairs_bad_input(model):
    with pytest.raises(InterpError, match="length=1"):
        copy_pairs(model.tokenizer, length=1)
    with pytest.raises(InterpError, match="n=0"):
        copy_pairs(model.tokenizer, n=0)
    with pytest.raises(InterpError, match="tokenizer"):
        copy_pairs(None)
