"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token; AuxK revives dead latents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import InterpError, OutOfRangeError
from interp.kernels.topk import row_topk
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput, aux_k_loss, reconstruction_loss
from sae.sparse_ops import sparse_decode, topk_encode


@dataclass(frozen=True)
class TopKConfig(SaeConfig):
    k: int = 32
    k_aux: int | None = None  # latents AuxK lets the dead reconstruct with; None: d_in // 2
    aux_coefficient: float = 1 / 32
    sparse_backward: bool = True  # False: the dense reference path (same gradients, d_sae times the work)
    # None: select the top k on exact scores. "bfloat16" / "float16": the sparse path's [n, d_sae] scores are computed
    # in that dtype only to CHOOSE the k latents; their values and all gradients stay exact (sae.sparse_ops).
    # The dense reference path and inference `encode()` always select on exact scores.
    select_dtype: str | None = None

    architecture: ClassVar[str] = "topk"
    SELECT_DTYPES: ClassVar[tuple[str, ...]] = ("bfloat16", "float16", "float32")

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.k, int) or not 0 < self.k < self.d_sae:
            raise OutOfRangeError(
                f"{type(self).__name__}(k={self.k!r}): k must be an integer with 0 < k < d_sae={self.d_sae}. Lower k or raise d_sae."
            )
        if self.select_dtype is not None and self.select_dtype not in self.SELECT_DTYPES:
            raise InterpError(
                f"{type(self).__name__}(select_dtype={self.select_dtype!r}): must be None (select on exact scores) or "
                f"one of {', '.join(repr(d) for d in self.SELECT_DTYPES)}, the dtype the top-k latents are chosen in."
            )

    @property
    def select_torch_dtype(self) -> torch.dtype | None:
        return None if self.select_dtype is None else getattr(torch, self.select_dtype)


class TopKSae(Sae):
    cfg: TopKConfig

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        rows = pre.reshape(-1, pre.shape[-1])
        indices = row_topk(rows.detach(), self.cfg.k)[1]  # the Triton kernel on CUDA selects; gather keeps autograd
        return torch.zeros_like(rows).scatter(-1, indices, rows.gather(-1, indices).relu()).view_as(pre)

    def encode_topk(self, x: Float[Tensor, "n d_in"]) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
        """Values and indices of the top k (the sparse path, so `cfg.select_dtype` chooses the indices when set;
        `encode()` and the dense reference path always select on exact fp32 scores)."""
        self.check_input(x)
        return topk_encode(x - self.b_dec, self.encoder, self.b_enc, self.cfg.k, self.cfg.select_torch_dtype)

    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        if self.cfg.sparse_backward:
            values, indices = topk_encode(
                x - self.b_dec, self.encoder, self.b_enc, self.cfg.k, self.cfg.select_torch_dtype
            )
            sae_out = sparse_decode(values, indices, self.W_dec) + self.b_dec
        else:
            pre = self.pre_acts(x)
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            values = values.relu()
            sae_out = self.decode(torch.zeros_like(pre).scatter(-1, indices, values))
        active = values > 0
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[active]] = True
        aux = aux_k_loss(self, x, sae_out, dead, self.cfg.k_aux or self.cfg.d_in // 2, scale)
        loss = reconstruction_loss(x, sae_out, scale) + self.cfg.aux_coefficient * aux
        return StepOutput(sae_out, loss, fired, active.sum(-1).float().mean(), aux)
