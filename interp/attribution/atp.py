"""Attribution patching (AtP): first-order estimates of every patch from three passes.

The effect of patching a site's clean slice into the corrupted run is estimated as
(clean - corrupted) . d metric / d activation, at the corrupted run; the metric is the exact
sweep's (averaged over prompts), so `restoration` reads like the exact one. Results come back in
the exact sweeps' DataFrame shape and row order, with a `method` column ("atp" or "atp*").

method="atp*" replaces the estimate for query and key sites with AtP*'s QK fix (exact softmax) and
adds `reliable`: False where the linear and QK-fixed estimates differ by more than
`tolerance` (in restoration units, i.e. a fraction of the clean - corrupted gap); other components
have no softmax of their own between the patch and the gradient, so `reliable` is NA there
(`check_estimates` verifies the top sites exactly).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from interp.attribution.gradients import AttributionPasses, _check_metric, run_passes
from interp.attribution.qk_fix import QK_COMPONENTS, qk_fixed_effects, qk_hooks
from interp.errors import InterpError, UnknownSiteError, did_you_mean
from interp.kernels.patching import attribution_scores
from interp.patching.engine import normalised_site, results_frame
from interp.patching.sweeps import SWEEPS, head_sites, layer_position_sites, neuron_sites, sweep_sites  # noqa: F401  (head_sites & co. re-exported)
from interp.patching.task import PatchingTask
from interp.sites import COMPONENTS, Site

METHODS = ("atp", "atp*")
DEFAULT_TOLERANCE = 0.05


def _as_groups(act: torch.Tensor, component: str) -> torch.Tensor:
    """[batch, pos, group, width]: heads are groups, neurons are groups of width 1, the residual one group."""
    layout = COMPONENTS[component]
    if layout.head_axis == 2:
        return act
    if layout.neuron_axis == 2:
        return act[..., None]
    return act[:, :, None, :]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InterpError(
            f"method={method!r} is not an attribution method.{did_you_mean(str(method), METHODS)} Known: {', '.join(METHODS)} (for exact patching use interp.patching)."
        )


def _check_sites(sites: Sequence[Site]) -> None:
    for site in sites:
        layout = site.layout
        if layout.head_axis not in (None, 2):
            raise UnknownSiteError(
                f"{site}: attribution patching estimates activations laid out [batch, pos, ...]; {site.component!r} is not. Attribute 'q' and 'k' (method='atp*' for the exact softmax) instead."
            )


def hooks_needed(model, sites: Sequence[Site], method: str) -> tuple[set[str], set[str]]:
    """(hooks to cache in both runs, hooks to take the gradient at)."""
    names = {s.hook_name for s in sites}
    grads = set(names)
    if method == "atp*":
        for site in sites:
            if site.component in QK_COMPONENTS:
                extra = qk_hooks(model, site.layer)
                names |= set(extra.values())
                grads.add(extra["pattern"])
    return names, grads


def estimate_effects(
    task: PatchingTask, sites: Sequence[Site], passes: AttributionPasses, method: str = "atp"
) -> tuple[np.ndarray, np.ndarray]:
    """Linear effects per site and, for method='atp*', the QK-fixed effects (NaN where no fix applies)."""
    linear, fixed = np.empty(len(sites)), np.full(len(sites), np.nan)
    by_hook: dict[str, list[int]] = defaultdict(list)
    for i, site in enumerate(sites):
        by_hook[site.hook_name].append(i)
    for name, idx in by_hook.items():
        component, layer = sites[idx[0]].component, sites[idx[0]].layer
        per_position = (
            attribution_scores(*(_as_groups(t[name], component) for t in (passes.clean, passes.corrupted, passes.grad)))
            .double()
            .cpu()
            .numpy()
        )
        all_positions = per_position.sum(0)
        fix = None
        if method == "atp*" and component in QK_COMPONENTS:
            fix = [t.cpu().numpy() for t in qk_fixed_effects(task, passes, layer, component)]
        for i in idx:
            site = sites[i]
            group = site.head if site.head is not None else site.neuron
            pick = slice(None) if group is None else group
            linear[i] = (all_positions if site.position is None else per_position[site.position])[pick].sum()
            if fix is not None:
                fixed[i] = (fix[1] if site.position is None else fix[0][site.position])[pick].sum()
    return linear, fixed


def estimates_frame(
    task: PatchingTask, sites: Sequence[Site], linear: np.ndarray, fixed: np.ndarray, method: str, tolerance: float
) -> pd.DataFrame:
    """The exact sweep's table with the estimated metric, plus `method` (and `reliable` for atp*)."""
    effects = np.where(np.isnan(fixed), linear, fixed) if method == "atp*" else linear
    frame = results_frame(task, sites, task.corrupted_metric + effects)
    frame["method"] = method
    if method == "atp*":
        gap = abs(task.clean_metric - task.corrupted_metric) or 1.0
        disagreement = np.abs(fixed - linear) / gap
        frame["reliable"] = pd.array(
            [pd.NA if np.isnan(d) else bool(d <= tolerance) for d in disagreement], dtype="boolean"
        )
    frame.attrs.update(method=method, tolerance=tolerance)
    return frame


