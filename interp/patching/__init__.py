"""Activation patching: exact and batched (engine, sweeps) on clean/corrupted prompt pairs (task)."""

from interp.patching.engine import DEFAULT_MEMORY_BUDGET, RESULT_COLUMNS, patch_sites, results_frame
from interp.patching.sweeps import patch_heads, patch_layer_positions, patch_neurons
from interp.patching.task import METRICS, PatchingTask

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METRICS",
    "RESULT_COLUMNS",
    "PatchingTask",
    "patch_heads",
    "patch_layer_positions",
    "patch_neurons",
    "patch_sites",
    "results_frame",
]
