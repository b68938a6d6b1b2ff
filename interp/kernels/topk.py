"""TopK selection: the k largest entries of each row, with their column indices (a TopK SAE's encode).

    row_topk(pre [n, m], k, bias=None, relu=False) -> values [n, k], indices [n, k]
        scores = pre + bias (float32; float64 stays float64, on the twin); the k largest of each row; values = relu(score) if relu

The Triton kernel is a radix select, one program per row: the k-th largest score is found bit by bit
(32 counting sweeps over the row, whatever k is), then one sweep writes every entry above it and
the first entries equal to it. Its order, which callers must not rely on, is ascending column index.
Tie rule: among scores equal to the k-th largest, the lowest columns are kept (torch.topk's choice
among ties is unspecified, so tests compare index sets only where there are no ties). NaN counts as
the largest score, as in torch.topk. The torch twin is torch.topk; `row_topk` picks Triton on CUDA.
"""

from __future__ import annotations


import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.kernels import triton_available  # noqa: F401  (re-exported: each kernel module says whether its kernel can run)
from interp.kernels import use_triton as _use_triton
from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError

BLOCK_M = 1024  # columns per sweep step; a row of any width streams through in blocks of this


def _check(pre: Tensor, k: int, bias: Tensor | None) -> None:
    if not pre.is_floating_point():
        raise InterpError(
            f"pre: expected a floating-point tensor, got dtype {pre.dtype}. Pass pre-activations (e.g. x @ W_enc)."
        )
    if pre.ndim != 2:
        raise ShapeMismatchError(
            f"pre: expected a 2-d tensor [n, m] (one row per token), got shape {tuple(pre.shape)}. Flatten leading dimensions first."
        )
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= pre.shape[1]:
        raise OutOfRangeError(
            f"k={k!r}: must be an integer with 0 < k <= m={pre.shape[1]} (the row width of pre). Lower k."
        )
    if bias is not None and bias.shape != (pre.shape[1],):
        raise ShapeMismatchError(
            f"bias: expected shape ({pre.shape[1]},) (one entry per column of pre), got {tuple(bias.shape)}."
        )


# -- torch twin ------------------------------------------------------------------------------
def row_topk_torch(
    pre: Float[Tensor, "n m"], k: int, bias: Float[Tensor, " m"] | None = None, relu: bool = False
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    _check(pre, k, bias)
    dtype = torch.float64 if pre.dtype == torch.float64 else torch.float32  # halves select in float32 like the kernel
    scores = pre.to(dtype) if bias is None else pre.to(dtype) + bias.to(dtype)
    values, indices = scores.topk(k, dim=1, sorted=False)
    return (values.relu() if relu else values).to(pre.dtype), indices


# -- Triton kernel ---------------------------------------------------------------------------
try:
    import triton
    import triton.language as tl
except ImportError:  # the torch twin serves everywhere
    triton = None


if triton is not None:

    @triton.jit
    def _block_scores(row_pre, bias, cols, valid, HAS_BIAS: tl.constexpr):
        score = tl.load(row_pre + cols, mask=valid, other=0.0).to(tl.float32)
        if HAS_BIAS:
            score += tl.load(bias + cols, mask=valid, other=0.0).to(tl.float32)
        # uint32 whose unsigned order is the float order: flip every bit of a negative, the sign bit of the rest
        bits = score.to(tl.uint32, bitcast=True)
        return score, tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)

    @triton.jit
    def _row_topk_kernel(
        pre, bias, values_out, indices_out, m, k, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        row_pre = pre + row * m
        # kth: the largest key with at least k keys >= it (the k-th largest key), built from the top bit down
        kth = tl.zeros([], dtype=tl.uint32)
        bit = tl.full([], 0x80000000, tl.uint32)
        for _ in range(32):
            trial = kth | bit
            count = tl.zeros([], dtype=tl.int32)
            for start in range(0, m, BLOCK):
                cols = start + tl.arange(0, BLOCK)
                valid = cols < m
                _, key = _block_scores(row_pre, bias, cols, valid, HAS_BIAS)
                count += tl.sum(((key >= trial) & valid).to(tl.int32), axis=0)
            kth = tl.where(count >= k, trial, kth)
            bit = bit >> 1
        n_above = tl.zeros([], dtype=tl.int32)
        for start in range(0, m, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            valid = cols < m
            _, key = _block_scores(row_pre, bias, cols, valid, HAS_BIAS)
            n_above += tl.sum(((key > kth) & valid).to(tl.int32), axis=0)
        ties_wanted = k - n_above
        written = tl.zeros([], dtype=tl.int32)
        ties_seen = tl.zeros([], dtype=tl.int32)
        for start in range(0, m, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            valid = cols < m
            score, key = _block_scores(row_pre, bias, cols, valid, HAS_BIAS)
            tie = ((key == kth) & valid).to(tl.int32)
            keep = ((key > kth) & valid) | ((tie == 1) & (ties_seen + tl.cumsum(tie, axis=0) <= ties_wanted))
            slot = written + tl.cumsum(keep.to(tl.int32), axis=0) - 1
            if RELU:
                score = tl.where(score < 0, 0.0, score)  # not maximum(): NaN stays NaN, as in torch.relu
            tl.store(values_out + row * k + slot, score, mask=keep)
            tl.store(indices_out + row * k + slot, cols.to(tl.int64), mask=keep)
            written += tl.sum(keep.to(tl.int32), axis=0)
            ties_seen += tl.sum(tie, axis=0)


def row_topk_triton(
    pre: Float[Tensor, "n m"],
    k: int,
    bias: Float[Tensor, " m"] | None = None,
    relu: bool = False,
    *,
    block_m: int = BLOCK_M,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    _check(pre, k, bias)
    if pre.dtype == torch.float64:
        raise InterpError(
            "pre: the Triton kernel ranks float32 keys, so float64 would lose precision. Use row_topk (it sends float64 to the torch twin) or row_topk_torch."
        )
    if block_m < 16 or block_m & (block_m - 1):
        raise OutOfRangeError(
            f"block_m={block_m!r}: must be a power of two >= 16 (Triton block sizes are). Use BLOCK_M={BLOCK_M}."
        )
    n, m = pre.shape
    values = torch.empty(n, k, device=pre.device, dtype=torch.float32)
    indices = torch.empty(n, k, device=pre.device, dtype=torch.int64)
    if n:
        pre = pre.contiguous()
        block = min(block_m, max(16, 1 << (m - 1).bit_length()))
        _row_topk_kernel[(n,)](
            pre,
            pre if bias is None else bias.contiguous(),
            values,
            indices,
            m,
            k,
            HAS_BIAS=bias is not None,
            RELU=relu,
            BLOCK=block,
        )
    return values.to(pre.dtype), indices


# -- dispatch: the kernel on CUDA, the torch twin elsewhere -----------------------------------
def row_topk(
    pre: Float[Tensor, "n m"], k: int, bias: Float[Tensor, " m"] | None = None, relu: bool = False
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    return (row_topk_triton if _use_triton(pre) and pre.dtype != torch.float64 else row_topk_torch)(pre, k, bias, relu)