def attribute_sites(
    task: PatchingTask, sites: Sequence[Site | str], *, method: str = "atp", tolerance: float = DEFAULT_TOLERANCE
) -> pd.DataFrame:
    """Estimate the patch of each Site from one clean forward, one corrupted forward and one backward."""
    _check_method(method)
    if len(sites) == 0:
        raise InterpError("sites is empty: pass at least one Site or hook name to attribute.")
    sites = [normalised_site(task.model, s, task.seq_len) for s in sites]
    _check_sites(sites)
    return estimates_frame(task, sites, *sharded_effects(task, [sites], method)[0], method, tolerance)


def attribute_heads(
    task: PatchingTask, *, method: str = "atp", tolerance: float = DEFAULT_TOLERANCE, **selection
) -> pd.DataFrame:
    """AtP twin of `patch_heads` (same keywords: by_position, component, layers, heads, positions)."""
    return attribute_sites(
        task, head_sites(task, caller="attribute_heads", **selection), method=method, tolerance=tolerance
    )


def attribute_neurons(task: PatchingTask, *, method: str = "atp", **selection) -> pd.DataFrame:
    """AtP twin of `patch_neurons` (same keywords: component, layers, neurons, positions)."""
    return attribute_sites(task, neuron_sites(task, caller="attribute_neurons", **selection), method=method)


def attribute_layer_positions(
    task: PatchingTask, component: str = "resid_pre", *, method: str = "atp", **selection
) -> pd.DataFrame:
    """AtP twin of `patch_layer_positions` (same keywords: layers, positions)."""
    return attribute_sites(
        task, layer_position_sites(task, component, caller="attribute_layer_positions", **selection), method=method
    )


def attribution_sweep(
    task: PatchingTask,
    sweeps: Iterable[str] = ("heads", "heads_by_pos", "neurons", "resid_pre"),
    *,
    layers=None,
    method: str = "atp",
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict[str, pd.DataFrame]:
    """Several sweeps from one set of passes: every head (summed and per position), every neuron, every
    layer x position. One table per sweep, each shaped like its exact twin's."""
    _check_method(method)
    site_lists = {
        sweep: [normalised_site(task.model, s, task.seq_len) for s in sweep_sites(task, sweep, layers=layers)]
        for sweep in sweeps
    }
    effects = sharded_effects(task, list(site_lists.values()), method)
    return {
        sweep: estimates_frame(task, sites, *found, method, tolerance)
        for (sweep, sites), found in zip(site_lists.items(), effects)
    }


def sharded_effects(
    task: PatchingTask, site_lists: list[list[Site]], method: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """estimate_effects for each list of sites from one set of passes. Under torch.distributed (torchrun) each rank
    runs the passes on its share of the prompts and the effects are summed over ranks: a named metric is a mean over
    prompts, so each prompt's gradient (and so its share of every effect, the QK fix included) is its rank's times
    (its rank's prompts / all prompts). A metric function (maybe not a mean over prompts) is run whole on every rank."""
    from interp.distributed import all_reduce_sum, prompt_shard, prompt_subset, rank_world

    every_site = [s for sites in site_lists for s in sites]
    rank, world = rank_world()
    if world == 1 or task._metric_fn is not None:
        passes = run_passes(task, *hooks_needed(task.model, every_site, method))
        return [estimate_effects(task, sites, passes, method) for sites in site_lists]
    _check_metric(task)  # on every rank, also one without prompts
    idx = prompt_shard(task.n_prompts, rank, world)
    local = np.zeros(2 * len(every_site))
    if idx:
        part = prompt_subset(task, idx)
        passes = run_passes(part, *hooks_needed(task.model, every_site, method))
        found = [estimate_effects(part, sites, passes, method) for sites in site_lists]
        local = np.concatenate([np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])])
        local = np.nan_to_num(local * (len(idx) / task.n_prompts), nan=0.0)
    total = all_reduce_sum(local)
    fixed_applies = np.array([method == "atp*" and s.component in QK_COMPONENTS for s in every_site])
    linear, fixed = total[: len(every_site)], np.where(fixed_applies, total[len(every_site) :], np.nan)
    out, start = [], 0
    for sites in site_lists:
        out.append((linear[start : start + len(sites)], fixed[start : start + len(sites)]))
        start += len(sites)
    return out
