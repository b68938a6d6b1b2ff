"""ACDC on SmolLM2 inside the top N EAP edges for other N than the full run's 300 (issue 18, FINDINGS): the same
function, split and seed as `python -m experiments.circuit` (acdc_model_results), one N at a time, each written to
findings/circuit-acdc-sizes.json as it finishes (rerun: the finished sizes are skipped).

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 python findings/circuit-acdc-sizes.py [N ...]
"""

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from experiments.circuit import CircuitConfig, acdc_model_results, split_pairs
from interp.graph import ComputationGraph
from interp.models import load_model
from interp.patching import PatchingTask

torch.set_num_threads(1)
sizes = [int(n) for n in sys.argv[1:]] or [100, 1000]
out = Path(__file__).with_suffix(".json")
done = json.loads(out.read_text()) if out.exists() else {}
model = load_model()
graph = ComputationGraph(model)
base = CircuitConfig()
rank_pairs, eval_pairs = split_pairs(base, list(base.pairs))
rank = PatchingTask.from_pairs(model, rank_pairs, metric=base.metric)
held = PatchingTask.from_pairs(model, eval_pairs, metric=base.metric)
for n in sizes:
    if str(n) in done:
        continue
    start = time.perf_counter()
    result, _ = acdc_model_results(dataclasses.replace(base, acdc_candidates=n), rank, held, graph)
    result["wall_seconds"] = time.perf_counter() - start
    result.pop("edges")
    done[str(n)] = result
    out.write_text(json.dumps(done, indent=2) + "\n")
    print(n, json.dumps(result["recovered"]), result["n_edges"], result["n_tests"], flush=True)
