"""Zero, mean and resample ablation of layers, attention heads and MLP neurons.

An `Ablation` names what to knock out (a set of Sites, ablated together) and how. The values that
replace each site come from `replacement_values`, which any backend can call with its own cache
function; `ablation_hooks` / `run_ablated` apply them to a TransformerLens model. Many ablations
over one reference set can cache it once (`reference_activations`) and pass it as `reference_cache`.

Per-head ablation goes through `z` Sites (blocks.L.attn.hook_z, the input to W_O): under
grouped-query attention z still has one slice per *query* head, so ablating head h leaves the
other query heads that share its key/value head untouched. Sites on `k` / `v` index key/value
heads, so ablating one there affects its whole group of query heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from interp.errors import InterpError, ShapeMismatchError, did_you_mean
from interp.hooks import HookFn, cache_sites, to_tokens
from interp.sites import Site, as_site

METHODS = ("zero", "mean", "resample")
MEAN_OVER = ("auto", "position", "all")
_TWO_POSITION_AXES = ("pattern", "attn_scores")  # query and key positions: length-dependent shape

Prompts = Sequence[str] | Tensor
TokenizeFn = Callable[[Prompts], Int[Tensor, "batch pos"]]
CacheFn = Callable[[Tensor, list[Site]], dict[Site, Tensor]]


def heads(layer_head_pairs: Iterable[tuple[int, int]], *, position: int | None = None) -> list[Site]:
    """z Sites of (layer, query head) pairs: ablating one removes exactly that head's input to W_O."""
    return [Site(layer, "z", head=head, position=position) for layer, head in layer_head_pairs]


def neurons(layer_neuron_pairs: Iterable[tuple[int, int]], *, position: int | None = None) -> list[Site]:
    """mlp_post Sites of (layer, neuron) pairs: the activation after the (gated) nonlinearity."""
    return [Site(layer, "mlp_post", neuron=neuron, position=position) for layer, neuron in layer_neuron_pairs]


def layers(layer_indices: Iterable[int], component: str = "attn_out", *, position: int | None = None) -> list[Site]:
    """Whole-layer Sites (attn_out, mlp_out, resid_post, ...) of each layer in `layer_indices`."""
    return [Site(layer, component, position=position) for layer in layer_indices]


@dataclass(frozen=True)
class Ablation:
    """What to ablate and how; every site is ablated in the same forward.

    sites: Sites or TransformerLens hook names; a Site's head / neuron / position narrows it.
    method: "zero"; "mean" (mean activation over `reference`); "resample" (each target prompt
        takes the activation of one randomly chosen reference prompt, the same one for every site,
        never a reference row identical to the target row itself).
    reference: prompts or a [batch, pos] token tensor; needed by mean and resample.
    mean_over: "position" (per-position mean over reference prompts, which must have the target's
        length), "all" (mean over every reference token), "auto" (per-position when the lengths
        match, else all).
    seed: picks the resampled prompts; the same seed gives the same run.
    """

    sites: tuple[Site, ...]
    method: str = "zero"
    reference: tuple[str, ...] | Tensor | None = field(default=None, compare=False)
    mean_over: str = "auto"
    seed: int = 0

    def __post_init__(self):
        sites = [self.sites] if isinstance(self.sites, (Site, str)) else list(self.sites)
        sites = [Site.from_hook_name(s) if isinstance(s, str) else s for s in sites]
        if not sites:
            raise InterpError(
                "Ablation(sites=[]): name at least one Site to ablate, e.g. interventions.heads([(3, 1)])."
            )
        bad = [s for s in sites if not isinstance(s, Site)]
        if bad:
            raise TypeError(f"Ablation(sites=...): expected Sites or hook names, got {type(bad[0]).__name__}.")
        object.__setattr__(self, "sites", tuple(dict.fromkeys(sites)))
        if self.method not in METHODS:
            raise InterpError(
                f"Ablation(method={self.method!r}) is not a known method.{did_you_mean(self.method, METHODS)} Known: {', '.join(METHODS)}."
            )
        if self.mean_over not in MEAN_OVER:
            raise InterpError(
                f"Ablation(mean_over={self.mean_over!r}) is not a choice.{did_you_mean(self.mean_over, MEAN_OVER)} Choices: {', '.join(MEAN_OVER)}."
            )
        reference = self.reference
        if isinstance(reference, str):
            reference = (reference,)
        elif reference is not None and not isinstance(reference, Tensor):
            reference = tuple(reference)
        object.__setattr__(self, "reference", reference)
        if self.method != "zero" and (reference is None or len(reference) == 0):
            raise InterpError(
                f"Ablation(method={self.method!r}) needs a non-empty reference set: pass reference=[prompts] (or a [batch, pos] token tensor) to take the {self.method} from."
            )
        if self.method != "mean" and self.mean_over != "auto":
            raise InterpError(
                f"Ablation(mean_over={self.mean_over!r}) applies to method='mean' only; leave it at 'auto' for {self.method!r}."
            )


