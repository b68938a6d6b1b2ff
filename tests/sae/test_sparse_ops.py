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
        grads.append(
            {
                "x": xin.grad,
                **{name: p.grad for name, p in sae.named_parameters()},
                "loss": out.loss.detach(),
                "out": out.sae_out.detach(),
            }
        )
    sparse, dense = grads
    assert sparse.keys() == dense.keys()
    for name in sparse:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-5, rtol=1e-4, msg=name)
    assert sparse["encoder"].abs().sum() > 0 and sparse["W_dec"].abs().sum() > 0


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct-per-row", "repeats"])
def test_rows_primitives_match_loops(distinct):
    gen = torch.Generator().manual_seed(0)
    n, k, m, d = 7, 3, 11, 5
    indices = (
        torch.stack([torch.randperm(m, generator=gen)[:k] for _ in range(n)])
        if distinct
        else torch.randint(0, 2, (n, k), generator=gen)
    )
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


@pytest.mark.parametrize("shift", [-1.5, -2.0])
def test_sparse_topk_backward_masks_nonpositive_top_k_values(shift):
    """b_enc shifted down so some of the k selected pre-activations are <= 0 (relu clips them): the
    sparse backward must drop their gradient as the dense relu(topk) does (issue 22)."""
    from sae.sparse_ops import topk_encode

    d_in, d_sae, k, n = 16, 64, 8, 40
    gen = torch.Generator().manual_seed(7)
    x, encoder = torch.randn(n, d_in, generator=gen), torch.randn(d_sae, d_in, generator=gen) / 4
    b_enc = torch.randn(d_sae, generator=gen) * 0.5 + shift
    pre = x @ encoder.T + b_enc
    top = pre.topk(k, dim=-1)
    assert (
        0.1 < (top.values <= 0).float().mean() < 0.9
    )  # the mask is exercised: many top-k values are clipped, many are not
    weight = torch.randn(
        n, d_sae, generator=gen
    )  # an upstream gradient per latent (slot order may differ between the paths)
    grads = []
    for sparse in (True, False):
        xs, es, bs = (t.clone().requires_grad_(True) for t in (x, encoder, b_enc))
        if sparse:
            values, indices = topk_encode(xs, es, bs, k)
        else:  # the dense reference: torch.topk of the full pre-activations, then relu
            values, indices = (xs @ es.T + bs).topk(k, dim=-1, sorted=False)
            values = values.relu()
        (values * weight.gather(-1, indices)).sum().backward()
        grads.append((indices.sort(-1).values, xs.grad, es.grad, bs.grad))
    (sel_s, *sparse_grads), (sel_d, *dense_grads) = grads
    # the forward values themselves: relu of the selected pre-activations (computed here from `pre`)
    sparse_values, sparse_indices = topk_encode(x, encoder, b_enc, k)
    torch.testing.assert_close(sparse_values, pre.gather(-1, sparse_indices).relu(), atol=1e-5, rtol=1e-5)
    assert (sparse_values == 0).any()
    assert torch.equal(sel_s, sel_d)  # the same latents selected
    for name, s, d in zip(("x", "encoder", "b_enc"), sparse_grads, dense_grads):
        torch.testing.assert_close(s, d, atol=1e-5, rtol=1e-4, msg=name)
    # independent of both paths: b_enc's gradient is the upstream weight summed over the rows where the latent is selected with a value > 0
    active = torch.zeros(n, d_sae).scatter(-1, top.indices, (top.values > 0).float())
    torch.testing.assert_close(sparse_grads[2], (weight * active).sum(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "needs", [(True, False, False), (False, True, False), (False, False, True), (True, True, False)]
)
def test_sparse_topk_and_decode_gradients_for_any_subset_of_inputs(needs):
    """Each input's gradient is right whichever others require one (a frozen SAE attributed through: only x)."""
    from sae.sparse_ops import sparse_decode, topk_encode

    d_in, d_sae, k, n = 12, 48, 6, 30
    gen = torch.Generator().manual_seed(11)
    x, encoder = torch.randn(n, d_in, generator=gen), torch.randn(d_sae, d_in, generator=gen) / 3
    b_enc, w_dec = torch.randn(d_sae, generator=gen) * 0.3, torch.randn(d_sae, d_in, generator=gen)
    target = torch.randn(n, d_in, generator=gen)
    results = []
    for sparse in (True, False):
        inputs = [t.clone().requires_grad_(need) for t, need in zip((x, encoder, b_enc), needs)]
        dec = w_dec.clone().requires_grad_(needs[1])
        if sparse:
            values, indices = topk_encode(*inputs, k)
            out = sparse_decode(values, indices, dec)
        else:
            top = (inputs[0] @ inputs[1].T + inputs[2]).topk(k, dim=-1)
            dense = torch.zeros(n, d_sae).scatter(-1, top.indices, top.values.relu())
            out = dense @ dec
        ((out - target) ** 2).sum().backward()
        results.append([t.grad for t in (*inputs, dec)])
    for name, s, d, need in zip(("x", "encoder", "b_enc", "w_dec"), *results, (*needs, needs[1])):
        if need:
            torch.testing.assert_close(s, d, atol=1e-4, rtol=1e-4, msg=name)
        else:
            assert s is None and d is None, name


@pytest.mark.parametrize("select_dtype", [None, torch.bfloat16])
def test_selection_by_row_chunks_equals_one_pass(select_dtype, monkeypatch):
    """On CPU the scores are made and selected CPU_ROW_CHUNK rows at a time; 1,100 rows (two whole chunks of 512 and
    a partial one) give the values and indices of one pass over all rows, and the exact top k of a float64 reference."""
    from sae import sparse_ops

    gen = torch.Generator().manual_seed(4)
    x, encoder, b_enc = (
        torch.randn(1100, 48, generator=gen),
        torch.randn(300, 48, generator=gen),
        torch.randn(300, generator=gen),
    )
    chunked = sparse_ops.topk_encode(x, encoder, b_enc, 7, select_dtype)
    monkeypatch.setattr(sparse_ops, "CPU_ROW_CHUNK", 10**9)
    whole = sparse_ops.topk_encode(x, encoder, b_enc, 7, select_dtype)
    for a, b in zip(chunked, whole):
        torch.testing.assert_close(a.sort(1).values, b.sort(1).values, atol=1e-6, rtol=0)
    reference = torch.nn.functional.linear(x.double(), encoder.double(), b_enc.double()).topk(7, dim=1)
    assert torch.equal(chunked[1].sort(1).values, reference.indices.sort(1).values)
    torch.testing.assert_close(
        chunked[0].sort(1).values, reference.values.relu().float().sort(1).values, atol=1e-5, rtol=0
    )
