"""Sparse-by-rows products: each output row touches k rows of a weight matrix, never all of them.

A TopK SAE's decoder forward, its backward, and its encoder's backward are all one of three products
of `indices [n, k]` (which rows) with a dense `rows [m, d]` matrix:

    rows_sum   out[i]    = sum_j values[i, j] * rows[indices[i, j]]          -> [n, d]
    rows_dot   out[i, j] = <dense[i], rows[indices[i, j]]>                   -> [n, k]
    rows_grad  out[r]    = sum_{i,j: indices[i,j]=r} values[i, j] * dense[i] -> [m, d]

Each has a torch twin (`*_torch`) and a Triton kernel (`*_triton`); `rows_sum` etc. pick Triton on CUDA.
"""

from __future__ import annotations

import warnings

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.kernels import triton_available  # noqa: F401  (re-exported: each kernel module says whether its kernel can run)
from interp.kernels import use_triton as _use_triton


# -- torch twins -----------------------------------------------------------------------------
def rows_sum_torch(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "m d"]
) -> Float[Tensor, "n d"]:
    return torch.nn.functional.embedding_bag(indices, rows, per_sample_weights=values.to(rows.dtype), mode="sum")


def rows_dot_torch(
    dense: Float[Tensor, "n d"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "m d"]
) -> Float[Tensor, "n k"]:
    # A sampled dense-dense product: only the n*k entries of dense @ rows.T that are asked for.
    (n, k), m = indices.shape, rows.shape[0]
    sorted_idx, order = indices.sort(dim=1)  # CSR wants each row's columns in order
    if (sorted_idx[:, 1:] == sorted_idx[:, :-1]).any():  # a repeated row in one token (never from TopK): gather instead
        return torch.bmm(rows[indices], dense[:, :, None])[..., 0]
    crow = torch.arange(0, n * k + 1, k, device=indices.device)
    with warnings.catch_warnings():  # torch calls CSR "beta"; the product used here is stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        pattern = torch.sparse_csr_tensor(
            crow, sorted_idx.reshape(-1), dense.new_zeros(n * k), (n, m), check_invariants=False
        )
    picked = torch.sparse.sampled_addmm(pattern, dense, rows.T, beta=0.0).values().view(n, k)
    return torch.empty_like(picked).scatter_(1, order, picked)


def rows_grad_torch(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], dense: Float[Tensor, "n d"], n_rows: int
) -> Float[Tensor, "m d"]:
    # The transpose of the [n, m] sparse matrix of values, times dense; duplicates sum. Built in CSR order (entries
    # sorted by row of the output, a stable sort keeping each row's tokens in order): torch's CSR product is about
    # twice as fast on CPU as a COO one, which sorts (coalesces) on every call.
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=indices.device)
    crow[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)
    with warnings.catch_warnings():  # torch calls CSR "beta"; the product used here is stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        transposed = torch.sparse_csr_tensor(
            crow, order // k, values.reshape(-1)[order].to(dense.dtype), (n_rows, n), check_invariants=False
        )
    return transposed @ dense


# -- Triton kernels --------------------------------------------------------------------------
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rows_sum_kernel(values, indices, rows, out, k, d, BLOCK_D: tl.constexpr):
        i = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = cols < d
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for j in range(k):
            r = tl.load(indices + i * k + j)
            v = tl.load(values + i * k + j).to(tl.float32)
            acc += v * tl.load(rows + r * d + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out + i * d + cols, acc, mask=mask)

    @triton.jit
    def rows_dot_kernel(dense, indices, rows, out, k, d, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
        i = tl.program_id(0)
        js = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        jmask = js < k
        r = tl.load(indices + i * k + js, mask=jmask, other=0)
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for start in range(0, d, BLOCK_D):
            cols = start + tl.arange(0, BLOCK_D)
            cmask = cols < d
            x = tl.load(dense + i * d + cols, mask=cmask, other=0.0).to(tl.float32)
            w = tl.load(rows + r[:, None] * d + cols[None, :], mask=jmask[:, None] & cmask[None, :], other=0.0).to(
                tl.float32
            )
            acc += tl.sum(w * x[None, :], axis=1)
        tl.store(out + i * k + js, acc, mask=jmask)

    @triton.jit
    def rows_grad_kernel(values, indices, dense, out, k, d, BLOCK_D: tl.constexpr):
        i = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = cols < d
        x = tl.load(dense + i * d + cols, mask=mask, other=0.0).to(tl.float32)
        for j in range(k):
            r = tl.load(indices + i * k + j)
            v = tl.load(values + i * k + j).to(tl.float32)
            tl.atomic_add(out + r * d + cols, v * x, mask=mask)

    return rows_sum_kernel, rows_dot_kernel, rows_grad_kernel


_KERNELS = None


def _get_kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _kernels()
    return _KERNELS


BLOCK_D = 128


def rows_sum_triton(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "m d"]
) -> Float[Tensor, "n d"]:
    (n, k), d = indices.shape, rows.shape[1]
    out = torch.empty(n, d, device=rows.device, dtype=torch.float32)
    _get_kernels()[0][(n, -(-d // BLOCK_D))](
        values.contiguous(), indices.contiguous(), rows.contiguous(), out, k, d, BLOCK_D=BLOCK_D
    )
    return out.to(rows.dtype)


def rows_dot_triton(
    dense: Float[Tensor, "n d"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "m d"]
) -> Float[Tensor, "n k"]:
    (n, k), d = indices.shape, rows.shape[1]
    out = torch.empty(n, k, device=rows.device, dtype=torch.float32)
    block_k = 16
    _get_kernels()[1][(n, -(-k // block_k))](
        dense.contiguous(), indices.contiguous(), rows.contiguous(), out, k, d, BLOCK_K=block_k, BLOCK_D=BLOCK_D
    )
    return out.to(dense.dtype)


def rows_grad_triton(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], dense: Float[Tensor, "n d"], n_rows: int
) -> Float[Tensor, "m d"]:
    (n, k), d = indices.shape, dense.shape[1]
    out = torch.zeros(n_rows, d, device=dense.device, dtype=torch.float32)
    _get_kernels()[2][(n, -(-d // BLOCK_D))](
        values.contiguous(), indices.contiguous(), dense.contiguous(), out, k, d, BLOCK_D=BLOCK_D
    )
    return out.to(dense.dtype)


# -- dispatch: the kernel on CUDA, the torch twin elsewhere -----------------------------------
def rows_sum(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "m d"]
) -> Float[Tensor, "n d"]:
    return (rows_sum_triton if _use_triton(rows) else rows_sum_torch)(values, indices, rows)


def rows_dot(
    dense: Float[Tensor, "n d"], indices: Int[Tensor, "n k"], rows: Float[Tensor, "m d"]
) -> Float[Tensor, "n k"]:
    return (rows_dot_triton if _use_triton(rows) else rows_dot_torch)(dense, indices, rows)


def rows_grad(
    values: Float[Tensor, "n k"], indices: Int[Tensor, "n k"], dense: Float[Tensor, "n d"], n_rows: int
) -> Float[Tensor, "m d"]:
    return (rows_grad_triton if _use_triton(dense) else rows_grad_torch)(values, indices, dense, n_rows)
