"""The suite's shape check (tests/shapecheck.py) does catch an annotation broken at run time."""

import pytest
import torch
from jaxtyping import TypeCheckError

from interp.errors import ShapeMismatchError
from interp.metrics import logit_diff
from interp.sites import Site


def _logits(batch=3):
    return torch.randn((batch, 4, 10), generator=torch.Generator().manual_seed(0))


def test_a_shape_that_breaks_the_annotation_fails_the_call():
    # answer_tokens: Int[Tensor, "batch"], and "batch" binds to the logits' first axis across the arguments
    with pytest.raises(TypeCheckError, match="answer_tokens"):
        logit_diff(_logits(3), torch.tensor([1, 2]), torch.tensor([3, 4, 5]))
    with pytest.raises(TypeCheckError):
        logit_diff(_logits(3), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3, 4, 5]))  # float ids break Int[...]


def test_shapes_that_keep_the_annotation_pass():
    logits = _logits(3)
    diff = logit_diff(logits, torch.tensor([1, 2, 3]), torch.tensor([3, 4, 5]))
    assert torch.equal(diff, logits[torch.arange(3), -1, [1, 2, 3]] - logits[torch.arange(3), -1, [3, 4, 5]])


def test_annotations_other_than_shapes_are_left_to_the_function():
    assert Site.from_hook_name("blocks.2.attn.hook_z").layer == 2  # a str, checked by Site itself, not by the hook


def test_unchecked_shapes_lets_the_function_speak(unchecked_shapes):
    with pytest.raises(ShapeMismatchError, match="answer_tokens: expected one token id per prompt"):
        logit_diff(_logits(3), torch.tensor([1, 2]), torch.tensor([3, 4, 5]))
