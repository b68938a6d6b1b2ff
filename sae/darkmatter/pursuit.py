"""Inference-time gradient pursuit with an SAE's own decoder: a better sparse code for the same dictionary and L0."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ShapeMismatchError
from sae.models import Sae


@torch.no_grad()
def gradient_pursuit(sae: Sae, x: Float[Tensor, "n d_in"], k: Int[Tensor, " n"]) -> Float[Tensor, "n d_sae"]:
    """Non-negative codes of x - b_dec over the rows of W_dec, k[i] latents for token i.

    Each step adds the latent whose decoder row best matches the residual (argmax of W_dec r) to the
    support, moves the support's coefficients along the gradient of ||r||^2 restricted to the support
    with the exactly optimal step size, and clamps them at 0. Token i stops after k[i] steps.
    """
    sae.check_input(x)
    if k.shape != (len(x),):
        raise ShapeMismatchError(f"k: expected one L0 per row of x, shape ({len(x)},), got {tuple(k.shape)}.")
    decoder = sae.W_dec.detach().float()  # [d_sae, d_in]
    target = x.float() - sae.b_dec.detach().float()
    n, steps = len(x), int(k.max()) if len(k) else 0
    support = torch.zeros(
        n, steps, dtype=torch.long
    )  # latent ids, in the order they joined; padding slots hold latent 0 with weight 0
    in_support = torch.zeros(n, steps, dtype=torch.bool)
    coefficients = torch.zeros(n, steps)
    residual = target.clone()
    rows = torch.arange(n)
    for step in range(steps):
        running = step < k
        match = (
            residual @ decoder.T
        )  # [n, d_sae]: minus the gradient of ||r||^2 / 2 in every coefficient; the one dense product per step
        taken = (
            torch.zeros_like(match).scatter_add_(1, support, in_support.float()) > 0
        )  # add, not write: padding slots also point at latent 0
        support[:, step] = match.masked_fill(taken, float("-inf")).argmax(-1)
        in_support[:, step] = running
        rows_of_support = decoder[support]  # [n, steps, d_in]
        direction = torch.where(in_support, match.gather(1, support), 0.0)
        moved = torch.einsum("ns,nsd->nd", direction, rows_of_support)
        # <r, D g> = <D^T r, g> = ||g||^2 on the support: the exact line minimiser of ||r - eta D g||^2.
        size = torch.where(running, direction.pow(2).sum(-1) / moved.pow(2).sum(-1).clamp_min(1e-30), 0.0)
        coefficients = (coefficients + size[:, None] * direction).clamp_min(0)
        residual = target - torch.einsum("ns,nsd->nd", coefficients, rows_of_support)
    codes = torch.zeros(n, sae.cfg.d_sae)
    return codes.index_put_(
        (rows[:, None].expand_as(support), support), torch.where(in_support, coefficients, 0.0), accumulate=True
    )


def pursuit_reconstruction(sae: Sae, x: Float[Tensor, "n d_in"], k: Int[Tensor, " n"]) -> Float[Tensor, "n d_in"]:
    return gradient_pursuit(sae, x, k) @ sae.W_dec.detach().float() + sae.b_dec.detach().float()