def reference_sites(ablation: Ablation) -> list[Site]:
    """The sites to cache on the reference set: each ablated slice at every position."""
    return list(dict.fromkeys(s.at(position=None) for s in ablation.sites))


def _pos_axis_of_slice(site: Site) -> int:
    """Position axis in act[site.index()] once an integer head index has dropped its axis."""
    layout = site.layout
    dropped = layout.head_axis is not None and site.head is not None and layout.head_axis < layout.pos_axis
    return layout.pos_axis - dropped


def resample_rows(reference: Tensor, tokens: Tensor, seed: int) -> Int[Tensor, " batch"]:
    """For each target row, a random reference row that is not the same token sequence (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    same_length = reference.shape[1] == tokens.shape[1]
    rows = []
    for i, row in enumerate(tokens):
        identical = (
            (reference == row).all(dim=1).cpu() if same_length else torch.zeros(len(reference), dtype=torch.bool)
        )
        candidates = torch.nonzero(~identical).flatten()
        if len(candidates) == 0:
            raise InterpError(
                f"Ablation(method='resample'): every reference prompt is identical to target prompt {i}, so there is nothing different to resample from. Add other prompts to reference."
            )
        rows.append(candidates[torch.randint(len(candidates), (1,), generator=generator)].item())
    return torch.tensor(rows)


def replacement_values(
    ablation: Ablation, tokens: Int[Tensor, "batch pos"], tokenize: TokenizeFn, cache: CacheFn
) -> dict[Site, Tensor]:
    """For each ablated site, the tensor that replaces act[site.index()] (broadcastable to it).

    tokenize(prompts) -> token ids and cache(tokens, sites) -> {site: [batch, *slice]} are the
    backend's own, so TransformerLens and nnsight models share this one definition of the methods.
    """
    if ablation.method == "zero":
        return {s: torch.zeros((), device=tokens.device) for s in ablation.sites}
    reference = tokenize(ablation.reference)
    seq_len, ref_len = tokens.shape[1], reference.shape[1]
    per_position = (
        ablation.method == "resample"
        or ablation.mean_over == "position"
        or (ablation.mean_over == "auto" and ref_len == seq_len)
    )
    needs_same_length = per_position or any(s.component in _TWO_POSITION_AXES for s in ablation.sites)
    if needs_same_length and ref_len != seq_len:
        why = (
            "resample takes whole activations from reference prompts"
            if ablation.method == "resample"
            else "a per-position mean (or an attention pattern's mean) needs it"
        )
        fix = "" if ablation.method == "resample" else " or mean_over='all' to average over every reference token"
        raise ShapeMismatchError(
            f"Ablation.reference has {ref_len} tokens per prompt but the target prompts have {seq_len}; {why}. Use reference prompts of {seq_len} tokens{fix}."
        )
    acts = cache(reference, reference_sites(ablation))
    rows = resample_rows(reference, tokens, ablation.seed) if ablation.method == "resample" else None
    values = {}
    for site in ablation.sites:
        ref = acts[site.at(position=None)]  # [n_ref, *slice at all positions]
        pos_axis = _pos_axis_of_slice(site)
        if rows is not None:
            value = ref[rows.to(ref.device)]  # [batch, *slice]
        elif per_position:
            value = ref.mean(dim=0, keepdim=True)  # [1, *slice]
        else:
            value = ref.mean(dim=(0, pos_axis), keepdim=True)  # [1, *slice with 1 position]
        if site.position is not None:
            value = value.select(pos_axis, site.position if per_position else 0)
        values[site] = value
    return values


def reference_activations(model: HookedTransformer, reference: Prompts, hook_names: Iterable[str]) -> dict[str, Tensor]:
    """The reference prompts' whole activations at each hook name ([n_ref, ...] as TransformerLens caches them), for `reference_cache`."""
    tokens = to_tokens(model, reference, argument="reference")
    cached = cache_sites(model, tokens, [as_site(model, name) for name in dict.fromkeys(hook_names)])
    return {site.hook_name: act for site, act in cached.items()}


