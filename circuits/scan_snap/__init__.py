"""Scan and snap (Tian et al. 2023): 1-layer attention training dynamics, in theory (ODEs) and in practice (batched SGD)."""

from circuits.scan_snap.data import SequenceClasses, TokenLayout, layout_for, sample_batch
from circuits.scan_snap.dynamics import PopulationProblem, integrate_population, population_rhs, snap_dynamics
from circuits.scan_snap.model import RunSpec, TrainSettings, TrainedRuns, scan_snap_logits, train_runs
from circuits.scan_snap.transformer import TransformerSettings, build_attention_transformer, train_transformer

__all__ = [
    "PopulationProblem",
    "RunSpec",
    "SequenceClasses",
    "TokenLayout",
    "TrainSettings",
    "TrainedRuns",
    "TransformerSettings",
    "build_attention_transformer",
    "integrate_population",
    "layout_for",
    "population_rhs",
    "sample_batch",
    "scan_snap_logits",
    "snap_dynamics",
    "train_runs",
    "train_transformer",
]
