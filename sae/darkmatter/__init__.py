"""Dark matter of SAEs (Engels, Riggs, Tegmark 2024): the linearly predictable and the nonlinear parts of SAE error."""

from sae.darkmatter.decomposition import (
    Decomposition,
    ErrorParts,
    LinearErrorFit,
    PowerLaw,
    cross_width_norms,
    decompose_error,
    fit_power_law,
    nonlinear_fvu_with_inputs,
    norm_baselines,
    norm_probe_variants,
)
from sae.darkmatter.features import improvement_shares, learned_feature_fraction, max_cosine
from sae.darkmatter.downstream import ce_shares, spliced_losses
from sae.darkmatter.pursuit import gradient_pursuit, pursuit_reconstruction
from sae.darkmatter.regression import (
    LinearMap,
    fit_linear_map,
    fvu,
    group_mean_r2,
    r2,
    r2_per_dimension,
    regression_r2,
    residual_fvu,
    vector_r2,
)
from sae.darkmatter.synthetic import SyntheticData, SyntheticSpec, synthetic_activations, synthetic_check

__all__ = [
    "Decomposition",
    "ErrorParts",
    "LinearErrorFit",
    "LinearMap",
    "PowerLaw",
    "SyntheticData",
    "SyntheticSpec",
    "ce_shares",
    "spliced_losses",
    "cross_width_norms",
    "decompose_error",
    "fit_linear_map",
    "fit_power_law",
    "fvu",
    "gradient_pursuit",
    "group_mean_r2",
    "improvement_shares",
    "learned_feature_fraction",
    "max_cosine",
    "nonlinear_fvu_with_inputs",
    "norm_baselines",
    "norm_probe_variants",
    "pursuit_reconstruction",
    "r2",
    "r2_per_dimension",
    "regression_r2",
    "residual_fvu",
    "synthetic_activations",
    "synthetic_check",
    "vector_r2",
]
