"""What every SAE architecture shares: the config fields, the four weights, encode / decode, the step output.

The encoder is stored one row per latent (`encoder` [d_sae, d_in], like W_dec) so the sparse backward
reads k rows per token; `W_enc` is its SAELens-layout view [d_in, d_sae]. An architecture overrides
`activation` (inference) and `training_step` (its loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from interp.errors import NonFiniteError, OutOfRangeError, ShapeMismatchError


@dataclass(frozen=True)
class SaeConfig:
    """Fields every architecture has. `unit_norm_decoder`: rows of W_dec renormalised after each step."""

    d_in: int
    d_sae: int
    unit_norm_decoder: bool = True
    seed: int = 0

    architecture: ClassVar[str] = ""

    def __post_init__(self):
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise OutOfRangeError(f"{type(self).__name__}({name}={value!r}): must be a positive integer.")

    def to_dict(self) -> dict:
        return {"architecture": self.architecture, **asdict(self)}


class StepOutput(NamedTuple):
    """One training forward. `loss` is a sum over this process's rows divided by `denominators`."""

    sae_out: Float[Tensor, "n d_in"]
    loss: Float[Tensor, ""]
    fired: Bool[Tensor, " d_sae"]  # latents active on at least one row of the batch
    l0: Float[Tensor, ""]  # mean number of active latents per row (this process)
    aux_loss: Float[Tensor, ""]


class LossScale(NamedTuple):
    """Denominators computed over the global batch (all processes), so per-process losses sum exactly."""

    n_rows: int  # rows in the global batch
    total_variance: float  # sum ||x - mean(x)||^2 over the global batch


