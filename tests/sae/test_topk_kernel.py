"""The TopK selection kernel against torch.topk, run by the Triton interpreter on CPU (TRITON_INTERPRET=1)."""

import os

import pytest
import torch

from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError
from interp.kernels import topk as tk
from sae.models.topk import TopKConfig, TopKSae

pytestmark = pytest.mark.skipif(
    not tk.triton_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton with TRITON_INTERPRET=1 (set by tests/conftest.py)",
)

# (n, m, k, block_m): one block; m not a power of two over several blocks; k over a block; k == m; one column
SHAPES = [(6, 10, 3, 1024), (5, 100, 7, 32), (4, 300, 130, 64), (3, 50, 50, 16), (4, 1, 1, 16)]


def assert_same_selection(got, expected):
    """Values equal as multisets and indices equal as sets per row (the order of picks is not part of the contract)."""
    (values, indices), (ref_values, ref_indices) = got, expected
    torch.testing.assert_close(values.sort(1).values, ref_values.sort(1).values, atol=0, rtol=0, equal_nan=True)
    assert torch.equal(indices.sort(1).values, ref_indices.sort(1).values)
    return values, indices


@pytest.mark.parametrize("n,m,k,block_m", SHAPES)
@pytest.mark.parametrize("with_bias,relu", [(False, False), (True, True)])
def test_kernel_selects_what_torch_topk_selects(n, m, k, block_m, with_bias, relu):
    gen = torch.Generator().manual_seed(1000 * n + m + k)
    pre = torch.randn(n, m, generator=gen) * 3 - 1  # mostly negative rows, so relu and the sign flip both matter
    bias = torch.randn(m, generator=gen) if with_bias else None
    got = tk.row_topk_triton(pre, k, bias, relu, block_m=block_m)
    scores = pre + bias if with_bias else pre
    ref_values, ref_indices = scores.topk(k, dim=1)  # the independent reference: plain torch.topk
    values, indices = assert_same_selection(got, (ref_values.relu() if relu else ref_values, ref_indices))
    assert (indices.diff(dim=1) > 0).all(), "the kernel writes each row's picks in ascending column order"
    expected_at = scores.gather(1, indices)
    torch.testing.assert_close(values, expected_at.relu() if relu else expected_at, atol=0, rtol=0)
    assert_same_selection(tk.row_topk_torch(pre, k, bias, relu), (values, indices))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_select_on_their_float32_values(dtype):
    gen = torch.Generator().manual_seed(7)
    pre, bias = torch.randn(4, 70, generator=gen).to(dtype), torch.randn(70, generator=gen).to(dtype)
    got = tk.row_topk_triton(pre, 9, bias, relu=True, block_m=32)
    assert got[0].dtype == dtype and got[1].dtype == torch.int64
    scores = pre.float() + bias.float()
    assert_same_selection(got, tk.row_topk_torch(pre, 9, bias, relu=True))
    assert torch.equal(got[1].sort(1).values, scores.topk(9, dim=1).indices.sort(1).values)


def test_ties_at_the_kth_value_keep_the_lowest_columns():
    gen = torch.Generator().manual_seed(3)
    pre = torch.randint(
        -3, 4, (6, 70), generator=gen
    ).float()  # 7 distinct values in 70 columns: ties everywhere, across blocks
    pre[5] = 2.0  # a row of one value: every pick is a tie
    k = 20
    values, indices = tk.row_topk_triton(pre, k, block_m=16)
    torch.testing.assert_close(values.sort(1).values, pre.topk(k, dim=1).values.sort(1).values, atol=0, rtol=0)
    for row in range(len(pre)):  # the documented rule by hand: highest first, then lowest column among equals
        ranked = sorted(range(pre.shape[1]), key=lambda col: (-float(pre[row, col]), col))
        assert indices[row].tolist() == sorted(ranked[:k])


def test_infinities_nan_and_signed_zeros_order_as_torch_topk_does():
    inf, nan = float("inf"), float("nan")
    pre = torch.tensor(
        [
            [1.0, -inf, inf, -2.0, 0.0, -0.5, -inf, 3.0],
            [-inf, -inf, -inf, -1.0, -inf, -inf, -inf, -inf],  # k = 3 reaches into the -inf entries
            [nan, 1.0, -1.0, 2.0, nan, 0.5, -3.0, 4.0],  # NaN counts as the largest, as in torch.topk
            [-0.0, -1e-30, 1e-30, 0.0, -1e-38, 1e-38, -5.0, 5.0],  # tiny and denormal-adjacent values order exactly
        ]
    )
    values, indices = tk.row_topk_triton(pre, 3, block_m=16)
    ref_values, ref_indices = pre.topk(3, dim=1)
    torch.testing.assert_close(values.sort(1).values, ref_values.sort(1).values, atol=0, rtol=0, equal_nan=True)
    for row in (0, 2, 3):  # rows without ties at the 3rd value
        assert set(indices[row].tolist()) == set(ref_indices[row].tolist())
    assert indices[1].tolist() == [0, 1, 3]  # -1.0 and the two lowest -inf columns


