"""The suite's shape check (tests/shapecheck.py) does catch an annotation broken at run time."""

import pytest
import torch
from jaxtyping import TypeCheckError

from interp.errors import ShapeMismatchError
from interp.kernels.patching import patched_batch


def _batch(shape=(2, 3, 4, 5)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_a_shape_that_breaks_the_annotation_fails_the_call():
    clean, corrupted = _batch()
    # corrupted's "batch pos group width" must match clean's: the names bind across the arguments
    with pytest.raises(TypeCheckError, match="corrupted"):
        patched_batch(clean, corrupted[:, :2], torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(TypeCheckError):
        patched_batch(clean, corrupted, torch.tensor([[0]]), torch.tensor([0]))  # positions: Int[Tensor, "n"], not 2-D


def test_shapes_that_keep_the_annotation_pass():
    clean, corrupted = _batch()
    out = patched_batch(clean, corrupted, torch.tensor([0, 2]), torch.tensor([1, 3]))
    assert out.shape == (2 * clean.shape[0], *clean.shape[1:])  # variants x batch rows


def test_unchecked_shapes_lets_the_function_speak(unchecked_shapes):
    clean, corrupted = _batch()
    with pytest.raises(ShapeMismatchError, match="corrupted: expected the shape of clean"):
        patched_batch(clean, corrupted[:, :2], torch.tensor([0]), torch.tensor([0]))