def _cached_reference(reference_cache: Mapping[str, Tensor]) -> CacheFn:
    """A CacheFn that slices precomputed reference activations instead of running the model."""

    def cache(ref_tokens: Tensor, sites: list[Site]) -> dict[Site, Tensor]:
        missing = sorted({s.hook_name for s in sites} - set(reference_cache.keys()))
        if missing:
            raise InterpError(
                f"ablation_hooks(reference_cache=...) lacks hook(s) {missing}; cache them too, e.g. reference_activations(model, reference, {missing})."
            )
        for name in {s.hook_name for s in sites}:
            if reference_cache[name].shape[:2] != ref_tokens.shape[:2]:
                raise ShapeMismatchError(
                    f"ablation_hooks(reference_cache=...)[{name!r}] has batch x pos {tuple(reference_cache[name].shape[:2])} but Ablation.reference "
                    f"has {tuple(ref_tokens.shape)}; cache the same reference prompts the Ablation names."
                )
        return {s: reference_cache[s.hook_name][s.index()] for s in sites}

    return cache


def ablation_hooks(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    ablation: Ablation,
    *,
    reference_cache: Mapping[str, Tensor] | None = None,
) -> list[tuple[str, HookFn]]:
    """TransformerLens fwd_hooks applying `ablation` to `tokens`: one hook per hook name, all its sites at once.

    reference_cache: hook name -> the activations of `ablation.reference` at that hook (from
    `reference_activations` or `model.run_with_cache(reference)`); mean and resample then read
    their values from it instead of running the model on the reference prompts again.
    """
    sites = [as_site(model, s).check(model, tokens.shape[1]) for s in ablation.sites]
    tokenize = lambda prompts: to_tokens(model, prompts, argument="Ablation.reference")  # noqa: E731
    run_reference = lambda ref_tokens, sites: cache_sites(model, ref_tokens, sites)  # noqa: E731
    values = replacement_values(
        ablation, tokens, tokenize, run_reference if reference_cache is None else _cached_reference(reference_cache)
    )
    by_hook: dict[str, list[Site]] = {}
    for site in sites:
        by_hook.setdefault(site.hook_name, []).append(site)

    def make_hook(group: list[Site]) -> HookFn:
        def hook(act: Tensor, hook) -> Tensor:
            for site in group:
                act[site.index()] = values[site].to(act.dtype)
            return act

        return hook

    return [(name, make_hook(group)) for name, group in by_hook.items()]


def run_ablated(
    model: HookedTransformer,
    prompts: Prompts,
    ablation: Ablation,
    return_type: str | None = "logits",
    *,
    reference_cache: Mapping[str, Tensor] | None = None,
) -> Float[Tensor, "batch pos d_vocab"] | Tensor | None:
    """Run `prompts` with every site of `ablation` ablated; return_type as in HookedTransformer.forward; reference_cache as in ablation_hooks."""
    tokens = to_tokens(model, prompts)
    with torch.no_grad():
        return model.run_with_hooks(
            tokens,
            fwd_hooks=ablation_hooks(model, tokens, ablation, reference_cache=reference_cache),
            return_type=return_type,
        )
