"""The two hot steps of patching, each a Triton kernel beside its torch twin.

Every per-head / per-neuron / per-position activation is viewed as `[batch, pos, group, width]`:
z is `[batch, pos, head, d_head]`, mlp_post `[batch, pos, neuron, 1]`, resid `[batch, pos, 1, d_model]`.

    patched_batch       out[v, b, p, g] = clean[b, p, g]     if variant v selects (p, g)
                                        = corrupted[b, p, g] otherwise          -> [V * batch, pos, group, width]
    attribution_scores  out[p, g] = sum_{b, w} (clean - corrupted)[b, p, g, w] * grad[b, p, g, w]   -> [pos, group]

A variant selects one position (or ALL) and one group (or ALL); NONE selects nothing, so a batch can
hold variants that patch elsewhere. Neither step materialises a per-variant mask.
`patched_batch` and `attribution_scores` pick Triton on CUDA and the twin elsewhere.
"""

from __future__ import annotations


import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.kernels import triton_available  # noqa: F401  (re-exported: each kernel module says whether its kernel can run)
from interp.kernels import use_triton as _use_triton
from interp.errors import ShapeMismatchError

ALL = -1  # a variant's position or group selector: every position / group
NONE = -2  # a variant's group selector: patch nothing (the variant stays corrupted here)


def _check_pair(clean: Tensor, corrupted: Tensor, argument: str = "corrupted") -> None:
    if clean.ndim != 4 or clean.shape != corrupted.shape:
        raise ShapeMismatchError(
            f"{argument}: expected the shape of clean, 4-d [batch, pos, group, width], got clean {tuple(clean.shape)} and {argument} {tuple(corrupted.shape)}."
        )


def _check_selectors(positions: Tensor, groups: Tensor) -> None:
    if positions.ndim != 1 or positions.shape != groups.shape:
        raise ShapeMismatchError(
            f"positions and groups: expected two 1-d tensors of one length (one entry per variant), got {tuple(positions.shape)} and {tuple(groups.shape)}."
        )


# -- torch twins -----------------------------------------------------------------------------
def patched_batch_torch(
    clean: Float[Tensor, "batch pos group width"],
    corrupted: Float[Tensor, "batch pos group width"],
    positions: Int[Tensor, " variants"],
    groups: Int[Tensor, " variants"],
) -> Float[Tensor, "variants_x_batch pos group width"]:
    _check_pair(clean, corrupted)
    _check_selectors(positions, groups)
    batch, n_pos, n_groups, width = clean.shape
    pos_hit = (positions[:, None] == ALL) | (
        positions[:, None] == torch.arange(n_pos, device=positions.device)
    )  # [V, pos]
    group_hit = (groups[:, None] == ALL) | (
        groups[:, None] == torch.arange(n_groups, device=groups.device)
    )  # [V, group]
    selected = (pos_hit[:, :, None] & group_hit[:, None, :])[
        :, None, :, :, None
    ]  # [V, 1, pos, group, 1], broadcast below
    return torch.where(selected, clean[None], corrupted[None]).reshape(-1, n_pos, n_groups, width)


def attribution_scores_torch(
    clean: Float[Tensor, "batch pos group width"],
    corrupted: Float[Tensor, "batch pos group width"],
    grad: Float[Tensor, "batch pos group width"],
) -> Float[Tensor, "pos group"]:
    _check_pair(clean, corrupted)
    _check_pair(clean, grad, "grad")
    return torch.einsum("bpgw,bpgw->pg", (clean - corrupted).float(), grad.float())


