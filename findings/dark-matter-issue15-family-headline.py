"""The family headline at the converged widths (sae.darkmatter library calls on the cached store and SAEs only: nothing is trained) and the
grid cells whose held-out CI half-width exceeds 0.01 judged on more tokens. Writes the JSON behind findings/dark-matter-issue15-family-metrics.json
(a cheap subset of `python -m experiments.dark_matter --widths 576,1152,2304,4608`, whose full invocation did not fit the shared CPU this session)."""

import json
import sys
import time
from pathlib import Path

from experiments.dark_matter import DarkMatterConfig
from interp.models import load_model
from interp.threads import torch_threads
from sae.darkmatter.data import cache_folder, load_split
from sae.darkmatter.family import Context, decomposition_at, downstream, downstream_path
from sae.darkmatter.grid import GridCell, norm_r2_on_more_tokens
from sae.darkmatter.saes import is_trained, training_record
from sae.darkmatter.uncertainty import r2_with_ci

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "headline.json")
WIDTHS = tuple(int(w) for w in sys.argv[2].split(",")) if len(sys.argv) > 2 else (576, 1152, 2304, 4608)
CELLS = len(sys.argv) <= 3 or sys.argv[3] != "--no-cells"
config = DarkMatterConfig()
t0 = time.perf_counter()
result = dict(
    command="OMP_NUM_THREADS=1 PYTHONPATH=. python findings/dark-matter-issue15-family-headline.py OUT.json [WIDTHS [--no-cells]]",
    widths={},
    family_training=[],
    grid_more_tokens=[],
)
with torch_threads(1):
    model = load_model(config.model)
    cache = cache_folder(config)
    ctx = Context(model, config, cache, load_split(model, config, cache))
    result["seconds_load"] = time.perf_counter() - t0
    for layer, rows in ((6, ctx.data.fit.x),):
        for w in config.widths:
            result["family_training"].append(
                dict(layer=layer, width=w, **training_record(cache / "saes", rows, ctx.family_spec(w, layer))._asdict())
            )
    OUT.write_text(json.dumps(result, indent=1))
    for w in WIDTHS:
        t = time.perf_counter()
        assert is_trained(cache / "saes", ctx.data.fit.x, ctx.family_spec(w)), w
        sae = ctx.family_sae(w)
        decomposition, out_fit, out_eval = decomposition_at(ctx, sae)
        sq_eval = (ctx.data.held.x.float() - out_eval).double().pow(2).sum(-1)
        value, low, high = r2_with_ci(
            sq_eval,
            decomposition.fit.norm_map.predict(ctx.data.held.x)[:, 0],
            ctx.data.held.seq,
            n_boot=config.bootstrap,
            seed=config.seed,
        )
        row = dict(decomposition.metrics, norm_r2_check=value, norm_r2_ci=[low, high])
        decomposition = decomposition._replace(parts=None)
        del out_fit, out_eval
        if downstream_path(
            ctx, sae, decomposition.fit.error_map
        ).exists():  # cached spliced losses only (512 sequences)
            found = downstream(ctx, sae, decomposition)
            row |= {k: v for k, v in found.shares.items()} | dict(model_loss_r2=found.model_loss_r2)
        row["seconds"] = time.perf_counter() - t
        result["widths"][w] = row
        OUT.write_text(json.dumps(result, indent=1))
        print("width", w, row["seconds"], flush=True)
    grid = json.loads(Path(__file__).with_name("dark-matter-issue15-grid-metrics.json").read_text())["norm_r2_grid"]
    wide = [r for r in grid if r["norm_r2"] is not None and (r["ci_high"] - r["ci_low"]) / 2 > 0.01] if CELLS else []
    for r in wide:
        t = time.perf_counter()
        found = norm_r2_on_more_tokens(
            config, cache, ctx.data, GridCell(r["training"], r["width"], r["k"]), r["positions_dropped"]
        )
        result["grid_more_tokens"].append(
            dict(found, grid_norm_r2=r["norm_r2"], grid_ci=[r["ci_low"], r["ci_high"]], seconds=time.perf_counter() - t)
        )
        OUT.write_text(json.dumps(result, indent=1))
        print("cell", found, flush=True)
result["seconds_total"] = time.perf_counter() - t0
OUT.write_text(json.dumps(result, indent=1))
print("HEADLINE DONE", result["seconds_total"], flush=True)
