"""How evenly torchrun ranks share the layer x position sweep: each rank's work in the engine's cost model
(ragged_groups' token positions x the blocks a batch runs), with batches weighed by their variants only (the
session-7 rule) and by batch_work (the positions they run). Predicted, not timed: the 2-core machine cannot
time 4 or 8 ranks honestly.

    python benchmarks/shard_balance.py
"""

from __future__ import annotations

import torch
from patching import capital_task  # run as a script from benchmarks/, like the other benchmarks

from interp import load_model
from interp.patching.engine import (
    _batch_overhead,
    _first_changed_position,
    batch_work,
    normalised_site,
    plan_batches,
    shard_batches,
)
from interp.sites import Site


def main() -> None:
    torch.set_num_threads(1)
    model = load_model()
    task = capital_task(model)
    n_layers = model.cfg.n_layers
    sites = [
        normalised_site(model, Site(layer, "resid_pre", position=p), task.seq_len)
        for layer in range(n_layers)
        for p in range(task.seq_len)
    ]
    batches = plan_batches(task, sites, 1 << 30)
    overhead = _batch_overhead(task.model.cfg.device)
    work = [batch_work(task, [_first_changed_position(sites[i], task) for i in idx], overhead) for _, idx in batches]
    cost = {tuple(idx): (n_layers - layer) * w for (layer, idx), w in zip(batches, work)}
    print(f"{len(sites)} variants in {len(batches)} batches, {task.n_prompts} prompts of {task.seq_len} tokens")
    for world in (2, 4, 8):
        for name, weights in (("variants", None), ("batch_work", work)):
            loads = [
                sum(cost[tuple(idx)] for _, idx in shard) for shard in shard_batches(batches, world, n_layers, weights)
            ]
            print(
                f"{world} ranks, batches weighed by {name:10s}: busiest rank / mean {max(loads) / (sum(loads) / world):.3f}"
            )


if __name__ == "__main__":
    main()
