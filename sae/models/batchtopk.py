"""BatchTopK SAE (Bussmann et al. 2024): the k * n largest activations over the whole batch.

Training selects over the batch; inference cannot, so it uses a threshold learned during training
(an exponential moving average of the smallest selected activation), i.e. a JumpReLU with one threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp.errors import OutOfRangeError
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput, aux_k_loss, reconstruction_loss


@dataclass(frozen=True)
class BatchTopKConfig(SaeConfig):
    k: int = 32  # mean active latents per row over a batch
    k_aux: int | None = None
    aux_coefficient: float = 1 / 32
    threshold_lr: float = 0.01  # weight of each batch's smallest selected activation in the threshold's average

    architecture: ClassVar[str] = "batchtopk"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.k, int) or not 0 < self.k < self.d_sae:
            raise OutOfRangeError(
                f"{type(self).__name__}(k={self.k!r}): k must be an integer with 0 < k < d_sae={self.d_sae}. Lower k or raise d_sae."
            )


class BatchTopKSae(Sae):
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        return pre.relu() * (pre > self.threshold.to(pre.dtype))

    def batch_topk(self, pre: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d_sae"]:
        flat = pre.relu().flatten()
        values, indices = flat.topk(self.cfg.k * len(pre), sorted=False)
        return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre)

    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        acts = self.batch_topk(self.pre_acts(x))
        sae_out = self.decode(acts)
        active = acts > 0
        self._update_threshold(acts[active].detach())
        aux = aux_k_loss(self, x, sae_out, dead, self.cfg.k_aux or self.cfg.d_in // 2, scale)
        loss = reconstruction_loss(x, sae_out, scale) + self.cfg.aux_coefficient * aux
        return StepOutput(sae_out, loss, active.any(0), active.sum(-1).float().mean(), aux)

    @torch.no_grad()
    def _update_threshold(self, selected: Tensor) -> None:
        smallest = selected.min().double() if len(selected) else torch.tensor(float("inf"), dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(smallest, op=torch.distributed.ReduceOp.MIN)
        if torch.isfinite(smallest):
            lr = self.cfg.threshold_lr
            self.threshold.copy_(smallest if self.threshold == 0 else (1 - lr) * self.threshold + lr * smallest)

    def fold_threshold_scale_(self, scale: float) -> None:
        self.threshold /= scale

    def saelens_threshold(self) -> Tensor:
        return torch.full((self.cfg.d_sae,), float(self.threshold), dtype=self.b_enc.dtype)
