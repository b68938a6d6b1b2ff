"""The standard patching sweeps: layer x position, attention heads, MLP neurons.

Each sweep's Sites are defined here once (`head_sites`, `neuron_sites`, `layer_position_sites`, and by
name `sweep_sites`), in the order of the matching `transformer_lens.patching` tensor (layer first, then
position, then head). Exact patching (`patch_*`, below), AtP (`interp.attribution`) and the CLI all use them.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from interp.errors import InterpError, UnknownSiteError, did_you_mean
from interp.patching.engine import patch_sites
from interp.patching.task import PatchingTask
from interp.sites import COMPONENTS, Site, n_heads

LAYER_POSITION_COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
NEURON_COMPONENTS = ("mlp_post", "mlp_pre", "mlp_pre_linear")
SWEEPS = (
    "heads",
    "heads_by_pos",
    "neurons",
    "neurons_by_pos",
    *LAYER_POSITION_COMPONENTS,
)  # the named sweeps: `sweep_sites`


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
        raise UnknownSiteError(
            f"{sweep}(component={component!r}) is not supported.{hint} Choose one of: {', '.join(allowed)}."
        )


def head_sites(
    task: PatchingTask,
    *,
    by_position: bool = False,
    component: str = "z",
    layers=None,
    heads=None,
    positions=None,
    caller: str = "patch_heads",
) -> list[Site]:
    """One Site per attention head (query heads for z / q / result; key/value heads for k / v), or per (head, position)."""
    if COMPONENTS.get(component) is None or COMPONENTS[component].head_axis is None:
        with_heads = tuple(name for name, layout in COMPONENTS.items() if layout.head_axis is not None)
        check_component(component, with_heads, caller)
    if positions is not None and not by_position:
        raise InterpError(
            f"{caller}(positions=...) selects positions of a by-position sweep: pass by_position=True too, or drop positions to patch every position at once."
        )
    layers = sweep_indices(layers, task.model.cfg.n_layers, "layers")
    heads = sweep_indices(heads, n_heads(task.model, component), "heads")
    if by_position:
        positions = sweep_indices(positions, task.seq_len, "positions")
        return [Site(layer, component, head=h, position=p) for layer in layers for p in positions for h in heads]
    return [Site(layer, component, head=h) for layer in layers for h in heads]


def neuron_sites(
    task: PatchingTask,
    *,
    component: str = "mlp_post",
    layers=None,
    neurons=None,
    positions=None,
    caller: str = "patch_neurons",
) -> list[Site]:
    """One Site per MLP neuron at every position, or with `positions` per (neuron, position)."""
    check_component(component, NEURON_COMPONENTS, caller)
    layers = sweep_indices(layers, task.model.cfg.n_layers, "layers")
    neurons = sweep_indices(neurons, task.model.cfg.d_mlp, "neurons")
    if positions is None:
        return [Site(layer, component, neuron=n) for layer in layers for n in neurons]
    positions = sweep_indices(positions, task.seq_len, "positions")
    return [Site(layer, component, neuron=n, position=p) for layer in layers for n in neurons for p in positions]


def layer_position_sites(
    task: PatchingTask,
    component: str = "resid_pre",
    *,
    layers=None,
    positions=None,
    caller: str = "patch_layer_positions",
) -> list[Site]:
    """One Site per (layer, position) of a residual-stream or block-output component."""
    check_component(component, LAYER_POSITION_COMPONENTS, caller)
    layers = sweep_indices(layers, task.model.cfg.n_layers, "layers")
    positions = sweep_indices(positions, task.seq_len, "positions")
    return [Site(layer, component, position=p) for layer in layers for p in positions]


def sweep_sites(task: PatchingTask, sweep: str, *, layers=None) -> list[Site]:
    """The Sites of a named sweep (one of SWEEPS), optionally restricted to `layers`."""
    if sweep not in SWEEPS:
        raise InterpError(f"sweeps: {sweep!r} is not a sweep.{did_you_mean(sweep, SWEEPS)} Known: {', '.join(SWEEPS)}.")
    if sweep in ("heads", "heads_by_pos"):
        return head_sites(task, by_position=sweep == "heads_by_pos", layers=layers)
    if sweep in ("neurons", "neurons_by_pos"):
        return neuron_sites(task, layers=layers, positions=range(task.seq_len) if sweep == "neurons_by_pos" else None)
    return layer_position_sites(task, sweep, layers=layers)


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
    return patch_sites(
        task, layer_position_sites(task, component, layers=layers, positions=positions), **engine_options
    )


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
    sites = head_sites(
        task, by_position=by_position, component=component, layers=layers, heads=heads, positions=positions
    )
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
    return patch_sites(
        task,
        neuron_sites(task, component=component, layers=layers, neurons=neurons, positions=positions),
        **engine_options,
    )


def sweep(task: PatchingTask, name: str, *, layers=None, **engine_options) -> pd.DataFrame:
    """Exact patching of a named sweep (one of SWEEPS)."""
    return patch_sites(task, sweep_sites(task, name, layers=layers), **engine_options)
