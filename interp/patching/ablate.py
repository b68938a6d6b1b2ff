"""Exact, batched ablated forwards: many ablations (each a set of Sites knocked out together) in few batches.

The patching engine's idea applied to ablation: every ablation leaves the layers before its first
site as in the unablated run, so the unablated resid_pre of each needed layer is cached once, the
ablations are sorted by their first layer, and each chunk of them runs as one stacked batch that
starts at the earliest first layer of the chunk (one copy of the prompts per ablation). Hooks write
each ablation's replacement values into its own copy only; only the last position is unembedded.
The replacement values are interp.interventions' own (zero / mean / resample, with a cached
reference), so the result equals `run_ablated` prompt for prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp.errors import InterpError
from interp.hooks import cache_sites, capture, to_tokens, transient_bytes_per_sequence
from interp.interventions import Ablation, _cached_reference, replacement_values
from interp.patching.engine import DEFAULT_MEMORY_BUDGET
from interp.patching.task import last_position_logits
from interp.sites import as_site


def _first_layer(model: HookedTransformer, ablation: Ablation) -> int:
    layers = [as_site(model, s).layer for s in ablation.sites]
    if any(layer is None for layer in layers):
        raise InterpError(
            f"ablated_last_logits: {ablation.sites} has a site outside the blocks (hook_embed / ln_final); ablate sites inside a block (layer 0..{model.cfg.n_layers - 1})."
        )
    return min(layer % model.cfg.n_layers for layer in layers)


def ablations_per_batch(model: HookedTransformer, tokens: Tensor, memory_budget: int) -> int:
    """How many ablations (copies of all prompts) fit the transient-activation budget."""
    per_sequence = transient_bytes_per_sequence(model, tokens.shape[1]) + model.cfg.d_vocab * model.cfg.dtype.itemsize
    return max(1, memory_budget // (per_sequence * tokens.shape[0]))


def ablated_last_logits(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablations: Sequence[Ablation],
    *,
    reference_cache: Mapping[str, Tensor] | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Float[Tensor, "ablation batch d_vocab"] | Tensor:
    """Last-position logits of `tokens` under each ablation (each one's sites ablated together), batched exactly.

    reference_cache: hook name -> the activations of the ablations' common reference prompts (as in
    interventions.ablation_hooks); without it mean / resample run the reference once per ablation.
    Unpadded prompts of one length only (run one call per length group).
    reduce: maps each chunk's logits [n, batch, d_vocab] to what is kept (e.g. per-prompt scores),
    so hundreds of ablations need not hold their full logits at once; the result stacks it per ablation.
    """
    if memory_budget <= 0:
        raise InterpError(f"ablated_last_logits(memory_budget={memory_budget}): must be a positive number of bytes.")
    if model.cfg.positional_embedding_type == "shortformer":
        raise InterpError(
            "ablated_last_logits: shortformer positional embeddings are not supported; use interventions.run_ablated per ablation."
        )
    tokens = to_tokens(model, tokens).to(model.cfg.device)
    if not ablations:
        return torch.empty(0, tokens.shape[0], model.cfg.d_vocab)
    tokenize = lambda prompts: to_tokens(model, prompts, argument="Ablation.reference")  # noqa: E731
    run_reference = lambda ref_tokens, sites: cache_sites(model, ref_tokens, sites)  # noqa: E731
    cache_fn = run_reference if reference_cache is None else _cached_reference(reference_cache)
    firsts = [_first_layer(model, a) for a in ablations]
    n_prompts = tokens.shape[0]
    kept: dict[int, Tensor] = {}
    with torch.no_grad():
        needed = sorted(set(firsts))
        acts = capture(
            model, tokens, [f"blocks.{layer}.hook_resid_pre" for layer in needed], stop_at_layer=max(needed) + 1
        )
        resid_pre = {int(name.split(".")[1]): act for name, act in acts.items()}
        order = sorted(range(len(ablations)), key=lambda i: firsts[i])
        per_batch = ablations_per_batch(model, tokens, memory_budget)
        chunks = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        for chunk in tqdm(chunks, desc="ablated forwards", unit="batch", disable=not progress):
            start = min(firsts[i] for i in chunk)
            by_hook: dict[str, list[tuple[int, tuple, Tensor]]] = defaultdict(list)
            for slot, i in enumerate(chunk):
                values = replacement_values(ablations[i], tokens, tokenize, cache_fn)
                for site in ablations[i].sites:
                    checked = as_site(model, site).check(model, tokens.shape[1])
                    by_hook[checked.hook_name].append((slot, checked.index(), values[site]))

            def write(entries):
                def hook(act: Tensor, hook) -> Tensor:
                    for slot, index, value in entries:
                        act[slot * n_prompts : (slot + 1) * n_prompts][index] = value.to(act.dtype)
                    return act

                return hook

            resid = resid_pre[start].repeat(len(chunk), 1, 1)
            with model.hooks(fwd_hooks=[(name, write(entries)) for name, entries in by_hook.items()]):
                for block in model.blocks[start:]:
                    resid = block(resid)
            logits = last_position_logits(model, resid)[:, 0].float().cpu().view(len(chunk), n_prompts, -1)
            reduced = logits if reduce is None else reduce(logits)
            kept.update({i: reduced[slot] for slot, i in enumerate(chunk)})
    return torch.stack([kept[i] for i in range(len(ablations))])
