"""JumpReLU SAE (Rajamanoharan et al. 2024): a per-latent threshold, trained with an L0 penalty.

The step function has no gradient, so both the activation and the L0 count pass a straight-through
estimate to the threshold: a rectangle kernel of width `bandwidth` around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from interp.errors import OutOfRangeError
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput, reconstruction_loss


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReluFunction(torch.autograd.Function):
    """pre * H(pre - threshold); d/dthreshold = -(threshold / bandwidth) K((pre - threshold) / bandwidth)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_pre = (pre > threshold) * grad_out
        ste = (threshold / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad_out
        return grad_pre, -ste.reshape(-1, ste.shape[-1]).sum(0), None


class StepFunction(torch.autograd.Function):
    """H(pre - threshold); d/dthreshold = -(1 / bandwidth) K((pre - threshold) / bandwidth); none to pre."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        pre, threshold = ctx.saved_tensors
        ste = _rectangle((pre - threshold) / ctx.bandwidth) * grad_out / ctx.bandwidth
        return None, -ste.reshape(-1, ste.shape[-1]).sum(0), None


@dataclass(frozen=True)
class JumpReluConfig(SaeConfig):
    l0_coefficient: float = 2e-3  # against the FVU-scaled reconstruction loss, per row
    bandwidth: float = 0.05  # in units of the normalised input (E||x||^2 = d_in)
    init_threshold: float = 0.1

    architecture: ClassVar[str] = "jumprelu"

    def __post_init__(self):
        super().__post_init__()
        for name in ("bandwidth", "init_threshold"):
            if getattr(self, name) <= 0:
                raise OutOfRangeError(f"JumpReluConfig({name}={getattr(self, name)}): must be > 0.")


class JumpReluSae(Sae):
    cfg: JumpReluConfig

    def __init__(self, cfg: JumpReluConfig):
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.init_threshold)))

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        return self.log_threshold.exp()

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        return pre * (pre > self.threshold)

    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        pre = self.pre_acts(x)
        threshold = self.threshold
        acts = JumpReluFunction.apply(pre, threshold, self.cfg.bandwidth)
        sae_out = self.decode(acts)
        l0 = StepFunction.apply(pre, threshold, self.cfg.bandwidth).sum() / scale.n_rows
        loss = reconstruction_loss(x, sae_out, scale) + self.cfg.l0_coefficient * l0
        active = acts > 0
        return StepOutput(sae_out, loss, active.any(0), active.sum(-1).float().mean(), x.new_zeros(()))

    @torch.no_grad()
    def fold_threshold_scale_(self, scale: float) -> None:
        self.log_threshold -= math.log(scale)

    def saelens_threshold(self) -> Tensor:
        return self.threshold.detach().clone()
