"""Site: one addressable activation (layer, component, head, neuron, position).

TransformerLens hook names are the canonical names; a Site adds the head, neuron and position
slice. `Site.index()` gives the indexing tuple into the batch-first hook tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NamedTuple

from interp.errors import OutOfRangeError, UnknownSiteError, did_you_mean


class Layout(NamedTuple):
    hook: str  # template; {L} is the layer
    pos_axis: int
    head_axis: int | None  # None: the component has no heads
    neuron_axis: int | None  # None: the component has no neurons
    kv: bool = False  # heads are key/value heads (grouped-query attention)


COMPONENTS: dict[str, Layout] = {
    "embed": Layout("hook_embed", 1, None, None),
    "resid_pre": Layout("blocks.{L}.hook_resid_pre", 1, None, None),
    "resid_mid": Layout("blocks.{L}.hook_resid_mid", 1, None, None),
    "resid_post": Layout("blocks.{L}.hook_resid_post", 1, None, None),
    "attn_out": Layout("blocks.{L}.hook_attn_out", 1, None, None),
    "mlp_out": Layout("blocks.{L}.hook_mlp_out", 1, None, None),
    "mlp_in": Layout("blocks.{L}.ln2.hook_normalized", 1, None, None),  # the MLP's input, after its norm (transcoders)
    "attn_in": Layout("blocks.{L}.hook_attn_in", 1, 2, None),
    "q": Layout("blocks.{L}.attn.hook_q", 1, 2, None),
    "k": Layout("blocks.{L}.attn.hook_k", 1, 2, None, kv=True),
    "v": Layout("blocks.{L}.attn.hook_v", 1, 2, None, kv=True),
    "z": Layout("blocks.{L}.attn.hook_z", 1, 2, None),
    "result": Layout("blocks.{L}.attn.hook_result", 1, 2, None),
    "attn_scores": Layout("blocks.{L}.attn.hook_attn_scores", 2, 1, None),
    "pattern": Layout("blocks.{L}.attn.hook_pattern", 2, 1, None),
    "mlp_pre": Layout("blocks.{L}.mlp.hook_pre", 1, None, 2),
    "mlp_pre_linear": Layout("blocks.{L}.mlp.hook_pre_linear", 1, None, 2),
    "mlp_post": Layout("blocks.{L}.mlp.hook_post", 1, None, 2),
}
_HOOK_TO_COMPONENT = {layout.hook: name for name, layout in COMPONENTS.items()}


@dataclass(frozen=True, order=True)
class Site:
    """One activation. `head` indexes key/value heads for components k and v (GQA)."""

    layer: int | None
    component: str
    head: int | None = None
    neuron: int | None = None
    position: int | None = None

    def __post_init__(self):
        if self.component not in COMPONENTS:
            raise UnknownSiteError(
                f"Site(component={self.component!r}) is not a known component.{did_you_mean(self.component, COMPONENTS)} Known: {', '.join(COMPONENTS)}."
            )
        layout = COMPONENTS[self.component]
        if (self.layer is None) != ("{L}" not in layout.hook):
            need = "needs a layer" if "{L}" in layout.hook else "takes no layer (pass layer=None)"
            raise UnknownSiteError(f"Site(component={self.component!r}) {need}.")
        if self.layer is not None and (
            not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0
        ):
            raise UnknownSiteError(
                f"Site(layer={self.layer!r}, component={self.component!r}): layers are integers counting from 0 "
                "(hook names have no negative layers); the last layer is model.cfg.n_layers - 1."
            )
        if self.head is not None and layout.head_axis is None:
            raise UnknownSiteError(
                f"Site(component={self.component!r}) has no heads; per-head sites are z, q, k, v, result, pattern, attn_scores."
            )
        if self.neuron is not None and layout.neuron_axis is None:
            raise UnknownSiteError(
                f"Site(component={self.component!r}) has no neurons; per-neuron sites are mlp_pre, mlp_pre_linear, mlp_post."
            )

    @property
    def layout(self) -> Layout:
        return COMPONENTS[self.component]

    @property
    def hook_name(self) -> str:
        return self.layout.hook.format(L=self.layer)

    @classmethod
    def from_hook_name(cls, name: str, **slices) -> Site:
        template = re.sub(r"^blocks\.(\d+)\.", "blocks.{L}.", name)
        if template not in _HOOK_TO_COMPONENT:
            raise UnknownSiteError(f"Unknown hook name {name!r}.{did_you_mean(template, _HOOK_TO_COMPONENT)}")
        match = re.match(r"^blocks\.(\d+)\.", name)
        return cls(int(match.group(1)) if match else None, _HOOK_TO_COMPONENT[template], **slices)

    def at(self, **changes) -> Site:
        return replace(self, **changes)

    def index(self, ndim: int | None = None) -> tuple:
        """Indexing tuple into the hook's batch-first tensor (batch axis kept)."""
        layout = self.layout
        idx: list = [slice(None)] * (
            1 + max(a for a in (layout.pos_axis, layout.head_axis, layout.neuron_axis) if a is not None)
        )
        for axis, value in (
            (layout.pos_axis, self.position),
            (layout.head_axis, self.head),
            (layout.neuron_axis, self.neuron),
        ):
            if axis is not None and value is not None:
                idx[axis] = value
        return tuple(idx)

    def check(self, model, seq_len: int | None = None) -> Site:
        """Raise OutOfRangeError naming the field, its range and the model, else return self."""
        cfg = model.cfg
        name = getattr(cfg, "model_name", "model")
        if self.layer is not None and not 0 <= self.layer < cfg.n_layers:
            raise OutOfRangeError(
                f"{self}: layer={self.layer} is out of range; {name} has layers 0..{cfg.n_layers - 1}."
            )
        if self.component == "result" and not getattr(cfg, "use_attn_result", False):
            raise UnknownSiteError(
                f"{self}: per-head results are not computed by this model; call model.set_use_attn_result(True) first, "
                "or use the z site (the head's output before W_O)."
            )
        if self.head is not None:
            n = n_heads(cfg, self.component)
            if not -n <= self.head < n:
                kind = (
                    "key/value heads (grouped-query attention: query head h reads kv head h // group)"
                    if self.layout.kv
                    else "query heads"
                )
                raise OutOfRangeError(f"{self}: head={self.head} is out of range; {name} has {n} {kind}, 0..{n - 1}.")
        if self.neuron is not None and not -cfg.d_mlp <= self.neuron < cfg.d_mlp:
            raise OutOfRangeError(
                f"{self}: neuron={self.neuron} is out of range; {name} has d_mlp={cfg.d_mlp} neurons, 0..{cfg.d_mlp - 1}."
            )
        if self.position is not None and seq_len is not None and not -seq_len <= self.position < seq_len:
            raise OutOfRangeError(f"{self}: position={self.position} is out of range for prompts of {seq_len} tokens.")
        return self

    def __str__(self) -> str:
        extras = "".join(
            f", {k}={v}"
            for k, v in (("head", self.head), ("neuron", self.neuron), ("position", self.position))
            if v is not None
        )
        return f"Site({self.hook_name}{extras})"


