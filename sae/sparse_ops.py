"""TopK encode and sparse decode as autograd Functions whose backward touches only the k active latents.

Per row only k of d_sae latents are active, so past the one dense encoder matmul every product is
O(n k d): the encoder's weight gradient, the input gradient, the decoder forward and both decoder
gradients (sparsify's fused_encoder does the same). The dense path in sae.models.topk is the reference.

`select_dtype` (e.g. torch.bfloat16): the one dense product, the [n, d_sae] scores, only CHOOSES which k latents
fire, so it may run in a lower precision (x, encoder and b_enc cast; bfloat16 matmuls run ~4x faster than float32
on CPUs with AVX512-BF16 and on tensor cores). The low-precision scores shortlist k + max(8, k // 4) latents; their
pre-activations are recomputed exactly in the parameters' dtype (a sampled product, `rows_dot`, plus b_enc at those
indices) and the exact top k of the shortlist is kept. So the values, and every gradient, are exactly those of the
fp32 step given the same indices, and the indices differ from fp32's only where a true top-k latent ranked below the
shortlist in low precision: a near-tie within the scores' bf16 rounding. Measured on 4,096 layer-6 rows of the
bundled model, a random-init 9216-latent SAE and three trained ones: no entry differs from the fp32 top k, against
0.2-1.0% of entries when the top k is taken straight from the bf16 scores (tests/sae/test_select_dtype.py).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.kernels import use_triton
from interp.kernels.sparse_rows import rows_dot, rows_grad, rows_sum
from interp.kernels.topk import row_topk


class TopKEncode(torch.autograd.Function):
    """(x, encoder [d_sae, d_in], b_enc, k) -> relu of the top-k pre-activations and their latent indices."""

    @staticmethod
    def forward(ctx, x: Tensor, encoder: Tensor, b_enc: Tensor, k: int, select_dtype: torch.dtype | None = None):
        if select_dtype is not None and select_dtype != x.dtype:
            values, indices = _select_then_exact(x, encoder, b_enc, k, select_dtype)
        elif use_triton(encoder):  # the Triton selection kernel on CUDA, bias and ReLU fused into it
            values, indices = row_topk(torch.nn.functional.linear(x, encoder), k, bias=b_enc, relu=True)
        else:  # torch.topk: the bias goes into the matmul (addmm), not a second pass over the [n, d_sae] scores
            scores = x.new_empty(min(len(x), CPU_ROW_CHUNK), len(encoder))  # one buffer, reused by every chunk
            values, indices = _by_row_chunks(
                x, lambda rows: row_topk(torch.addmm(b_enc, rows, encoder.T, out=scores[: len(rows)]), k, relu=True)
            )
        ctx.save_for_backward(x, encoder, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices):
        x, encoder, values, indices = ctx.saved_tensors
        grad_pre = grad_values * (values > 0)  # relu's gradient
        grad_x = rows_sum(grad_pre, indices, encoder) if ctx.needs_input_grad[0] else None
        grad_encoder = rows_grad(grad_pre, indices, x, encoder.shape[0]) if ctx.needs_input_grad[1] else None
        grad_b_enc = None
        if ctx.needs_input_grad[2]:
            grad_b_enc = grad_pre.new_zeros(encoder.shape[0]).index_add_(0, indices.reshape(-1), grad_pre.reshape(-1))
        return grad_x, grad_encoder, grad_b_enc, None, None


CPU_ROW_CHUNK = 512  # rows a CPU scores and selects at once: their [512, d_sae] scores stay in cache for the top k


def _by_row_chunks(x: Tensor, select) -> tuple[Tensor, ...]:
    """select(rows) on chunks of CPU_ROW_CHUNK rows of x, concatenated (one call off the CPU, or for fewer rows).
    Scoring and selecting a chunk at a time into one buffer the chunks share, the top k reads scores still in cache
    instead of a [n, d_sae] matrix freshly mapped and written out first: 13% of the bfloat16 selection's time at n
    4096, d_sae 9216 on a 2-core Zen 5. One buffer, not one a chunk: chunk-sized blocks freed and allocated again
    fragment the heap, and the process's memory grew step after step (41 to 70 MB over 24 steps of
    tests/test_plan.py's SAE, against 38 to 41 with the shared buffer)."""
    if x.device.type != "cpu" or len(x) <= CPU_ROW_CHUNK:
        return select(x)
    parts = [select(x[i : i + CPU_ROW_CHUNK]) for i in range(0, len(x), CPU_ROW_CHUNK)]
    return tuple(torch.cat(column) for column in zip(*parts))


def select_candidates(k: int, d_sae: int) -> int:
    """How many latents the low-precision scores shortlist before the exact re-rank picks k: k + max(8, k // 4)."""
    return min(d_sae, k + max(8, k // 4))


def _select_then_exact(
    x: Tensor, encoder: Tensor, b_enc: Tensor, k: int, select_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Shortlist the top k + margin latents on scores computed in `select_dtype`, recompute the shortlisted
    pre-activations exactly (a sampled product at n * (k + margin) entries), keep the exact top k, relu."""
    low_encoder, low_bias, candidates = (
        encoder.to(select_dtype),
        b_enc.to(select_dtype),
        select_candidates(k, len(encoder)),
    )
    # torch.topk straight on the low-precision scores: on CPU bf16 topk is as fast as fp32's, and an upcast first
    # would cost a full extra pass over [n, d_sae]; the same torch code serves CUDA
    scores = x.new_empty(min(len(x), CPU_ROW_CHUNK), len(encoder), dtype=select_dtype)  # reused by every chunk
    (shortlist,) = _by_row_chunks(
        x,
        lambda rows: (
            torch.addmm(low_bias, rows.to(select_dtype), low_encoder.T, out=scores[: len(rows)])
            .topk(candidates, dim=1, sorted=False)
            .indices,
        ),
    )
    exact = rows_dot(x, shortlist, encoder) + b_enc[shortlist]
    values, keep = exact.topk(k, dim=1, sorted=False)
    return values.relu(), shortlist.gather(1, keep)


class SparseDecode(torch.autograd.Function):
    """(values [n, k], indices [n, k], W_dec [d_sae, d_in]) -> sum_j values[:, j] * W_dec[indices[:, j]]."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, w_dec: Tensor):
        ctx.save_for_backward(values, indices, w_dec)
        return rows_sum(values, indices, w_dec)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, w_dec = ctx.saved_tensors
        grad_values = rows_dot(grad_out, indices, w_dec) if ctx.needs_input_grad[0] else None
        grad_w_dec = rows_grad(values, indices, grad_out, w_dec.shape[0]) if ctx.needs_input_grad[2] else None
        return grad_values, None, grad_w_dec


def topk_encode(
    x: Float[Tensor, "n d_in"],
    encoder: Float[Tensor, "d_sae d_in"],
    b_enc: Float[Tensor, " d_sae"],
    k: int,
    select_dtype: torch.dtype | None = None,
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """relu of the top-k pre-activations (x @ encoder.T + b_enc) per row and their indices; backward k-sparse.

    select_dtype: None (or x's dtype): select on the exact scores. A lower dtype (torch.bfloat16, torch.float16):
    select on scores computed in it, then return the exact pre-activations at the chosen indices (module docstring).
    """
    return TopKEncode.apply(x, encoder, b_enc, k, select_dtype)


def sparse_decode(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], w_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "n d_in"]:
    return SparseDecode.apply(values, indices, w_dec)
