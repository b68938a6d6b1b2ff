"""All 24 norm R^2 grid cells judged on the store's held-out sequences plus the extra ones past the store (sae.darkmatter.grid.norm_r2_grid,
the experiment's own grid stage; the SAEs are the cached ones: nothing trained). Writes after every cell."""

import json
import sys
import time
from pathlib import Path
import pandas as pd
from experiments.dark_matter import DarkMatterConfig
from interp.models import load_model
from interp.threads import torch_threads
from sae.darkmatter.data import cache_folder, load_split
from sae.darkmatter.grid import grid_cells, grid_effects, grid_metrics, norm_r2_grid

OUT = Path(sys.argv[1])
config = DarkMatterConfig()
t0 = time.perf_counter()
with torch_threads(1):
    model = load_model(config.model)
    cache = cache_folder(config)
    data = load_split(model, config, cache)
    seconds = dict(load=time.perf_counter() - t0)
    frames = []
    for cell in grid_cells(config):
        t = time.perf_counter()
        frames.append(norm_r2_grid(config, cache, data, cells=[cell]))
        seconds[f"W{cell.width}-k{cell.k}-{cell.training}"] = time.perf_counter() - t
        grid = pd.concat(frames, ignore_index=True)
        OUT.write_text(
            json.dumps(
                dict(
                    command="OMP_NUM_THREADS=1 PYTHONPATH=. python findings/dark-matter-issue15-grid-extra.py OUT.json",
                    extra_heldout_seqs=config.extra_heldout_seqs,
                    extra_stream_seqs=[int(data.extra.stream_seqs[0]), int(data.extra.stream_seqs[-1])],
                    store_seqs=len(data.tokens) // config.seq_len,
                    held_seqs=len(data.held_seqs),
                    **grid_metrics(grid),
                    norm_r2_grid_effects=grid_effects(grid).to_dict("records"),
                    seconds=seconds,
                ),
                indent=1,
                default=float,
            )
        )
        print(cell, seconds, flush=True)
print("DONE", time.perf_counter() - t0, flush=True)
