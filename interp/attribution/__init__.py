"""Attribution patching: first-order (AtP) and QK-fixed (AtP*) estimates of every patch, shaped
like the exact sweeps of interp.patching, and an exact check of the estimates that matter."""

from interp.attribution.atp import (
    METHODS,
    attribute_heads,
    attribute_layer_positions,
    attribute_neurons,
    attribute_sites,
    attribution_sweep,
)
from interp.attribution.gradients import AttributionPasses, run_passes
from interp.attribution.qk_fix import qk_fixed_effects
from interp.attribution.reliability import check_estimates

__all__ = [
    "METHODS",
    "AttributionPasses",
    "attribute_heads",
    "attribute_layer_positions",
    "attribute_neurons",
    "attribute_sites",
    "attribution_sweep",
    "check_estimates",
    "qk_fixed_effects",
    "run_passes",
]
