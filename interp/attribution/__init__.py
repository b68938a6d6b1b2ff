"""Attribution patching: first-order (AtP) and QK-fixed (AtP*) estimates of every patch, shaped
like the exact sweeps of interp.patching, and an exact check of the estimates that matter; AtP* GradDrop
node scores on the circuit graph with a subsampling bound on the false negatives (graddrop)."""

from interp.attribution.atp import (
    METHODS,
    attribute_heads,
    attribute_layer_positions,
    attribute_neurons,
    attribute_sites,
    attribution_sweep,
)
from interp.attribution.graddrop import attribute_nodes, false_negative_bound, patch_nodes
from interp.attribution.gradients import AttributionPasses, run_passes
from interp.attribution.qk_fix import qk_fixed_effects
from interp.attribution.reliability import check_estimates

__all__ = [
    "METHODS",
    "AttributionPasses",
    "attribute_heads",
    "attribute_layer_positions",
    "attribute_nodes",
    "attribute_neurons",
    "attribute_sites",
    "attribution_sweep",
    "check_estimates",
    "false_negative_bound",
    "patch_nodes",
    "qk_fixed_effects",
    "run_passes",
]
