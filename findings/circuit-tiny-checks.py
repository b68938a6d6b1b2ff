"""The tiny-model numbers FINDINGS.md quotes for GradDrop and the false-negative bound (issue 18), printed as JSON.

    PYTHONPATH=. python findings/circuit-tiny-checks.py

A planted cancellation (the tests' construction: the last MLP scaled so that AtP(embed) = 0) and the bound's coverage
of every unverified node's exact effect, on the full token swap and on a small patch, over 5 task seeds.
"""

import json

import torch

from interp.attribution.graddrop import attribute_nodes, false_negative_bound, patch_nodes
from interp.graph import ComputationGraph
from interp.models import load_model
from tests.conftest import TINY_GQA
from tests.test_attribution_graddrop import cancelling_model
from tests.test_graph import make_task

torch.set_num_threads(1)
out = {}
task = make_task(cancelling_model())
graph = ComputationGraph(task.model)
exact = patch_nodes(task, graph).set_index("node")["effect"].abs()
ranks = {"exact": exact}
for method in ("atp", "atp+graddrop"):
    ranks[method] = attribute_nodes(task, graph, method=method).set_index("node")["score"]
out["cancellation"] = {
    m: {"embed_score": float(s["embed"]), "embed_rank": int((s >= s["embed"]).sum()), "of": len(s)}
    for m, s in ranks.items()
}


def small_patch(eps, seed):
    """As tests.test_graph.small_patch_task, for any task seed: the corrupted token's embedding is the clean one's
    plus eps of noise (a small patch)."""
    model = load_model(TINY_GQA, seed=0)
    t = make_task(model, seed=seed, n=2, position=3)
    with torch.no_grad():
        for clean, corrupted in zip(t.clean_tokens[:, 3], t.corrupted_tokens[:, 3]):
            noise = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(int(corrupted)))
            model.W_E[corrupted] = model.W_E[clean] + eps * noise * model.W_E[clean].norm() / noise.norm()
    return make_task(model, seed=seed, n=2, position=3)


coverage = {}
makers = {
    "full swap (model seeds 0-4)": lambda seed: make_task(load_model(TINY_GQA, seed=seed), seed=seed),
    "small patch eps 0.05 (task seeds 0-4)": lambda seed: small_patch(0.05, seed),
}
for label, make in makers.items():
    covered = total = 0
    for seed in range(5):
        t = make(seed)
        g = ComputationGraph(t.model)
        e = patch_nodes(t, g)["effect"].abs().to_numpy()
        b = false_negative_bound(t, attribute_nodes(t, g), g, verify_top=4, n_subsets=8, seed=seed)
        rest = ~b["verified"].to_numpy()
        covered += int((b["bound"].to_numpy()[rest] >= e[rest] - 1e-6).sum())
        total += int(rest.sum())
    coverage[label] = {"covered": covered, "unverified": total, "share": covered / total}
out["bound_coverage"] = coverage
print(json.dumps(out, indent=1))
