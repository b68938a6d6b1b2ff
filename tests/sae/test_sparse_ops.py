"""The sparse TopK path (custom autograd Functions) against the dense path, and its primitives against loops."""

import pytest
import torch

from interp.kernels.sparse_rows import rows_dot_torch, rows_grad_torch, rows_sum_torch
from sae.models import TopKConfig, build_sae
from sae.models.base import LossScale


@pytest.mark.parametrize("dead_latents", [0, 30])
def test_sparse_and_dense_topk_training_steps_give_the_same_gradients(dead_latents):
    d_in, d_sae, k, n = 24, 96, 6, 50
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=gen) * 2
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=gen)[:dead_latents]] = True
    grads = []
    for sparse in (True, False):
        sae = build_sae(TopKConfig(d_in, d_sae, k=k, sparse_backward=sparse, seed=3))
        with torch.no_grad():
            sae.b_enc.normal_(generator=torch.Generator().manual_seed(1))
            sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
        xin = x.clone().requires_grad_(True)
        out = sae.training_step(xin, dead, LossScale(n, float((x - x.mean(0)).pow(2).sum())), 0)
        out.loss.backward()
        grads.append({"x": xin.grad, **{name: p.grad for name, p in sae.named_parameters()}, "loss": out.loss.detach(), "out": out.sae_out.detach()})
    sparse, dense = grads
    assert sparse.keys() == dense.keys()
    for name in sparse:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-5, rtol=1e-4, msg=name)
    assert sparse["encoder"].abs().sum() > 0 and sparse["W_dec"].abs().sum() > 0


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct-per-row", "repeats"])
def test_rows_primitives_match_loops(distinct):
    gen = torch.Generator().manual_seed(0)
    n, k, m, d = 7, 3, 11, 5
    indices = torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)]) if distinct else torch.randint(0, 2, (n, k), generator=gen)
    values = torch.randn(n, k, generator=gen)
    rows, dense = torch.randn(m, d, generator=gen), torch.randn(n, d, generator=gen)
    want_sum = torch.stack([sum(values[i, j] * rows[indices[i, j]] for j in range(k)) for i in range(n)])
    want_dot = torch.tensor([[float(dense[i] @ rows[indices[i, j]]) for j in range(k)] for i in range(n)])
    want_grad = torch.zeros(m, d)
    for i in range(n):
        for j in range(k):
            want_grad[indices[i, j]] += values[i, j] * dense[i]
    torch.testing.assert_close(rows_sum_torch(values, indices, rows), want_sum)
    torch.testing.assert_close(rows_dot_torch(dense, indices, rows), want_dot)
    torch.testing.assert_close(rows_grad_torch(values, indices, dense, m), want_grad)
