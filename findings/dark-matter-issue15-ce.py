"""The converged family's CE shares with bootstrap CIs at the given widths (sae.darkmatter.family.ce_at, the experiment's own CE step, on
the cached store and SAEs: nothing trained). The spliced losses land in the experiment's cache, so `python -m experiments.dark_matter`
reads them back instead of splicing again. Writes the shares after every width.

    OMP_NUM_THREADS=1 PYTHONPATH=. python findings/dark-matter-issue15-ce.py OUT.json 9216,4608,1152
"""

import json
import sys
import time
from pathlib import Path

from experiments.dark_matter import DarkMatterConfig
from interp.models import load_model
from interp.threads import torch_threads
from sae.darkmatter.data import cache_folder, load_split
from sae.darkmatter.family import Context, ce_at

out = Path(sys.argv[1])
widths = [int(w) for w in sys.argv[2].split(",")]
config = DarkMatterConfig(extra_heldout_seqs=0)  # the CE step reads the store's held-out sequences only
t0 = time.perf_counter()
result = dict(command=f"python findings/dark-matter-issue15-ce.py OUT.json {sys.argv[2]}", widths={}, seconds={})
with torch_threads(1):
    model = load_model(config.model)
    cache = cache_folder(config)
    ctx = Context(model, config, cache, load_split(model, config, cache))
    result["seconds"]["load"] = time.perf_counter() - t0
    for w in widths:
        t = time.perf_counter()
        found = ce_at(ctx, w)
        result["widths"][str(w)] = found.shares | dict(model_loss_r2=found.model_loss_r2)
        result["seconds"][str(w)] = time.perf_counter() - t
        out.write_text(json.dumps(result, indent=1, default=float))
        print("width", w, result["seconds"][str(w)], flush=True)
print("DONE", time.perf_counter() - t0, flush=True)
