"""The exact, batched activation-patching engine.

Each patch variant (one Site) runs the corrupted prompts with the clean activation written into
the Site's slice. Variants at layer L share everything before L, so the engine caches the
corrupted run's resid_pre (and keys/values) once, stacks many variants of layer L into one batch
that starts at block L, and reads only the last position's logits. A variant that patches
position p recomputes only positions p.. (earlier ones attend as in the corrupted run, through
TransformerLens's key/value cache). Batches are chunked to a memory budget.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components import abstract_attention
from transformer_lens.utilities import attention as attention_utilities
from transformer_lens.utilities.attention import simple_attn_linear

from interp.distributed import rank_world
from interp.errors import InterpError, UnknownSiteError
from interp.hooks import capture, transient_bytes_per_sequence
from interp.metrics import restoration
from interp.patching.task import PatchingTask, last_position_logits
from interp.sites import Site, as_site, n_heads

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of transient activations per variant batch
RESULT_COLUMNS = ["component", "layer", "head", "neuron", "position", "hook_name", "metric", "restoration"]


def normalised_site(model: HookedTransformer, site: Site | str, seq_len: int) -> Site:
    site = as_site(model, site).check(model, seq_len)
    if site.layer is None:
        raise UnknownSiteError(
            f"{site}: patching needs a site inside a block; patch Site(0, 'resid_pre') instead of {site.hook_name!r}."
        )
    heads = n_heads(model, site.component)

    def wrap(value: int | None, n: int) -> int | None:  # negative indices count from the end
        return None if value is None else value % n

    return site.at(
        layer=site.layer % model.cfg.n_layers,
        head=wrap(site.head, heads),
        neuron=wrap(site.neuron, model.cfg.d_mlp),
        position=wrap(site.position, seq_len),
    )


def _corrupted_cache(
    task: PatchingTask, layers: set[int]
) -> tuple[dict[int, Tensor], TransformerLensKeyValueCache | None]:
    """The corrupted run's resid_pre at `layers` and, when unpadded, every layer's keys and values."""
    model = task.model
    names = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    with _uncopied_weights(model.blocks):
        return _capture_corrupted(task, names, layers)


def _capture_corrupted(task: PatchingTask, names: list[str], layers: set[int]):
    model, kv = task.model, None
    if task.corrupted_mask is not None:  # padded prompts: no shared prefix, every variant starts at position 0
        acts = capture(
            model, task.corrupted_tokens, names, attention_mask=task.corrupted_mask, stop_at_layer=max(layers) + 1
        )
    else:
        kv = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, task.n_prompts)
        acts = capture(
            model,
            task.corrupted_tokens,
            names,
            attention_mask=torch.ones_like(task.corrupted_tokens),
            past_kv_cache=kv,
            return_type=None,
        )
    resid_pre = {int(name.split(".")[1]): act for name, act in acts.items()}
    return resid_pre, kv


def _clean_cache(task: PatchingTask, hook_names: set[str], stop_at_layer: int) -> dict[str, Tensor]:
    with _uncopied_weights(task.model.blocks):
        return capture(
            task.model, task.clean_tokens, hook_names, attention_mask=task.clean_mask, stop_at_layer=stop_at_layer
        )


def variants_per_batch(task: PatchingTask, memory_budget: int) -> int:
    cfg = task.model.cfg
    per_sequence = transient_bytes_per_sequence(task.model, task.seq_len) + cfg.d_vocab * cfg.dtype.itemsize
    return max(1, memory_budget // (per_sequence * task.n_prompts))


def _first_changed_position(site: Site, task: PatchingTask) -> int:
    # Causal attention: a patch at position p leaves every earlier position as in the corrupted run.
    return 0 if site.position is None or task.corrupted_mask is not None else site.position


def _score_variants(
    task: PatchingTask, layer: int, start: int, variants: list[Site], resid_pre: Tensor, kv, clean: dict[str, Tensor]
) -> Tensor:
    """Run `variants` (all at `layer`, all changing positions >= `start` only) as one batch."""
    model, n_prompts, n_variants = task.model, task.n_prompts, len(variants)
    by_hook: dict[str, list[tuple[int, tuple, tuple]]] = defaultdict(list)
    for i, site in enumerate(variants):
        shifted = site if site.position is None else site.at(position=site.position - start)
        by_hook[site.hook_name].append((i, shifted.index(), site.index()))

    def write_clean(entries: list[tuple[int, tuple, tuple]], clean_act: Tensor):
        def hook(act: Tensor, hook) -> Tensor:
            for i, act_index, clean_index in entries:
                act[i * n_prompts : (i + 1) * n_prompts][act_index] = clean_act[clean_index]
            return act

        return hook

    resid = resid_pre[:, start:].repeat(n_variants, 1, 1)
    mask = None if task.corrupted_mask is None else task.corrupted_mask.repeat(n_variants, 1)
    pos_embed = (
        None if task.shortformer_pos_embed is None else task.shortformer_pos_embed[:, start:].repeat(n_variants, 1, 1)
    )
    last = model.cfg.n_layers - 1
    # the metric reads the last position only: the last block needs every position's keys and values, the rest of it
    # (queries, attention, W_O, the MLP) at the last position alone; when no hook is inside it, it runs so
    last_only = layer < last and resid.shape[1] > 1 and kv is not None and _last_position_block_ok(model)
    hooks = [(name, write_clean(entries, clean[name])) for name, entries in by_hook.items()]
    with model.hooks(fwd_hooks=hooks), _uncopied_weights(model.blocks[layer:]):
        for i, block in enumerate(model.blocks[layer:], start=layer):
            past = None
            if i == last and last_only:
                keys, values = _keys_values(block, resid[:, :-1])
                past = TransformerLensKeyValueCacheEntry(
                    torch.cat([kv[i].past_keys[:, :start].repeat(n_variants, 1, 1, 1), keys], 1),
                    torch.cat([kv[i].past_values[:, :start].repeat(n_variants, 1, 1, 1), values], 1),
                    frozen=True,
                )
                resid = resid[:, -1:]
            elif start > 0:
                past = TransformerLensKeyValueCacheEntry(
                    kv[i].past_keys[:, :start].repeat(n_variants, 1, 1, 1),
                    kv[i].past_values[:, :start].repeat(n_variants, 1, 1, 1),
                    frozen=True,
                )
            resid = block(resid, shortformer_pos_embed=pos_embed, past_kv_cache_entry=past, attention_mask=mask)
    return task.score(last_position_logits(model, resid))


@contextmanager
def _uncopied_weights(blocks):
    """The engine's runs without TransformerLens's per-call weight copies: the gated MLPs' (below) and attention's."""
    with _uncopied_gated_mlps(blocks), _attention_weights_rearranged_once():
        yield


class _RearrangeOnce:
    """Stands in for the einops module inside TransformerLens's attention: a parameter rearranged there (W_Q, W_K, W_V
    into [(head d_head), d_model], W_O into [d_model, (head d_head)]: a copy on every call) is rearranged once and
    reused while the sweep runs; the same contiguous tensor TransformerLens makes, so the same products and results.
    With gradients on (attribution) every call rearranges, so that each backward pass has its own graph."""

    def __init__(self, einops_module):
        self._einops, self._done = einops_module, {}

    def rearrange(self, tensor, pattern, **axes):
        if not isinstance(tensor, torch.nn.Parameter) or axes or torch.is_grad_enabled():
            return self._einops.rearrange(tensor, pattern, **axes)
        key = (id(tensor), tensor._version, pattern)
        if key not in self._done:  # the tensor is kept with its copy, so that its id is not reused meanwhile
            self._done[key] = (tensor, self._einops.rearrange(tensor, pattern).contiguous())
        return self._done[key][1]

    def __getattr__(self, name):
        return getattr(self._einops, name)


@contextmanager
def _attention_weights_rearranged_once():
    modules = [abstract_attention, attention_utilities]
    originals = [module.einops for module in modules]
    if isinstance(originals[0], _RearrangeOnce):  # inside a sweep that already holds them: reuse its tensors
        yield
        return
    once = _RearrangeOnce(originals[0])
    for module in modules:
        module.einops = once
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.einops = original


@contextmanager
def _uncopied_gated_mlps(blocks):
    """TransformerLens's GatedMLP copies W_gate, W_in and W_out to transposed contiguous memory on every call (to
    match HF's bfloat16 rounding); in float32 the product reads the transposed view as is. While the engine's batches
    run, each float32 GatedMLP computes the same products, with the same hooks, without the copies."""
    patched = [
        block.mlp
        for block in blocks
        if type(block.mlp) is GatedMLP
        and block.mlp.W_in.dtype in (torch.float32, torch.float64)
        and not (block.cfg.is_layer_norm_activation() and block.mlp.ln is not None)
    ]
    for mlp in patched:
        mlp.forward = partial(_gated_mlp_forward, mlp)
    try:
        yield
    finally:
        for mlp in patched:
            del mlp.forward


def _gated_mlp_forward(mlp: GatedMLP, x: Tensor) -> Tensor:
    pre_act = mlp.hook_pre(F.linear(x, mlp.W_gate.T))
    pre_linear = mlp.hook_pre_linear(F.linear(x, mlp.W_in.T))
    post_act = mlp.hook_post(mlp.act_fn(pre_act) * pre_linear + mlp.b_in)
    return F.linear(post_act, mlp.W_out.T, mlp.b_out)


LAST_POSITION_BLOCK = True  # False: the last block runs at every position (the reference the tests compare with)


def _last_position_block_ok(model: HookedTransformer) -> bool:
    """Whether the last block's keys and values can be computed apart from its queries: plain projections of ln1's
    output (no split or per-head inputs, no QK-norm or clipping, rotary/standard/alibi positions)."""
    cfg, attn = model.cfg, model.blocks[-1].attn
    return (
        LAST_POSITION_BLOCK
        and cfg.positional_embedding_type in ("standard", "rotary", "alibi")
        and not (cfg.use_split_qkv_input or cfg.use_attn_in or cfg.parallel_attn_mlp)
        and getattr(cfg, "clip_qkv", None) is None
        and attn.q_norm is None  # TransformerLens's attention always has both (None without QK-norm)
        and attn.k_norm is None
        and cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
    )


def _keys_values(block, resid: Tensor) -> tuple[Tensor, Tensor]:
    """The keys and values (before rotary, as TransformerLens caches them) of `resid`'s positions in `block`."""
    attn, x = block.attn, block.ln1(resid)
    grouped = hasattr(attn, "_W_K") and not block.cfg.ungroup_grouped_query_attention
    w_k, b_k = (attn._W_K, attn._b_K) if grouped else (attn.W_K, attn.b_K)
    w_v, b_v = (attn._W_V, attn._b_V) if grouped else (attn.W_V, attn.b_V)
    return simple_attn_linear(x, w_k, b_k), simple_attn_linear(x, w_v, b_v)


