"""The patching kernels (Triton under TRITON_INTERPRET=1) against their torch twins and a hand loop."""

import pytest
import torch

from interp.errors import ShapeMismatchError
from interp.kernels.patching import (
    ALL,
    NONE,
    attribution_scores,
    attribution_scores_torch,
    attribution_scores_triton,
    patched_batch,
    patched_batch_torch,
    patched_batch_triton,
)

SHAPES = [(2, 5, 4, 16), (3, 7, 9, 1), (2, 6, 1, 70)]  # heads, neurons, residual stream


def random_pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def selectors(shape, seed):
    g = torch.Generator().manual_seed(seed)
    _, n_pos, n_groups, _ = shape
    positions = torch.cat([torch.tensor([ALL, ALL, 0]), torch.randint(0, n_pos, (5,), generator=g)])
    groups = torch.cat([torch.tensor([ALL, NONE, ALL]), torch.randint(0, n_groups, (5,), generator=g)])
    return positions, groups


def patched_by_loop(clean, corrupted, positions, groups):
    out = []
    for p, g in zip(positions.tolist(), groups.tolist()):
        copy = corrupted.clone()
        if g != NONE:
            copy[:, slice(None) if p == ALL else p, slice(None) if g == ALL else g] = clean[
                :, slice(None) if p == ALL else p, slice(None) if g == ALL else g
            ]
        out.append(copy)
    return torch.cat(out)


@pytest.mark.parametrize("shape", SHAPES)
def test_patched_batch_kernel_twin_and_loop_agree(shape):
    clean, corrupted, _ = random_pair(shape, 0)
    positions, groups = selectors(shape, 1)
    expected = patched_by_loop(clean, corrupted, positions, groups)
    assert torch.equal(patched_batch_torch(clean, corrupted, positions, groups), expected)
    assert torch.equal(patched_batch_triton(clean, corrupted, positions, groups), expected)
    assert torch.equal(patched_batch(clean, corrupted, positions, groups), expected)  # CPU: the twin


@pytest.mark.parametrize("shape", SHAPES)
def test_attribution_scores_kernel_twin_and_loop_agree(shape):
    clean, corrupted, grad = random_pair(shape, 2)
    batch, n_pos, n_groups, _ = shape
    expected = torch.tensor(
        [
            [
                sum(float((clean[b, p, g] - corrupted[b, p, g]) @ grad[b, p, g]) for b in range(batch))
                for g in range(n_groups)
            ]
            for p in range(n_pos)
        ]
    )
    torch.testing.assert_close(attribution_scores_torch(clean, corrupted, grad), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(attribution_scores_triton(clean, corrupted, grad), expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(attribution_scores(clean, corrupted, grad), expected, atol=1e-4, rtol=1e-5)


def test_shape_errors_name_the_argument(unchecked_shapes):
    clean, corrupted, grad = random_pair((2, 3, 4, 5), 3)
    with pytest.raises(ShapeMismatchError, match="corrupted: expected the shape of clean"):
        patched_batch(clean, corrupted[:, :2], torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ShapeMismatchError, match="positions and groups"):
        patched_batch(clean, corrupted, torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(ShapeMismatchError, match="grad: expected the shape of clean"):
        attribution_scores(clean, corrupted, grad[..., :3])
    with pytest.raises(ShapeMismatchError, match="4-d"):
        attribution_scores(clean[0], corrupted[0], grad[0])
