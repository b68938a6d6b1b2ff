"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): nested dictionaries inside one.

The latents are ordered; each prefix 0..m_i of them must reconstruct x on its own. Activations are chosen
by BatchTopK over all latents (the k * n largest in the batch), and the loss is the sum over the prefixes
of the reconstruction loss of that prefix's partial decode, the full width included (SAELens's
matryoshka_batchtopk sums them the same way). Early latents are pushed to carry general, frequent
directions, which the paper shows reduces feature absorption. Inference is BatchTopK's: one learned threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


from jaxtyping import Bool, Float
from torch import Tensor

from interp.errors import OutOfRangeError
from sae.models.base import LossScale, StepOutput, aux_k_loss, reconstruction_loss
from sae.models.batchtopk import BatchTopKConfig, BatchTopKSae


@dataclass(frozen=True)
class MatryoshkaConfig(BatchTopKConfig):
    widths: tuple[int, ...] = ()  # increasing prefix sizes; d_sae is appended if missing; (): d_sae/8, /4, /2, d_sae

    architecture: ClassVar[str] = "matryoshka"

    def __post_init__(self):
        super().__post_init__()
        widths = tuple(int(w) for w in self.widths) or tuple(
            w for w in (self.d_sae // 8, self.d_sae // 4, self.d_sae // 2) if w > 0
        )
        if not widths or widths[-1] != self.d_sae:
            widths = (*widths, self.d_sae)
        if any(w <= 0 for w in widths) or any(a >= b for a, b in zip(widths, widths[1:])) or widths[-1] > self.d_sae:
            raise OutOfRangeError(
                f"MatryoshkaConfig(widths={self.widths!r}): prefix widths must be positive, strictly increasing and at most d_sae={self.d_sae}."
            )
        object.__setattr__(self, "widths", widths)


class MatryoshkaSae(BatchTopKSae):
    cfg: MatryoshkaConfig

    def prefix_decodes(self, acts: Float[Tensor, "n d_sae"]) -> list[Float[Tensor, "n d_in"]]:
        """The reconstruction from each prefix of latents, in order of width (the last is the full decode)."""
        out, decoded, start = [], self.b_dec.expand(len(acts), -1), 0
        for width in self.cfg.widths:
            decoded = decoded + acts[:, start:width] @ self.W_dec[start:width]
            out.append(decoded)
            start = width
        return out

    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        pre = self.pre_acts(x)
        acts = self.batch_topk(pre)
        decodes = self.prefix_decodes(acts)
        sae_out = decodes[-1]
        active = acts > 0
        self._update_threshold(acts[active].detach())
        aux = aux_k_loss(self, x, sae_out, dead, self.cfg.k_aux or self.cfg.d_in // 2, scale, pre=pre)
        loss = sum(reconstruction_loss(x, d, scale) for d in decodes) + self.cfg.aux_coefficient * aux
        return StepOutput(sae_out, loss, active.any(0), active.sum(-1).float().mean(), aux)
