"""A setting with known truth: sparse features, activation noise the 'SAE' cannot see, and noise in its reconstruction.

x = F + a_t n_t (activation noise) and Sae(x) = F + b_t m_t (reconstruction noise), where F is a sparse sum
of known features, so e = a_t n_t - b_t m_t. The activation noise is part of x, so a linear map from x can
recover it; the reconstruction noise is independent of x, so it cannot. The estimators pass when the
linear error's norm tracks ||a_t n_t|| and the nonlinear error's norm tracks ||b_t m_t|| (the 2 x 2 table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from interp.errors import OutOfRangeError
from sae.darkmatter.decomposition import decompose_error


@dataclass(frozen=True)
class SyntheticSpec:
    d_model: int = 64
    n_features: int = 256
    feature_rank: int = 32  # the features span this many dimensions; the rest of the space carries only noise
    active_per_token: int = 4
    n_tokens: int = 20_000
    max_activation_noise: float = 1.0  # a_t ~ U(0, max) times a unit-variance-per-dimension Gaussian / sqrt(d)
    max_reconstruction_noise: float = 1.0
    noise_in_feature_span: bool = (
        False  # True: activation noise in every direction, part of it indistinguishable from features
    )
    fit_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.feature_rank <= self.d_model:
            raise OutOfRangeError(
                f"SyntheticSpec(feature_rank={self.feature_rank}): must be in 1..d_model={self.d_model}."
            )
        if not 0 < self.active_per_token <= self.n_features:
            raise OutOfRangeError(
                f"SyntheticSpec(active_per_token={self.active_per_token}): must be in 1..n_features={self.n_features}."
            )
        if not 0 < self.fit_fraction < 1:
            raise OutOfRangeError(
                f"SyntheticSpec(fit_fraction={self.fit_fraction}): must be strictly between 0 and 1 (fit and held-out tokens are disjoint)."
            )
        if self.max_activation_noise < 0 or self.max_reconstruction_noise < 0:
            raise OutOfRangeError("SyntheticSpec: noise levels must be >= 0.")


class SyntheticData(NamedTuple):
    x: Float[Tensor, "n d"]
    sae_out: Float[Tensor, "n d"]
    clean: Float[Tensor, "n d"]  # the sparse sum of known features
    activation_noise: Float[Tensor, "n d"]
    reconstruction_noise: Float[Tensor, "n d"]


def synthetic_activations(spec: SyntheticSpec) -> SyntheticData:
    gen = torch.Generator().manual_seed(spec.seed)
    n, d = spec.n_tokens, spec.d_model
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))[
        0
    ]  # a random rotation hides the split of the space
    features = torch.randn(spec.n_features, spec.feature_rank, generator=gen, dtype=torch.float64)
    features = features / features.norm(dim=1, keepdim=True) @ basis[:, : spec.feature_rank].T
    active = torch.rand(n, spec.n_features, generator=gen).argsort(dim=1)[:, : spec.active_per_token]
    magnitudes = torch.empty(n, spec.active_per_token, dtype=torch.float64).exponential_(1.0, generator=gen) + 0.5
    clean = torch.zeros(n, spec.n_features, dtype=torch.float64).scatter(1, active, magnitudes) @ features
    noise_basis = basis if spec.noise_in_feature_span else basis[:, spec.feature_rank :]
    activation_noise = torch.randn(n, noise_basis.shape[1], generator=gen, dtype=torch.float64) @ noise_basis.T / d**0.5
    activation_noise *= spec.max_activation_noise * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    reconstruction_noise = torch.randn(n, d, generator=gen, dtype=torch.float64) / d**0.5
    reconstruction_noise *= spec.max_reconstruction_noise * torch.rand(n, 1, generator=gen, dtype=torch.float64)
    return SyntheticData(
        clean + activation_noise, clean + reconstruction_noise, clean, activation_noise, reconstruction_noise
    )


def synthetic_check(spec: SyntheticSpec = SyntheticSpec()) -> tuple[pd.DataFrame, dict[str, float]]:
    """The 2 x 2 table of Pearson correlations over held-out tokens, rows the estimated error parts' norms and
    columns the true noise norms, and the decomposition's metrics on the synthetic data."""
    data = synthetic_activations(spec)
    cut = int(spec.n_tokens * spec.fit_fraction)
    result = decompose_error(data.x[:cut], data.sae_out[:cut], data.x[cut:], data.sae_out[cut:])
    truth = {
        "activation_noise": data.activation_noise[cut:].norm(dim=1),
        "reconstruction_noise": data.reconstruction_noise[cut:].norm(dim=1),
    }
    estimates = {"linear_error": result.parts.linear.norm(dim=1), "nonlinear_error": result.parts.nonlinear.norm(dim=1)}
    table = pd.DataFrame(
        {
            t: {e: float(torch.corrcoef(torch.stack([est, true]))[0, 1]) for e, est in estimates.items()}
            for t, true in truth.items()
        }
    )
    return table, result.metrics
