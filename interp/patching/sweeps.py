"""The standard patching sweeps: layer x position, attention heads, MLP neurons.

Each builds the list of Sites and hands it to the batched engine; rows come back in the order of
the matching `transformer_lens.patching` tensor (layer first, then position, then head).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from interp.errors import InterpError, UnknownSiteError, did_you_mean
from interp.patching.engine import patch_sites
from interp.patching.task import PatchingTask
from interp.sites import COMPONENTS, Site

LAYER_POSITION_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
NEURON_COMPONENTS = ("mlp_post", "mlp_pre", "mlp_pre_linear")


def sweep_indices(values: Iterable[int] | None, default: int, argument: str) -> list[int]:
    if values is None:
        return list(range(default))
    values = [values] if isinstance(values, int) else list(values)
    if not values:
        raise InterpError(f"{argument} is empty: pass at least one index, or None for all {default}.")
    return values


def check_component(component: str, allowed: tuple[str, ...], sweep: str) -> None:
    if component not in allowed:
        hint = did_you_mean(component, allowed) if component not in COMPONENTS else ""
        raise UnknownSiteError(f"{sweep}(component={component!r}) is not supported.{hint} Choose one of: {', '.join(allowed)}.")


def patch_layer_positions(
    task: PatchingTask,
    component: str = "resid_pre",
    *,
    layers: Iterable[int] | None = None,
    positions: Iterable[int] | None = None,
    **engine_options,
) -> pd.DataFrame:
    """Patch one position of `component` at a time; TransformerLens's get_act_patch_resid_pre (and
    _resid_mid, _attn_out, _mlp_out). One row per (layer, position)."""
    check_component(component, LAYER_POSITION_COMPONENTS, "patch_layer_positions")
    layers = sweep_indices(layers, task.model.cfg.n_layers, "layers")
    positions = sweep_indices(positions, task.seq_len, "positions")
    sites = [Site(layer, component, position=p) for layer in layers for p in positions]
    return patch_sites(task, sites, **engine_options)


def patch_heads(
    task: PatchingTask,
    *,
    by_position: bool = False,
    component: str = "z",
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    positions: Iterable[int] | None = None,
    **engine_options,
) -> pd.DataFrame:
    """Patch one attention head at a time, at every position or (by_position) one position at a time.

    The default component z (`attn.hook_z`) is a head's input to W_O, so under grouped-query
    attention a head here is a query head (9 on SmolLM2), not a key/value head; components k and v
    index key/value heads. Matches get_act_patch_attn_head_out_all_pos / _by_pos. One row per
    (layer, head) or (layer, position, head).
    """
    if COMPONENTS.get(component) is None or COMPONENTS[component].head_axis is None:
        with_heads = tuple(name for name, layout in COMPONENTS.items() if layout.head_axis is not None)
        check_component(component, with_heads, "patch_heads")
    if positions is not None and not by_position:
        raise InterpError("patch_heads(positions=...) selects positions of a by-position sweep: pass by_position=True too, or drop positions to patch every position at once.")
    cfg = task.model.cfg
    n_heads = (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) if COMPONENTS[component].kv else cfg.n_heads
    layers = sweep_indices(layers, cfg.n_layers, "layers")
    heads = sweep_indices(heads, n_heads, "heads")
    if by_position:
        positions = sweep_indices(positions, task.seq_len, "positions")
        sites = [Site(layer, component, head=h, position=p) for layer in layers for p in positions for h in heads]
    else:
        sites = [Site(layer, component, head=h) for layer in layers for h in heads]
    return patch_sites(task, sites, **engine_options)


def patch_neurons(
    task: PatchingTask,
    *,
    component: str = "mlp_post",
    layers: Iterable[int] | None = None,
    neurons: Iterable[int] | None = None,
    positions: Iterable[int] | None = None,
    **engine_options,
) -> pd.DataFrame:
    """Patch one MLP neuron (`mlp.hook_post` by default) at every position, or with `positions`
    one (neuron, position) at a time. One row per (layer, neuron[, position]).

    A full sweep of SmolLM2 is 30 x 1536 variants; the engine chunks them to `memory_budget`.
    """
    check_component(component, NEURON_COMPONENTS, "patch_neurons")
    layers = sweep_indices(layers, task.model.cfg.n_layers, "layers")
    neurons = sweep_indices(neurons, task.model.cfg.d_mlp, "neurons")
    if positions is None:
        sites = [Site(layer, component, neuron=n) for layer in layers for n in neurons]
    else:
        positions = sweep_indices(positions, task.seq_len, "positions")
        sites = [Site(layer, component, neuron=n, position=p) for layer in layers for n in neurons for p in positions]
    return patch_sites(task, sites, **engine_options)
