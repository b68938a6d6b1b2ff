"""Each Triton kernel against its torch twin, run by the Triton interpreter on CPU (TRITON_INTERPRET=1)."""

import os

import pytest
import torch

from interp.kernels import sparse_rows as sr

pytestmark = pytest.mark.skipif(
    not sr.triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton with TRITON_INTERPRET=1 (set by tests/conftest.py)",
)

SHAPES = [
    (5, 3, 17, 130),
    (9, 16, 40, 64),
    (2, 20, 7, 257),
]  # (n, k, m, d): d not a multiple of the block, k over a block


@pytest.mark.parametrize("n,k,m,d", SHAPES)
def test_triton_kernels_equal_torch_twins(n, k, m, d):
    gen = torch.Generator().manual_seed(n * k + d)
    values, indices = torch.randn(n, k, generator=gen), torch.randint(0, m, (n, k), generator=gen)
    rows, dense = torch.randn(m, d, generator=gen), torch.randn(n, d, generator=gen)
    torch.testing.assert_close(
        sr.rows_sum_triton(values, indices, rows), sr.rows_sum_torch(values, indices, rows), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        sr.rows_dot_triton(dense, indices, rows), sr.rows_dot_torch(dense, indices, rows), atol=1e-4, rtol=1e-5
    )
    torch.testing.assert_close(
        sr.rows_grad_triton(values, indices, dense, m),
        sr.rows_grad_torch(values, indices, dense, m),
        atol=1e-4,
        rtol=1e-5,
    )


def test_dispatch_uses_the_torch_twin_on_cpu():
    assert not sr._use_triton(torch.zeros(1))
