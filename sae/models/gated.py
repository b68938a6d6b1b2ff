"""Gated SAE (Rajamanoharan et al. 2024, "Improving dictionary learning with gated sparse autoencoders").

Two paths share the encoder: the gate pi_gate = (x - b_dec) W + b_gate decides which latents are on
(1[pi_gate > 0]); the magnitude pi_mag = (x - b_dec) (W * exp(r_mag)) + b_mag says how much. The gate's
step has no gradient, so the paper trains it through two extra terms: a decoder-norm-weighted L1 on
ReLU(pi_gate), and the auxiliary loss ||x - x_hat_frozen(ReLU(pi_gate))||^2, the reconstruction from the
gate's ReLU through a copy of the decoder that receives no gradient from it. `b_enc` holds b_gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from interp.errors import OutOfRangeError
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput, reconstruction_loss


@dataclass(frozen=True)
class GatedConfig(SaeConfig):
    l1_coefficient: float = (
        5e-2  # on ReLU(pi_gate) * ||W_dec row||, against the FVU-scaled reconstruction loss, per row
    )
    l1_warmup_steps: int = 0  # the coefficient ramps linearly from 0 over these steps
    aux_coefficient: float = 1.0  # weight of the frozen-decoder reconstruction from the gate (the paper uses 1)
    unit_norm_decoder: bool = False  # the L1 is weighted by decoder norms, as in the paper

    architecture: ClassVar[str] = "gated"

    def __post_init__(self):
        super().__post_init__()
        for name in ("l1_coefficient", "aux_coefficient"):
            if getattr(self, name) < 0:
                raise OutOfRangeError(f"GatedConfig({name}={getattr(self, name)}): must be >= 0.")


class GatedSae(Sae):
    cfg: GatedConfig

    def __init__(self, cfg: GatedConfig):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae))

    def magnitude_pre(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        return torch.nn.functional.linear(self.encoder_input(x), self.encoder * self.r_mag.exp()[:, None], self.b_mag)

    def gated_acts(self, x: Float[Tensor, "*batch d_in"]) -> tuple[Tensor, Tensor]:
        """(activations, pi_gate)."""
        pi_gate = self.pre_acts(x)
        return (pi_gate > 0).to(x.dtype) * self.magnitude_pre(x).relu(), pi_gate

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        self.check_input(x)
        return self.gated_acts(x)[0]

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        raise NotImplementedError("A gated SAE's activation needs both paths: call encode(x).")

    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        acts, pi_gate = self.gated_acts(x)
        sae_out = self.decode(acts)
        gate_relu = pi_gate.relu()
        weighted_l1 = (gate_relu * self.W_dec.norm(dim=1)).sum() / scale.n_rows
        via_gate = gate_relu @ self.W_dec.detach() + self.b_dec.detach()
        aux = (via_gate - x).pow(2).sum() / scale.total_variance
        ramp = min(1.0, (step + 1) / self.cfg.l1_warmup_steps) if self.cfg.l1_warmup_steps else 1.0
        loss = (
            reconstruction_loss(x, sae_out, scale)
            + ramp * self.cfg.l1_coefficient * weighted_l1
            + self.cfg.aux_coefficient * aux
        )
        active = acts > 0
        return StepOutput(sae_out, loss, active.any(0), active.sum(-1).float().mean(), aux.detach())

    @torch.no_grad()
    def fold_threshold_scale_(self, scale: float) -> None:
        self.b_mag /= scale  # b_gate (b_enc) and b_dec are divided by the base class

    def saelens_weights(self) -> dict[str, Tensor]:
        return {
            "W_enc": self.W_enc,
            "b_gate": self.b_enc,
            "r_mag": self.r_mag,
            "b_mag": self.b_mag,
            "W_dec": self.W_dec,
            "b_dec": self.b_dec,
        }

    def saelens_extra_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"b_gate": (self.cfg.d_sae,), "r_mag": (self.cfg.d_sae,), "b_mag": (self.cfg.d_sae,)}

    @torch.no_grad()
    def load_saelens_extra_(self, weights: dict[str, Tensor]) -> None:
        self.b_enc.copy_(weights["b_gate"])
        self.r_mag.copy_(weights["r_mag"])
        self.b_mag.copy_(weights["b_mag"])