# -- Triton kernels --------------------------------------------------------------------------
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def build_kernel(
        clean, corrupted, positions, groups, out, batch, per_sequence, n_groups, width, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0)  # output sequence = variant * batch + prompt
        variant = row // batch
        prompt = row % batch
        offsets = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < per_sequence
        pos = offsets // (n_groups * width)
        group = (offsets // width) % n_groups
        want_pos = tl.load(positions + variant) + 0 * pos  # broadcast the selectors to vectors
        want_group = tl.load(groups + variant) + 0 * group
        hit = ((want_pos == -1) | (pos == want_pos)) & ((want_group == -1) | (group == want_group))
        source = prompt * per_sequence + offsets
        from_clean = tl.load(clean + source, mask=inside & hit, other=0.0)
        from_corrupted = tl.load(corrupted + source, mask=inside & (hit == 0), other=0.0)
        tl.store(out + row * per_sequence + offsets, tl.where(hit, from_clean, from_corrupted), mask=inside)

    @triton.jit
    def scores_kernel(
        clean, corrupted, grad, out, batch, n_pos, n_groups, width, BLOCK_G: tl.constexpr, BLOCK_W: tl.constexpr
    ):
        pos = tl.program_id(0)
        groups = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        group_ok = groups < n_groups
        acc = tl.zeros([BLOCK_G], dtype=tl.float32)
        for b in range(batch):
            base = (b * n_pos + pos) * n_groups * width
            for start in range(0, width, BLOCK_W):
                cols = start + tl.arange(0, BLOCK_W)
                ok = group_ok[:, None] & (cols < width)[None, :]
                at = base + groups[:, None] * width + cols[None, :]
                delta = tl.load(clean + at, mask=ok, other=0.0).to(tl.float32) - tl.load(
                    corrupted + at, mask=ok, other=0.0
                ).to(tl.float32)
                acc += tl.sum(delta * tl.load(grad + at, mask=ok, other=0.0).to(tl.float32), axis=1)
        tl.store(out + pos * n_groups + groups, acc, mask=group_ok)

    return build_kernel, scores_kernel


_KERNELS = None


def _get_kernels():
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _kernels()
    return _KERNELS


BLOCK = 1024


def patched_batch_triton(
    clean: Float[Tensor, "batch pos group width"],
    corrupted: Float[Tensor, "batch pos group width"],
    positions: Int[Tensor, " variants"],
    groups: Int[Tensor, " variants"],
) -> Float[Tensor, "variants_x_batch pos group width"]:
    _check_pair(clean, corrupted)
    _check_selectors(positions, groups)
    batch, n_pos, n_groups, width = clean.shape
    per_sequence = n_pos * n_groups * width
    out = torch.empty(len(positions) * batch, n_pos, n_groups, width, device=clean.device, dtype=clean.dtype)
    grid = (len(positions) * batch, -(-per_sequence // BLOCK))
    _get_kernels()[0][grid](
        clean.contiguous(),
        corrupted.contiguous(),
        positions.contiguous(),
        groups.contiguous(),
        out,
        batch,
        per_sequence,
        n_groups,
        width,
        BLOCK=BLOCK,
    )
    return out


def attribution_scores_triton(
    clean: Float[Tensor, "batch pos group width"],
    corrupted: Float[Tensor, "batch pos group width"],
    grad: Float[Tensor, "batch pos group width"],
) -> Float[Tensor, "pos group"]:
    _check_pair(clean, corrupted)
    _check_pair(clean, grad, "grad")
    batch, n_pos, n_groups, width = clean.shape
    out = torch.empty(n_pos, n_groups, device=clean.device, dtype=torch.float32)
    block_g = 32
    block_w = min(128, max(1, 1 << (width - 1).bit_length()))
    _get_kernels()[1][(n_pos, -(-n_groups // block_g))](
        clean.contiguous(),
        corrupted.contiguous(),
        grad.contiguous(),
        out,
        batch,
        n_pos,
        n_groups,
        width,
        BLOCK_G=block_g,
        BLOCK_W=block_w,
    )
    return out


# -- dispatch: the kernel on CUDA, the torch twin elsewhere -----------------------------------
def patched_batch(
    clean: Float[Tensor, "batch pos group width"],
    corrupted: Float[Tensor, "batch pos group width"],
    positions: Int[Tensor, " variants"],
    groups: Int[Tensor, " variants"],
) -> Float[Tensor, "variants_x_batch pos group width"]:
    """V copies of `corrupted`, copy v with the clean slice (positions[v], groups[v]) written in."""
    return (patched_batch_triton if _use_triton(clean) else patched_batch_torch)(clean, corrupted, positions, groups)


def attribution_scores(
    clean: Float[Tensor, "batch pos group width"],
    corrupted: Float[Tensor, "batch pos group width"],
    grad: Float[Tensor, "batch pos group width"],
) -> Float[Tensor, "pos group"]:
    """(clean - corrupted) x grad summed over prompts and width: one first-order effect per (pos, group)."""
    return (attribution_scores_triton if _use_triton(clean) else attribution_scores_torch)(clean, corrupted, grad)