class Sae(nn.Module):
    cfg: SaeConfig
    # encode/forward refuse NaN/Inf input (NonFiniteError): a NaN row would otherwise come back as NaN with k "active"
    # latents. Set `sae.check_finite = False` to skip the check (one pass over the input) where speed matters.
    check_finite: bool = True

    def __init__(self, cfg: SaeConfig):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        # Decoder rows random unit vectors, encoder its transpose (Gao et al. 2024 init).
        w_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        w_dec /= w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.encoder = nn.Parameter(w_dec.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    @property
    def W_enc(self) -> Float[Tensor, "d_in d_sae"]:
        return self.encoder.T

    # -- inference ---------------------------------------------------------------------------
    def check_input(self, x: Tensor, argument: str = "x") -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise ShapeMismatchError(
                f"{argument}: last dimension is {x.shape[-1]} but this SAE has d_in={self.cfg.d_in} "
                f"(shape {tuple(x.shape)}). Pass activations of the site the SAE was trained on."
            )
        if self.check_finite and x.is_floating_point() and not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).reshape(-1, x.shape[-1]).any(-1).nonzero()[:, 0]
            raise NonFiniteError(
                f"{argument}: {len(bad)} of {x.numel() // max(1, x.shape[-1])} rows hold NaN or Inf (first: row {int(bad[0])} of the flattened batch). "
                "Check the source activations (dtype overflow, a corrupt shard); set sae.check_finite = False to skip this check."
            )

    def encoder_input(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        """What the encoder multiplies: x - b_dec for an SAE (a transcoder, whose b_dec lives in the output space, takes x)."""
        return x - self.b_dec

    def pre_acts(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        return torch.nn.functional.linear(self.encoder_input(x), self.encoder, self.b_enc)

    @property
    def batch_width(self) -> int:
        """Width of a training row: d_in for an SAE; a transcoder's rows are [input, target] side by side."""
        return self.cfg.d_in

    def input_scale(self, rows: Float[Tensor, "n width"]) -> float | Tensor:
        """The factor training rows are multiplied by so that E||row||^2 = width (folded back out after training)."""
        return math.sqrt(self.batch_width / rows.pow(2).sum(1).mean().item())

    def target(self, rows: Float[Tensor, "n width"]) -> Tensor:
        """What the decoder must reconstruct from a training row (the row itself for an SAE)."""
        return rows

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        self.check_input(x)
        return self.activation(self.pre_acts(x))

    def decode(self, acts: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        return self.decode(self.encode(x))

    # -- training ----------------------------------------------------------------------------
    def training_step(
        self, x: Float[Tensor, "n d_in"], dead: Bool[Tensor, " d_sae"], scale: LossScale, step: int
    ) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def normalise_decoder_(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Project out the gradient along each decoder row: it would only change the row's norm."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Trained on x * scale; afterwards the SAE takes raw x and latents shrink by 1/scale.

        With pre' = pre / scale, TopK order and thresholds' signs are unchanged, and W_dec keeps unit rows.
        """
        self.b_enc /= scale
        self.b_dec /= scale
        self.fold_threshold_scale_(scale)

    def fold_threshold_scale_(self, scale: float) -> None:
        """Architectures with a threshold in pre-activation units divide it by `scale`."""

    def saelens_threshold(self) -> Tensor | None:
        """Per-latent JumpReLU threshold in SAELens's format, for architectures saved as "jumprelu"."""
        return None

    def saelens_weights(self) -> dict[str, Tensor]:
        """The weights under SAELens's names for this architecture (W_enc is [d_in, d_sae])."""
        weights = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        threshold = self.saelens_threshold()
        if threshold is not None:
            weights["threshold"] = threshold
        return weights

    @torch.no_grad()
    def load_saelens_extra_(self, weights: dict[str, Tensor]) -> None:
        """Copy the weights beyond W_enc, b_enc, W_dec, b_dec (and a threshold, which io handles) from SAELens's names."""

    def saelens_extra_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the SAELens weights beyond W_enc, b_enc, W_dec, b_dec that this architecture needs."""
        return {}


def reconstruction_loss(x: Tensor, sae_out: Tensor, scale: LossScale) -> Tensor:
    """Sum of squared errors over the global batch's variance: the FVU when summed over processes."""
    return (sae_out - x).pow(2).sum() / scale.total_variance


def aux_k_loss(
    sae: Sae,
    x: Tensor,
    sae_out: Tensor,
    dead: Tensor,
    k_aux: int,
    scale: LossScale,
    *,
    target: Tensor | None = None,
    pre: Tensor | None = None,
) -> Tensor:
    """AuxK (Gao et al. 2024): the top dead latents reconstruct the main residual, giving them gradient.

    target: what sae_out approximates (x for an SAE, the output site for a transcoder); pre: dead latents' columns
    already computed (all latents' pre-activations), else they are computed from x.
    """
    n_dead = int(dead.sum())
    if n_dead == 0:
        return x.new_zeros(())
    residual = ((x if target is None else target) - sae_out).detach()
    dead_pre = (
        pre[:, dead]
        if pre is not None
        else torch.nn.functional.linear(sae.encoder_input(x), sae.encoder[dead], sae.b_enc[dead])
    )  # only dead columns: cheap when few are dead
    values, local = dead_pre.topk(min(k_aux, n_dead), dim=-1, sorted=False)
    residual_hat = _gather_decode(values.relu(), local, sae.W_dec[dead])
    sums = global_sum(torch.cat([residual.sum(0), residual.pow(2).sum()[None]]))
    residual_variance = float(sums[-1] - sums[:-1].pow(2).sum() / scale.n_rows)
    return (residual_hat - residual).pow(2).sum() / max(residual_variance, 1e-12)


def global_sum(t: Tensor) -> Tensor:
    """Sum over data-parallel processes (identity in a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
    return t


def _gather_decode(values: Tensor, indices: Tensor, w_dec: Tensor) -> Tensor:
    return torch.nn.functional.embedding_bag(indices, w_dec, per_sample_weights=values, mode="sum")


def default_lr(d_sae: int) -> float:
    """Gao et al. 2024's scaling: 2e-4 at 16k latents, shrinking as 1/sqrt(d_sae)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)
