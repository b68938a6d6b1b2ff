"""Circuit discovery on the computation graph of a TransformerLens model: the graph (senders, receivers,
edges as a tidy table), exact edge patching, EAP / EAP-IG estimates, and their agreement with exact;
circuit metrics (interp.graph.circuit_metrics, interp.graph.candidate_circuits); greedy ACDC pruning and
minimality checks (interp.graph.discovery)."""

from interp.graph.discovery import acdc, minimality
from interp.graph.circuit_metrics import circuit_metric, faithfulness_curve
from interp.graph.graph import LOGITS, ComputationGraph, Receiver, Sender
from interp.graph.scores import (
    METHODS,
    agreement,
    attribute_edges,
    patch_edges,
    patch_edges_loop,
    receiver_gradients,
    score_edges,
    scores_frame,
)

__all__ = [
    "LOGITS",
    "METHODS",
    "ComputationGraph",
    "Receiver",
    "Sender",
    "acdc",
    "agreement",
    "attribute_edges",
    "circuit_metric",
    "faithfulness_curve",
    "minimality",
    "patch_edges",
    "patch_edges_loop",
    "receiver_gradients",
    "score_edges",
    "scores_frame",
]
