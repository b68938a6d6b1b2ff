"""Matryoshka vs BatchTopK at the same width, k and training (the quick SAE run's 65k-token store, blocks.6.hook_resid_post):
first-letter absorption and sparse probing. One seed each; resumes from checkpoints.

    python -m experiments.sae_topk --quick --out DIR    # builds the store under the cache key 28facdd00b80 used below
    PYTHONPATH=. python findings/sae-issue21-matryoshka-vs-batchtopk.py OUT_DIR   # ~12 min at 1 thread; OUT_DIR/metrics.json
"""

import json
import sys
import time
import torch

from interp.models import load_model, cache_root
from interp.store import open_store
from interp.corpus import corpus_tokens
from interp.hooks import cache_sites
from interp.sites import as_site
from sae.activations import StoreBatches
from sae.models import BatchTopKConfig, MatryoshkaConfig
from sae.train import TrainConfig, train_sae
from sae.evals.absorption import first_letter_absorption, absorption_metrics
from sae.evals.probing import sparse_probing_from_rows, probing_metrics, token_labels, token_strings

torch.set_num_threads(1)
out = sys.argv[1]
site = "blocks.6.hook_resid_post"
model = load_model(None)
store = open_store(cache_root() / "sae_runs/28facdd00b80/store", model)
train = TrainConfig(steps=300, batch_size=1024, lr=2e-3, warmup_steps=30, dead_after_tokens=76800, checkpoint_every=50)
held = corpus_tokens(model, 32, 128, skip_seqs=16000)
s = as_site(model, site)
x = torch.cat(
    [cache_sites(model, held[i : i + 8], [s], micro_batch=8)[s].reshape(-1, 576) for i in range(0, 32, 8)]
).float()
labels = token_labels(token_strings(model, held.reshape(-1)))
record = {}
for name, cfg in (("batchtopk", BatchTopKConfig(576, 2304, k=32)), ("matryoshka", MatryoshkaConfig(576, 2304, k=32))):
    t = time.time()
    result = train_sae(
        cfg, StoreBatches(store, site, 1024, seed=0), train, f"{out}/{name}", hook_name=site, progress=False
    )
    sae = result.sae
    with torch.no_grad():
        acts = sae.encode(x)
        fvu = float((sae.decode(acts) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    letters, _ = first_letter_absorption(model, sae, site)
    rec = dict(
        train_wall_s=time.time() - t,
        heldout_fvu=fvu,
        l0=float((acts > 0).sum(1).float().mean()),
        widths=list(getattr(cfg, "widths", [])),
        **absorption_metrics(letters),
        **probing_metrics(sparse_probing_from_rows(x, acts, labels)),
    )
    record[name] = rec
    print(name, json.dumps(rec), flush=True)
json.dump(record, open(f"{out}/metrics.json", "w"), indent=1)
