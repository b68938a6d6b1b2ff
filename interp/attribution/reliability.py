"""Where to trust an attribution estimate: verify the sites that matter with exact patching.

A first-order estimate can be far off where the model is strongly nonlinear between the patch and
the metric. `check_estimates` runs the exact engine on the `top_k` sites by |estimated
restoration| (the ones a researcher would act on) and flags each whose estimate misses by more
than `tolerance` of the clean - corrupted gap.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interp.errors import InterpError
from interp.patching.engine import patch_sites
from interp.patching.task import PatchingTask
from interp.sites import Site

SITE_COLUMNS = ("component", "layer", "head", "neuron", "position")


def _site(row) -> Site:
    def value(name):
        return None if pd.isna(row[name]) else int(row[name])

    return Site(
        int(row["layer"]), row["component"], head=value("head"), neuron=value("neuron"), position=value("position")
    )


def check_estimates(
    task: PatchingTask, estimates: pd.DataFrame, *, top_k: int = 20, tolerance: float = 0.05, **engine_options
) -> pd.DataFrame:
    """`estimates` with `exact_restoration` and `reliable` filled for its top_k rows by |restoration|.

    reliable: True where |estimated - exact restoration| <= tolerance; AND-ed with an existing
    `reliable` (AtP*'s saturation flag); NA for rows not verified.
    """
    missing = {*SITE_COLUMNS, "restoration"} - set(estimates.columns)
    if missing:
        raise InterpError(
            f"estimates lacks columns {sorted(missing)}: pass a table from interp.attribution (attribute_heads, attribute_sites, ...)."
        )
    if top_k < 1:
        raise InterpError(f"top_k={top_k}: must be at least 1 (how many of the largest estimates to verify exactly).")
    out = estimates.copy()
    top = out["restoration"].abs().nlargest(min(top_k, len(out))).index
    exact = patch_sites(task, [_site(out.loc[i]) for i in top], **engine_options)
    out["exact_restoration"] = np.nan
    out.loc[top, "exact_restoration"] = exact["restoration"].to_numpy()
    verified = pd.array([pd.NA] * len(out), dtype="boolean")
    verified[out.index.get_indexer(top)] = (
        np.abs(out.loc[top, "restoration"].to_numpy() - exact["restoration"].to_numpy()) <= tolerance
    )
    previous = out["reliable"].array if "reliable" in out else pd.array([pd.NA] * len(out), dtype="boolean")
    out["reliable"] = pd.array(
        [p if pd.isna(v) else (bool(v) if pd.isna(p) else bool(v) and bool(p)) for p, v in zip(previous, verified)],
        dtype="boolean",
    )
    out.attrs.update(estimates.attrs, verified=len(top), tolerance=tolerance)
    return out
