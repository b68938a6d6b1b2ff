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


def test_row_chunks_are_cpu_row_chunk_rows_on_cpu_and_one_call_elsewhere():
    """_by_row_chunks calls select on 512-row slices of a CPU tensor (the last one partial), once on a tensor of at
    most 512 rows, and once on any other device (here `meta`), concatenating what each call returns."""
    from sae.sparse_ops import CPU_ROW_CHUNK, _by_row_chunks

    assert CPU_ROW_CHUNK == 512
    for n, sizes in ((1100, [512, 512, 76]), (512, [512]), (3, [3])):
        seen = []
        out = _by_row_chunks(torch.arange(n * 2.0).reshape(n, 2), lambda rows: (seen.append(len(rows)) or rows * 2,))
        assert seen == sizes
        assert torch.equal(out[0], torch.arange(n * 2.0).reshape(n, 2) * 2)
    seen = []
    _by_row_chunks(torch.empty(1100, 2, device="meta"), lambda rows: (seen.append(len(rows)) or rows,))
    assert seen == [1100]


def test_the_shortlist_margin_is_k_plus_max_8_or_a_quarter_of_k_capped_at_d_sae():
    from sae.sparse_ops import select_candidates

    assert [select_candidates(k, 9216) for k in (1, 8, 32, 33, 64, 100)] == [9, 16, 40, 41, 80, 125]
    assert select_candidates(32, 35) == 35 and select_candidates(4, 12) == 12


def test_bfloat16_selection_is_a_shortlist_then_an_exact_rank():
    """A planted case where bfloat16 rounding reorders the scores: latent 0 scores 1.003 exactly, but 1.0 in bfloat16;
    twenty decoys score 1.0027 exactly, but 1.0078 in bfloat16 (their weight 1.0042 rounds up). The shortlist of
    k + 8 = 9 holds decoys only, so bfloat16 selection returns a decoy, with its exact float32 value (not its bfloat16
    one), while exact selection finds latent 0. The approximation is real and the values are exact."""
    from sae.sparse_ops import topk_encode

    x = torch.ones(1, 1)
    encoder = torch.tensor([[1.0]] + [[1.0042]] * 20)
    b_enc = torch.tensor([0.003] + [-0.0015] * 20)
    low = torch.addmm(b_enc.bfloat16(), x.bfloat16(), encoder.bfloat16().T)[0]
    assert low[0].item() == 1.0 and (low[1:] == 1.0078125).all()  # the planted inversion, in bfloat16
    exact_values, exact_indices = topk_encode(x, encoder, b_enc, 1)
    assert exact_indices.tolist() == [[0]] and exact_values.item() == pytest.approx(1.003, abs=1e-6)
    values, indices = topk_encode(x, encoder, b_enc, 1, torch.bfloat16)
    assert 1 <= indices.item() <= 20
    assert values.item() == pytest.approx(1.0042 - 0.0015, abs=1e-6)  # the decoy's float32 score
    same = topk_encode(x, encoder, b_enc, 1, torch.float32)  # select_dtype equal to x's: the exact path
    assert same[1].tolist() == [[0]]


@pytest.mark.filterwarnings("error")  # a score buffer of the wrong shape makes addmm resize its `out` and warn
@pytest.mark.parametrize("select_dtype", [None, torch.bfloat16])
def test_chunked_selection_writes_into_a_buffer_of_the_chunk_shape(select_dtype):
    from sae.sparse_ops import topk_encode

    gen = torch.Generator().manual_seed(5)
    x, encoder, b_enc = torch.randn(600, 16, generator=gen), torch.randn(64, 16, generator=gen), torch.zeros(64)
    values, indices = topk_encode(x, encoder, b_enc, 4, select_dtype)
    reference = torch.nn.functional.linear(x.double(), encoder.double()).topk(4, dim=1)
    assert torch.equal(indices.sort(1).values, reference.indices.sort(1).values)


def test_forced_triton_selection_equals_the_torch_path(monkeypatch):
    """The Triton branch of TopKEncode (CUDA, or the interpreter with INTERP_FORCE_TRITON=1): bias and ReLU fused into
    the selection kernel, the same values and indices as torch's addmm + topk."""
    from interp.kernels import triton_available
    from sae.sparse_ops import topk_encode

    if not triton_available():
        pytest.skip("needs triton (its CPU interpreter)")
    gen = torch.Generator().manual_seed(6)
    x, encoder, b_enc = (
        torch.randn(6, 8, generator=gen),
        torch.randn(40, 8, generator=gen),
        torch.randn(40, generator=gen),
    )
    b_enc[:20] -= 6.0  # many negative pre-activations: the ReLU matters
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("INTERP_FORCE_TRITON", "1")
    forced = topk_encode(x, encoder, b_enc, 12)
    monkeypatch.delenv("INTERP_FORCE_TRITON")
    default = topk_encode(x, encoder, b_enc, 12)
    order_f, order_d = forced[1].argsort(1), default[1].argsort(1)
    assert torch.equal(forced[1].gather(1, order_f), default[1].gather(1, order_d))
    torch.testing.assert_close(forced[0].gather(1, order_f), default[0].gather(1, order_d), atol=1e-5, rtol=0)
    assert (default[0] == 0).any()  # some selected pre-activations were negative and were zeroed
