"""Run with hooks, and cache only the sites asked for.

`cache_sites` keeps the requested slices and nothing else, stops the forward at the deepest layer
needed, and runs in micro-batches so the transient activations stay a fraction of the output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import InterpError, ShapeMismatchError
from interp.sites import Site, as_site

HookFn = Callable[[Tensor, object], Tensor | None]


def token_rows(
    model: HookedTransformer, prompts: Sequence[str] | Tensor, *, argument: str = "prompts"
) -> list[Int[Tensor, " pos"]]:
    """Each prompt's token ids (BOS as the model prepends it), one row per prompt; rows may differ in length."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Tensor):
        if prompts.ndim != 2:
            raise ShapeMismatchError(
                f"{argument}: expected token ids of shape [batch, pos], got {tuple(prompts.shape)}."
            )
        return list(prompts.to(model.cfg.device))
    if len(prompts) == 0:
        raise InterpError(f"{argument} is empty: pass at least one prompt.")
    return [model.to_tokens(p, prepend_bos=model.cfg.default_prepend_bos)[0] for p in prompts]


def to_tokens(
    model: HookedTransformer, prompts: Sequence[str] | Tensor, *, argument: str = "prompts"
) -> Int[Tensor, "batch pos"]:
    """Tokenise a list of prompts that must share one token length (no padding is added)."""
    if isinstance(prompts, Tensor) and prompts.ndim == 2:
        return prompts
    rows = token_rows(model, prompts, argument=argument)
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        by_len = {}
        for p, r in zip(prompts, rows):
            by_len.setdefault(len(r), p)
        examples = "; ".join(f"{n} tokens: {p!r}" for n, p in sorted(by_len.items())[:3])
        raise ShapeMismatchError(
            f"{argument}: prompts have different token lengths ({examples}). Use prompts of one token length, or pass align=True where supported."
        )
    return torch.stack(rows).to(model.cfg.device)


def deepest_layer(sites: Iterable[Site]) -> int | None:
    """The layer after which the forward can stop (None: the whole model is needed)."""
    layers = [s.layer for s in sites if s.layer is not None]
    return max(layers) + 1 if layers else 0


def run_with_hooks(model: HookedTransformer, tokens: Tensor, hooks: Sequence[tuple[Site | str, HookFn]], **kwargs):
    """model.run_with_hooks, with Sites accepted and hook names validated (close matches on typos)."""
    fwd_hooks = [
        ((as_site(model, where).hook_name if isinstance(where, str) else where.hook_name), fn) for where, fn in hooks
    ]
    return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, **kwargs)


def capture_hook(store: dict, key: object = None, *, index: tuple | None = None, clone: bool = True) -> HookFn:
    """A forward hook that keeps a detached copy of its activation (or of `act[index]`) in `store`.

    The entry's key is `key`, or the hook's name when key is None. clone=False keeps a view (cheaper;
    only safe when nothing writes to the activation afterwards). Every capture in the toolkit goes
    through this hook, so what "captured" means (detached, copied, sliced) is written once.
    """

    def hook(act: Tensor, hook) -> None:
        value = (act if index is None else act[index]).detach()
        store[hook.name if key is None else key] = value.clone() if clone else value

    return hook


def capture(model: HookedTransformer, tokens: Tensor, hook_names: Iterable[str], **run_kwargs) -> dict[str, Tensor]:
    """One forward keeping the named hooks' activations (detached copies), keyed by hook name.

    run_kwargs go to `model.run_with_hooks` (attention_mask, stop_at_layer, past_kv_cache, return_type).
    """
    store: dict[str, Tensor] = {}
    model.run_with_hooks(tokens, fwd_hooks=[(name, capture_hook(store)) for name in hook_names], **run_kwargs)
    return store


def transient_bytes_per_sequence(model: HookedTransformer, seq_len: int) -> int:
    cfg = model.cfg
    floats = seq_len * (
        4 * cfg.d_model + 3 * (cfg.d_mlp or 4 * cfg.d_model) + 3 * cfg.n_heads * cfg.d_head + 2 * cfg.n_heads * seq_len
    )
    return floats * torch.finfo(cfg.dtype).bits // 8


def cache_sites(
    model: HookedTransformer,
    prompts: Sequence[str] | Tensor,
    sites: Sequence[Site | str],
    *,
    micro_batch: int | None = None,
    transient_fraction: float = 0.5,
) -> dict[Site, Tensor]:
    """Activations at `sites` only, each of shape [batch, *slice].

    micro_batch: sequences per forward; by default chosen so the forward's transient activations
    stay under `transient_fraction` of the cached output, keeping peak memory near the output size.
    """
    tokens = to_tokens(model, prompts)
    batch, seq_len = tokens.shape
    sites = [as_site(model, s).check(model, seq_len) for s in sites]
    if not sites:
        raise InterpError("sites is empty: name at least one Site or hook name to cache.")
    outputs: dict[Site, Tensor] = {}
    stop = deepest_layer(sites)

    def shapes_probe():
        # Shapes of each slice from one 1-sequence forward, so outputs can be preallocated.
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens[:1], names_filter=lambda n: n in {s.hook_name for s in sites}, stop_at_layer=stop or None
            )
        return {s: cache[s.hook_name][s.index()].shape[1:] for s in sites}

    shapes = shapes_probe()
    dtype = model.cfg.dtype
    for s in sites:
        outputs[s] = torch.empty((batch, *shapes[s]), dtype=dtype, device=tokens.device)
    if micro_batch is None:
        out_bytes_per_seq = sum(o[0].numel() for o in outputs.values()) * dtype.itemsize
        micro_batch = max(
            1, int(transient_fraction * out_bytes_per_seq // transient_bytes_per_sequence(model, seq_len))
        )
    start = 0

    def make_hook(site: Site):
        def hook(act: Tensor, hook) -> None:
            outputs[site][start : start + act.shape[0]] = act[site.index()]

        return hook

    fwd_hooks = [(s.hook_name, make_hook(s)) for s in sites]
    with torch.no_grad():
        for start in range(0, batch, micro_batch):
            model.run_with_hooks(
                tokens[start : start + micro_batch],
                fwd_hooks=fwd_hooks,
                stop_at_layer=stop or None,
                return_type=None if not stop else "logits",
            )
    return outputs
