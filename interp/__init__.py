"""interp-toolkit: the core every analysis stands on."""

import interp.offline  # noqa: F401  (first: the hub offline switches must be set before transformers is imported)

from interp.errors import InterpError
from interp.interventions import Ablation, heads, layers, neurons, run_ablated
from interp.hooks import cache_sites, run_with_hooks, to_tokens
from interp.models import load_model
from interp.patching import PatchingTask, patch_heads, patch_layer_positions, patch_neurons, patch_sites
from interp.sites import Site, as_site, kv_head_of

__all__ = [
    "Ablation",
    "heads",
    "layers",
    "neurons",
    "run_ablated",
    "InterpError",
    "Site",
    "as_site",
    "cache_sites",
    "kv_head_of",
    "load_model",
    "PatchingTask",
    "patch_heads",
    "patch_layer_positions",
    "patch_neurons",
    "patch_sites",
    "run_with_hooks",
    "to_tokens",
]