def test_relu_keeps_nan_like_torch_relu():
    pre = torch.tensor([[float("nan"), -1.0, -2.0, -3.0]])
    values, indices = tk.row_topk_triton(pre, 2, relu=True)
    assert indices.tolist() == [[0, 1]] and values[0, 0].isnan() and values[0, 1] == 0


def test_empty_batch_gives_empty_outputs():
    values, indices = tk.row_topk_triton(torch.zeros(0, 12), 4)
    assert values.shape == indices.shape == (0, 4)


@pytest.mark.parametrize("call", [tk.row_topk_triton, tk.row_topk_torch, tk.row_topk])
def test_bad_input_names_the_argument_and_the_fix(call):
    pre = torch.randn(3, 10)
    with pytest.raises(OutOfRangeError, match=r"k=0: must be an integer with 0 < k <= m=10.*Lower k"):
        call(pre, 0)
    with pytest.raises(OutOfRangeError, match=r"k=11: .*m=10"):
        call(pre, 11)
    with pytest.raises(OutOfRangeError, match=r"k=2.5"):
        call(pre, 2.5)
    with pytest.raises(ShapeMismatchError, match=r"pre: expected a 2-d tensor \[n, m\].*\(10,\).*Flatten"):
        call(pre[0], 2)
    with pytest.raises(InterpError, match=r"pre: expected a floating-point tensor, got dtype torch.int64"):
        call(torch.ones(3, 10, dtype=torch.long), 2)
    with pytest.raises(ShapeMismatchError, match=r"bias: expected shape \(10,\).*got \(9,\)"):
        call(pre, 2, torch.zeros(9))


def test_block_size_must_be_a_power_of_two_and_float64_goes_to_the_twin(monkeypatch):
    with pytest.raises(OutOfRangeError, match=r"block_m=48: must be a power of two >= 16"):
        tk.row_topk_triton(torch.randn(2, 10), 2, block_m=48)
    with pytest.raises(InterpError, match=r"pre: the Triton kernel ranks float32 keys.*Use row_topk"):
        tk.row_topk_triton(torch.randn(2, 10, dtype=torch.float64), 2)
    monkeypatch.setenv("INTERP_FORCE_TRITON", "1")
    pre = torch.tensor([[1.0, 1.0 + 1e-12, 0.0]], dtype=torch.float64)  # equal in float32, ordered in float64
    values, indices = tk.row_topk(pre, 1)
    assert indices.tolist() == [[1]] and values.dtype == torch.float64 and values[0, 0] == pre[0, 1]


def test_dispatch_picks_the_twin_on_cpu_unless_forced(monkeypatch):
    cpu = torch.zeros(1, 4)
    monkeypatch.delenv("INTERP_FORCE_TRITON", raising=False)
    assert not tk._use_triton(cpu)
    monkeypatch.setenv("INTERP_FORCE_TRITON", "1")
    assert tk._use_triton(cpu)
    monkeypatch.setenv("INTERP_DISABLE_TRITON", "1")
    assert not tk._use_triton(cpu)


def test_topk_sae_encode_is_the_same_with_the_kernel_forced_on(monkeypatch):
    sae = TopKSae(TopKConfig(d_in=24, d_sae=96, k=8, seed=1))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(96, generator=gen) * 0.5)
        sae.b_dec.copy_(torch.randn(24, generator=gen) * 0.1)
    x = torch.randn(2, 5, 24, generator=gen)  # leading batch dimensions are flattened for the kernel and restored
    weights = torch.randn(2, 5, 96, generator=gen)

    def encode_and_grad():
        sae.zero_grad()
        acts = sae.encode(x)
        (acts * weights).sum().backward()
        return acts.detach(), sae.encoder.grad.clone(), sae.b_enc.grad.clone()

    monkeypatch.delenv("INTERP_FORCE_TRITON", raising=False)
    twin = encode_and_grad()
    kernel_calls = []
    original = tk.row_topk_triton
    monkeypatch.setattr(tk, "row_topk_triton", lambda *a, **kw: kernel_calls.append(1) or original(*a, **kw))
    monkeypatch.setenv("INTERP_FORCE_TRITON", "1")
    kernel = encode_and_grad()
    assert kernel_calls, "the forced path must run the Triton kernel"
    for got, expected in zip(kernel, twin):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
    # and both against the definition: the k largest pre-activations of each token, relu'd, in place
    pre = torch.nn.functional.linear(x - sae.b_dec, sae.encoder, sae.b_enc).detach()
    kth = pre.topk(8, dim=-1).values[..., -1:]
    torch.testing.assert_close(kernel[0], torch.where(pre >= kth, pre.relu(), 0.0), atol=0, rtol=0)
    assert ((kernel[0] != 0).sum(-1) <= 8).all()