# What running one more batch through a block costs beyond its rows, in token positions of that block: the per-call
# work (hooks, small ops, Python) and the lower rate of products with fewer rows. On CPU 64 was the best of
# 0 / 16 / 32 / 64 / 128 / 256 for the 16-pair, 5-token layer x position sweep of benchmarks/patching.py (process
# CPU seconds, 1 thread, alternated: 2.34 s against 2.53 s for one batch a layer). On an accelerator, kernel launches
# cost as much as thousands of tokens, so there a layer's variants stay in as few batches as the budget allows.
BATCH_OVERHEAD_TOKENS = {"cpu": 64}
ACCELERATOR_BATCH_OVERHEAD_TOKENS = 4096


def ragged_groups(starts: Sequence[int], seq_len: int, n_prompts: int, per_batch: int, overhead: int) -> list[slice]:
    """Split variants sorted by first changed position (`starts`, ascending) into batches of at most `per_batch`.

    A batch runs every variant from its earliest start, so a variant patching position 4 of 5 batched with one
    patching position 0 computes five positions where one is needed. Each batch costs `overhead` token positions
    plus n_prompts x (variants x positions run); this picks the split of the distinct starts into runs (each run
    chunked to `per_batch`) with the least total cost, by dynamic programming over the distinct starts."""
    distinct = sorted(set(starts))
    if len(distinct) <= 1:
        return [slice(i, min(i + per_batch, len(starts))) for i in range(0, len(starts), per_batch)]
    counts = [0] * len(distinct)
    where = {s: j for j, s in enumerate(distinct)}
    for s in starts:
        counts[where[s]] += 1
    best = [0] + [None] * len(distinct)  # best[i]: the least cost of the first i distinct starts
    cut = [0] * (len(distinct) + 1)
    for i in range(1, len(distinct) + 1):
        n = 0
        for j in range(i - 1, -1, -1):  # the last run holds distinct starts j .. i-1, all run from distinct[j]
            n += counts[j]
            cost = best[j] + -(-n // per_batch) * overhead + n_prompts * n * (seq_len - distinct[j])
            if best[i] is None or cost < best[i]:
                best[i], cut[i] = cost, j
    runs, i = [], len(distinct)
    while i:
        runs.append((cut[i], i))
        i = cut[i]
    slices, offset = [], 0
    for j, i in reversed(runs):
        n = sum(counts[j:i])
        slices += [slice(a, min(a + per_batch, offset + n)) for a in range(offset, offset + n, per_batch)]
        offset += n
    return slices


def _batch_overhead(device) -> int:
    """A batch's fixed cost on `device`, in token positions: BATCH_OVERHEAD_TOKENS, else the accelerators' figure."""
    return BATCH_OVERHEAD_TOKENS.get(torch.device(device).type, ACCELERATOR_BATCH_OVERHEAD_TOKENS)


def plan_batches(task: PatchingTask, sites: Sequence[Site], memory_budget: int) -> list[tuple[int, list[int]]]:
    """The batches patch_sites runs: (layer, indices into `sites`), each within `memory_budget`. Sites normalised.

    A layer's variants are sorted by first changed position and split by `ragged_groups`, so that a variant that
    patches a late position is not run over the earlier positions of another one."""
    by_layer: dict[int, list[int]] = defaultdict(list)
    for i, site in enumerate(sites):
        by_layer[site.layer].append(i)
    per_batch = variants_per_batch(task, memory_budget)
    overhead = _batch_overhead(task.model.cfg.device)
    batches = []
    for layer, idx in sorted(by_layer.items()):
        idx = sorted(idx, key=lambda i: _first_changed_position(sites[i], task))
        starts = [_first_changed_position(sites[i], task) for i in idx]
        batches += [(layer, idx[g]) for g in ragged_groups(starts, task.seq_len, task.n_prompts, per_batch, overhead)]
    return batches


def patch_sites(
    task: PatchingTask,
    sites: Sequence[Site | str],
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Patch each Site's clean slice into the corrupted run, one variant per Site; a tidy DataFrame.

    One row per site (in the order given) with columns component, layer, head, neuron, position,
    hook_name, metric (averaged over prompts) and restoration ((metric - corrupted) / (clean -
    corrupted)). `df.attrs` holds the metric's name and the clean and corrupted baselines.
    memory_budget: bytes of transient activations per batch of variants (the batch is chunked to it).
    progress: show a tqdm bar (default: when the sweep takes more than a few batches).
    """
    if memory_budget <= 0:
        raise InterpError(
            f"memory_budget={memory_budget}: must be a positive number of bytes (default {DEFAULT_MEMORY_BUDGET})."
        )
    if len(sites) == 0:
        raise InterpError("sites is empty: pass at least one Site or hook name to patch.")
    model = task.model
    sites = [normalised_site(model, s, task.seq_len) for s in sites]
    batches = plan_batches(task, sites, memory_budget)
    stop = max(layer for layer, _ in batches) + 1
    with torch.no_grad(), _attention_weights_rearranged_once():
        clean = _clean_cache(task, {s.hook_name for s in sites}, stop)
        corrupted_resid_pre, kv = _corrupted_cache(task, {layer for layer, _ in batches})
        values = np.full(len(sites), np.nan)  # an entry no batch computed stays NaN, never stale memory
        rank, world = rank_world()
        if world > 1:  # under torchrun: this rank runs its share of the batches; the values are summed over ranks
            overhead = _batch_overhead(task.model.cfg.device)
            weights = [
                batch_work(task, [_first_changed_position(sites[i], task) for i in idx], overhead) for _, idx in batches
            ]
            batches = shard_batches(batches, world, model.cfg.n_layers, weights)[rank]
        bar = tqdm(
            total=sum(len(idx) for _, idx in batches),
            desc="patching",
            unit="variant",
            disable=not (progress if progress is not None else len(batches) > 8),
        )
        for layer, idx in batches:
            variants = [sites[i] for i in idx]
            start = min(_first_changed_position(s, task) for s in variants)
            values[idx] = (
                _score_variants(task, layer, start, variants, corrupted_resid_pre[layer], kv, clean).cpu().numpy()
            )
            bar.update(len(idx))
        bar.close()
        if world > 1:
            values = gather_values(values, [i for _, idx in batches for i in idx])
    return results_frame(task, sites, values)


def shard_batches(
    batches: list[tuple[int, list[int]]], world: int, n_layers: int, weights: Sequence[float] | None = None
) -> list[list[tuple[int, list[int]]]]:
    """Split the batches over `world` ranks with about equal work: a batch at layer L costs its weight (default: its
    variants) times the n_layers - L blocks it runs; largest first, each to the least-loaded rank (deterministic, so
    every rank agrees). patch_sites weighs a batch by batch_work: its positions run, not only its variants."""
    weights = [len(idx) for _, idx in batches] if weights is None else list(weights)
    if len(weights) != len(batches):
        raise InterpError(f"shard_batches: {len(weights)} weights for {len(batches)} batches; pass one per batch.")
    shards: list[list[tuple[int, list[int]]]] = [[] for _ in range(world)]
    load = [0.0] * world
    order = sorted(
        range(len(batches)), key=lambda b: (-(n_layers - batches[b][0]) * weights[b], batches[b][0], batches[b][1][0])
    )
    for b in order:
        layer, idx = batches[b]
        rank = min(range(world), key=lambda r: (load[r], r))
        shards[rank].append((layer, idx))
        load[rank] += (n_layers - layer) * weights[b]
    return shards


def batch_work(task: PatchingTask, starts: Sequence[int], overhead: int) -> float:
    """One block's work for a batch whose variants first change positions `starts`, in the token positions of
    ragged_groups' cost: the batch's overhead plus prompts x variants x the positions it runs (from its earliest start)."""
    return overhead + task.n_prompts * len(starts) * (task.seq_len - min(starts))


def gather_values(values: np.ndarray, mine: list[int]) -> np.ndarray:
    """Every rank's computed entries (`mine` on this rank, zero elsewhere) summed over ranks: the whole sweep, on every
    rank. Each entry is computed by exactly one rank, so the float64 sum adds zeros only and is exact."""
    local = torch.zeros(len(values), dtype=torch.float64)
    local[mine] = torch.as_tensor(values[mine], dtype=torch.float64)
    if torch.distributed.get_backend() == "nccl":  # nccl reduces device tensors only
        local = local.cuda()
    torch.distributed.all_reduce(local)
    return local.cpu().numpy()


def results_frame(task: PatchingTask, sites: Sequence[Site], values: np.ndarray) -> pd.DataFrame:
    """The tidy result table shared by every patching method: one row per site."""
    frame = pd.DataFrame(
        {
            "component": [s.component for s in sites],
            "layer": [s.layer for s in sites],
            "head": pd.array([s.head for s in sites], dtype="Int64"),
            "neuron": pd.array([s.neuron for s in sites], dtype="Int64"),
            "position": pd.array([s.position for s in sites], dtype="Int64"),
            "hook_name": [s.hook_name for s in sites],
            "metric": values,
            "restoration": restoration(torch.as_tensor(values), task.clean_metric, task.corrupted_metric).numpy(),
        },
        columns=RESULT_COLUMNS,
    )
    frame.attrs.update(metric=task.metric_name, clean_metric=task.clean_metric, corrupted_metric=task.corrupted_metric)
    return frame
