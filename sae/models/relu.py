"""ReLU SAE with an L1 penalty weighted by decoder norms (Anthropic, April 2024 update).

Weighting each latent's L1 by its decoder row's norm removes the shortcut of shrinking latents while
growing their decoder rows, so the decoder needs no unit-norm constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from jaxtyping import Bool, Float
from torch import Tensor

from interp.errors import OutOfRangeError
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput, reconstruction_loss


@dataclass(frozen=True)
class ReluConfig(SaeConfig):
    l1_coefficient: float = 5e-2  # against the FVU-scaled reconstruction loss, per row
    l1_warmup_steps: int = 0  # the coefficient ramps linearly from 0 over these steps
    unit_norm_decoder: bool = False

    architecture: ClassVar[str] = "relu"

    def __post_init__(self):
        super().__post_init__()
        if self.l1_coefficient < 0:
            raise OutOfRangeError(f"ReluConfig(l1_coefficient={self.l1_coefficient}): must be >= 0.")


class ReluSae(Sae):
    cfg: ReluConfig

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        return pre.relu()

    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        acts = self.activation(self.pre_acts(x))
        sae_out = self.decode(acts)
        weighted_l1 = (acts * self.W_dec.norm(dim=1)).sum() / scale.n_rows
        ramp = min(1.0, (step + 1) / self.cfg.l1_warmup_steps) if self.cfg.l1_warmup_steps else 1.0
        loss = reconstruction_loss(x, sae_out, scale) + ramp * self.cfg.l1_coefficient * weighted_l1
        active = acts > 0
        return StepOutput(sae_out, loss, active.any(0), active.sum(-1).float().mean(), x.new_zeros(()))
