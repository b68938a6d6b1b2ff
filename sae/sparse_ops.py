"""TopK encode and sparse decode as autograd Functions whose backward touches only the k active latents.

Per row only k of d_sae latents are active, so past the one dense encoder matmul every product is
O(n k d): the encoder's weight gradient, the input gradient, the decoder forward and both decoder
gradients (sparsify's fused_encoder does the same). The dense path in sae.models.topk is the reference.
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
    def forward(ctx, x: Tensor, encoder: Tensor, b_enc: Tensor, k: int):
        if use_triton(encoder):  # the Triton selection kernel on CUDA, bias and ReLU fused into it
            values, indices = row_topk(torch.nn.functional.linear(x, encoder), k, bias=b_enc, relu=True)
        else:  # torch.topk: the bias goes into the matmul (addmm), not a second pass over the [n, d_sae] scores
            values, indices = row_topk(torch.nn.functional.linear(x, encoder, b_enc), k, relu=True)
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
        return grad_x, grad_encoder, grad_b_enc, None


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
    x: Float[Tensor, "n d_in"], encoder: Float[Tensor, "d_sae d_in"], b_enc: Float[Tensor, " d_sae"], k: int
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    return TopKEncode.apply(x, encoder, b_enc, k)


def sparse_decode(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], w_dec: Float[Tensor, "d_sae d_in"]
) -> Float[Tensor, "n d_in"]:
    return SparseDecode.apply(values, indices, w_dec)
