"""EAP and EAP-IG time against the reference (clean + corrupted forward + backward), interleaved so the shared
machine's load hits all three alike; medians of 3 (EAP, EAP-IG) and 6 (reference) runs. Issue 18, FINDINGS.

    PYTHONPATH=. OMP_NUM_THREADS=1 python findings/circuit-speed-interleaved.py
"""

import json
import statistics
import time

import torch

from experiments.circuit import _reference_seconds
from interp.graph import ComputationGraph, attribute_edges
from interp.models import load_model
from interp.patching import PatchingTask
from interp.patching.pairs import builtin_pairs

torch.set_num_threads(1)

m = load_model()
task = PatchingTask.from_pairs(m, builtin_pairs())
g = ComputationGraph(m)
ref, eap, ig = [], [], []
for _ in range(3):
    ref.append(_reference_seconds(task))
    t = time.perf_counter()
    attribute_edges(task, g, method="eap")
    eap.append(time.perf_counter() - t)
    ref.append(_reference_seconds(task))
    t = time.perf_counter()
    attribute_edges(task, g, method="eap-ig", steps=5)
    ig.append(time.perf_counter() - t)
r = statistics.median(ref)
print(
    json.dumps(
        {
            "reference": ref,
            "eap": eap,
            "eap-ig": ig,
            "eap_over_reference_median": statistics.median(eap) / r,
            "eap-ig_over_reference_median": statistics.median(ig) / r,
        }
    )
)
