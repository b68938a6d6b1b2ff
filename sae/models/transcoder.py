"""Transcoders (Dunefsky et al. 2024) and skip transcoders (Paulo et al. 2025): read one site, write another.

A transcoder replaces an MLP: it encodes the MLP's input x (blocks.L.ln2.hook_normalized) into sparse
latents and decodes them into the MLP's output y (blocks.L.hook_mlp_out):
    y_hat = act(x W_enc + b_enc) W_dec + b_dec  (+ x W_skip^T for the skip transcoder)
b_dec lives in the output space, so the encoder takes x itself (SAELens: apply_b_dec_to_input=False).
The activation is TopK (sparsify's transcoders; AuxK revives dead latents) or, with k=None, ReLU with a
decoder-norm-weighted L1 (SAELens's "transcoder" / "skip_transcoder", which load both ways).

Training rows are [x, y] side by side (d_in + d_out wide; sae.activations.ModelBatches with two sites
gives them); the trainer reconstructs `target(rows)` = y. Input normalisation scales x by s_x and y by s_y
(each to E||.||^2 = its width: an MLP's output is often far smaller than its normalised input), folded out
after training: act(s_x x W + b) = s_x act(x W + b / s_x) for ReLU and TopK, so b_enc /= s_x, W_dec and W_skip
*= s_x / s_y, b_dec /= s_y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from interp.errors import OutOfRangeError, ShapeMismatchError
from sae.models.base import LossScale, Sae, SaeConfig, StepOutput, aux_k_loss
from sae.sparse_ops import sparse_decode, topk_encode


@dataclass(frozen=True)
class TranscoderConfig(SaeConfig):
    d_out: int = 0  # width of the output site; 0: d_in
    k: int | None = 32  # TopK latents per token; None: ReLU with an L1 penalty
    k_aux: int | None = None  # AuxK latents (TopK only); None: d_out // 2
    aux_coefficient: float = 1 / 32
    l1_coefficient: float = 5e-2  # ReLU only: on act * ||W_dec row||, against the FVU-scaled loss, per row

    architecture: ClassVar[str] = "transcoder"
    skip: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        if self.d_out == 0:
            object.__setattr__(self, "d_out", self.d_in)
        if not isinstance(self.d_out, int) or self.d_out <= 0:
            raise OutOfRangeError(f"{type(self).__name__}(d_out={self.d_out!r}): must be a positive integer (0: d_in).")
        if self.k is not None and (not isinstance(self.k, int) or not 0 < self.k < self.d_sae):
            raise OutOfRangeError(
                f"{type(self).__name__}(k={self.k!r}): k must be an integer with 0 < k < d_sae={self.d_sae}, or None for ReLU."
            )


@dataclass(frozen=True)
class SkipTranscoderConfig(TranscoderConfig):
    architecture: ClassVar[str] = "skip_transcoder"
    skip: ClassVar[bool] = True


class Transcoder(Sae):
    cfg: TranscoderConfig

    def __init__(self, cfg: TranscoderConfig):
        super().__init__(cfg)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        w_dec = torch.randn(cfg.d_sae, cfg.d_out, generator=gen)
        encoder = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        self.W_dec = nn.Parameter(w_dec / w_dec.norm(dim=1, keepdim=True))
        self.encoder = nn.Parameter(encoder / encoder.norm(dim=1, keepdim=True))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_out, cfg.d_in))

    def encoder_input(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        return x

    @property
    def batch_width(self) -> int:
        return self.cfg.d_in + self.cfg.d_out

    def target(self, rows: Float[Tensor, "n width"]) -> Float[Tensor, "n d_out"]:
        return rows[..., self.cfg.d_in :]

    def input_scale(self, rows: Float[Tensor, "n width"]) -> Tensor:
        x, y = self.split(rows)
        s_x = (self.cfg.d_in / x.pow(2).sum(1).mean()).sqrt()
        s_y = (self.cfg.d_out / y.pow(2).sum(1).mean()).sqrt()
        return torch.cat([s_x.expand(self.cfg.d_in), s_y.expand(self.cfg.d_out)]).float()

    @torch.no_grad()
    def fold_input_scale_(self, scale: float | Tensor) -> None:
        scale = torch.as_tensor(scale, dtype=torch.float64).reshape(-1)
        s_x, s_y = float(scale[0]), float(scale[-1])
        self.b_enc /= s_x
        self.W_dec *= s_x / s_y
        self.b_dec /= s_y
        if self.cfg.skip:
            self.W_skip *= s_x / s_y

    def split(self, rows: Float[Tensor, "n width"]) -> tuple[Tensor, Tensor]:
        if rows.shape[-1] != self.batch_width:
            raise ShapeMismatchError(
                f"transcoder rows: {rows.shape[-1]} wide, expected d_in + d_out = {self.cfg.d_in} + {self.cfg.d_out} "
                "(the input site's activation and the output site's side by side)."
            )
        return rows[..., : self.cfg.d_in], rows[..., self.cfg.d_in :]

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        if self.cfg.k is None:
            return pre.relu()
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def skip_out(self, x: Float[Tensor, "*batch d_in"]) -> Tensor:
        return x @ self.W_skip.T if self.cfg.skip else 0

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_out"]:
        return self.decode(self.encode(x)) + self.skip_out(x)

    def training_step(
        self, rows: Float[Tensor, "n width"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        x, y = self.split(rows)
        if self.cfg.k is None:
            acts = self.activation(self.pre_acts(x))
            sae_out = self.decode(acts) + self.skip_out(x)
            loss = (sae_out - y).pow(2).sum() / scale.total_variance
            loss = loss + self.cfg.l1_coefficient * (acts * self.W_dec.norm(dim=1)).sum() / scale.n_rows
            active = acts > 0
            return StepOutput(sae_out, loss, active.any(0), active.sum(-1).float().mean(), x.new_zeros(()))
        # TopK: the sparse forward and backward TopK SAEs use (k rows of the encoder and decoder per token)
        values, indices = topk_encode(x, self.encoder, self.b_enc, self.cfg.k)
        sae_out = sparse_decode(values, indices, self.W_dec) + self.b_dec + self.skip_out(x)
        loss = (sae_out - y).pow(2).sum() / scale.total_variance
        aux = aux_k_loss(self, x, sae_out, dead, self.cfg.k_aux or self.cfg.d_out // 2, scale, target=y)
        loss = loss + self.cfg.aux_coefficient * aux
        active = values > 0
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[active]] = True
        return StepOutput(sae_out, loss, fired, active.sum(-1).float().mean(), aux)

    def saelens_weights(self) -> dict[str, Tensor]:
        weights = super().saelens_weights()
        if self.cfg.skip:
            weights["W_skip"] = self.W_skip
        return weights

    def saelens_extra_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W_skip": (self.cfg.d_out, self.cfg.d_in)} if self.cfg.skip else {}

    @torch.no_grad()
    def load_saelens_extra_(self, weights: dict[str, Tensor]) -> None:
        if self.cfg.skip:
            self.W_skip.copy_(weights["W_skip"])


class SkipTranscoder(Transcoder):
    cfg: SkipTranscoderConfig