def n_heads(model, component: str = "z") -> int:
    """How many heads `component` has: key/value heads for k and v (grouped-query attention), query heads otherwise.

    `model` is a model with a `.cfg` or the cfg itself.
    """
    cfg = getattr(model, "cfg", model)
    layout = COMPONENTS.get(component)
    if layout is not None and layout.kv:
        return getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return cfg.n_heads


def kv_head_of(model, head: int) -> int:
    """The key/value head a query head reads under grouped-query attention."""
    return head // (model.cfg.n_heads // n_heads(model, "k"))


def as_site(model, where: Site | str, **slices) -> Site:
    """Accept a Site or a hook name; validate the name against the model's hooks (with close matches)."""
    if isinstance(where, Site):
        site = where.at(**slices) if slices else where
    elif isinstance(where, str):
        if where not in model.hook_dict:
            raise UnknownSiteError(f"{where!r} is not a hook of this model.{did_you_mean(where, model.hook_dict)}")
        site = Site.from_hook_name(where, **slices)
    else:
        raise TypeError(f"Expected a Site or a hook name string, got {type(where).__name__}.")
    site.check(model)
    if site.hook_name not in model.hook_dict:
        hint = " (set model.set_use_attn_result(True) for per-head results)" if site.component == "result" else ""
        raise UnknownSiteError(
            f"{site.hook_name!r} is not a hook of this model{hint}.{did_you_mean(site.hook_name, model.hook_dict)}"
        )
    return site
