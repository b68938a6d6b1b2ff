"""NNsightModel: any local Hugging Face causal LM, addressed with the same Sites as a HookedTransformer.

nnsight reads and writes module inputs and outputs during a forward; a `Tap` says which module
value holds a Site's activation (for Llama-family models: resid_post is the decoder layer's
output, z the input of self_attn.o_proj split into heads, mlp_post the input of mlp.down_proj).
Values are equal to TransformerLens's up to float error, with one known difference: TL centres the
unembedding, so logits differ by a per-position constant while log-probs agree.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nnsight
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import InterpError, ModelLoadError, ShapeMismatchError, UnknownSiteError
from interp.hooks import to_tokens
from interp.interventions import Ablation, Prompts, replacement_values
from interp.models import load_hf_model, converted_dir
from interp.sites import Site


class Tap(NamedTuple):
    module: str  # path under the HF model; {L} is the layer
    port: str  # "input" or "output" (the first tensor of a tuple output)
    order: int  # when the value appears within a layer's forward; reads and writes must go in this order
    heads: str | None = None  # "query" or "kv": the last axis splits into heads of d_head


LLAMA_TAPS: dict[str, Tap] = {
    "embed": Tap("model.embed_tokens", "output", -1),
    "resid_pre": Tap("model.layers.{L}", "input", 0),
    "q": Tap("model.layers.{L}.self_attn.q_proj", "output", 1, "query"),
    "k": Tap("model.layers.{L}.self_attn.k_proj", "output", 2, "kv"),
    "v": Tap("model.layers.{L}.self_attn.v_proj", "output", 3, "kv"),
    "z": Tap("model.layers.{L}.self_attn.o_proj", "input", 4, "query"),
    "attn_out": Tap("model.layers.{L}.self_attn", "output", 5),
    "resid_mid": Tap("model.layers.{L}.post_attention_layernorm", "input", 6),
    "mlp_pre": Tap("model.layers.{L}.mlp.gate_proj", "output", 7),
    "mlp_pre_linear": Tap("model.layers.{L}.mlp.up_proj", "output", 8),
    "mlp_post": Tap("model.layers.{L}.mlp.down_proj", "input", 9),
    "mlp_out": Tap("model.layers.{L}.mlp", "output", 10),
    "resid_post": Tap("model.layers.{L}", "output", 11),
}
LLAMA_LAYOUT = (
    "model.layers.0.self_attn.o_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.0.post_attention_layernorm",
)


@dataclass(frozen=True)
class HFModelShape:
    """The TransformerLens-style cfg fields Site.check and to_tokens read, taken from an HF config."""

    model_name: str
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    default_prepend_bos: bool
    device: torch.device

    @classmethod
    def from_hf(cls, hf_model, prepend_bos: bool) -> HFModelShape:
        c = hf_model.config
        n_heads = c.num_attention_heads
        return cls(
            model_name=getattr(c, "name_or_path", "") or type(hf_model).__name__,
            n_layers=c.num_hidden_layers,
            n_heads=n_heads,
            n_key_value_heads=getattr(c, "num_key_value_heads", None) or n_heads,
            d_head=getattr(c, "head_dim", None) or c.hidden_size // n_heads,
            d_model=c.hidden_size,
            d_mlp=getattr(c, "intermediate_size", None)
            or 4 * c.hidden_size,  # the latter only for unmapped architectures
            default_prepend_bos=prepend_bos,
            device=next(hf_model.parameters()).device,
        )


def _dequantized_copy(gguf: Path) -> Path:
    """A float32 HF directory of a .gguf file, made once: dequantising on every load takes ~15 s."""
    directory = converted_dir(gguf, f"{gguf.stem}-hf")
    if not (directory / "config.json").exists():
        hf_model, tokenizer = load_hf_model(gguf)
        partial = directory.with_name(directory.name + ".partial")
        hf_model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)  # atomic: a killed save never leaves a half-written copy
    return directory


class NNsightModel:
    """An HF causal LM run through nnsight, taking Sites for caching, ablating and patching.

    prepend_bos: add the tokenizer's BOS to each prompt (False matches the bundled TL model).
    """

    def __init__(self, hf_model: torch.nn.Module, tokenizer, *, prepend_bos: bool = False):
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.nn = nnsight.TransformersModel(hf_model, tokenizer=tokenizer)
        self.cfg = HFModelShape.from_hf(hf_model, prepend_bos)
        module_names = dict(hf_model.named_modules())
        self.taps = LLAMA_TAPS if all(name in module_names for name in LLAMA_LAYOUT) else {}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> NNsightModel:
        """Load a local HF model directory or .gguf file (never from a hub); kwargs go to __init__."""
        source = Path(path).expanduser()
        if not source.exists():
            raise ModelLoadError(
                f"NNsightModel.from_pretrained(path={str(path)!r}): no such file or directory. Pass a local Hugging Face model directory or a .gguf file."
            )
        hf_model, tokenizer = load_hf_model(_dequantized_copy(source) if source.suffix == ".gguf" else source)
        return cls(hf_model, tokenizer, **kwargs)

    def to_tokens(self, prompt: str, prepend_bos: bool = False) -> Int[Tensor, "1 pos"]:
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if prepend_bos and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        return torch.tensor([ids], device=self.cfg.device)

    def tap(self, site: Site) -> Tap:
        """The module value holding `site`, or UnknownSiteError naming what is mapped."""
        arch = type(self.hf_model).__name__
        if not self.taps:
            raise UnknownSiteError(
                f"NNsightModel has no Site mapping for {arch}: its modules do not follow the Llama layout ({', '.join(LLAMA_LAYOUT)}). "
                "Read its modules through .nn (the nnsight TransformersModel) directly."
            )
        if site.component not in self.taps:
            raise UnknownSiteError(
                f"{site}: component {site.component!r} has no module value in {arch} (it is computed inside a module, not passed between modules). "
                f"Mapped components: {', '.join(self.taps)}."
            )
        return self.taps[site.component]

    def _sites(self, sites: Sequence[Site | str], seq_len: int, argument: str) -> list[Site]:
        if isinstance(sites, (Site, str)):
            sites = [sites]
        if not sites:
            raise InterpError(f"{argument} is empty: name at least one Site or hook name.")
        sites = [Site.from_hook_name(s) if isinstance(s, str) else s for s in sites]
        for site in sites:
            self.tap(site)
            site.check(self, seq_len)
        return sites

    def _trace(self, tokens: Tensor, reads: Sequence[Site], writes: dict[Site, Tensor], *, logits: bool):
        """One forward: write `writes` (site -> replacement of act[site.index()]), record `reads`."""
        groups: dict[tuple, list[tuple[str, Site]]] = {}
        for kind, group in (("read", reads), ("write", writes)):
            for site in group:
                tap = self.tap(site)
                groups.setdefault((-1 if site.layer is None else site.layer, tap.order, site.layer), []).append(
                    (kind, site)
                )
        ordered = sorted(groups.items())
        with torch.no_grad():
            with self.nn.trace(tokens) as tracer:
                found = nnsight.save({})
                for (_, _, layer), entries in ordered:
                    tap = self.tap(entries[0][1])
                    envoy = self.nn.get(tap.module.format(L=layer))
                    value = envoy.input if tap.port == "input" else envoy.output
                    tensor = value[0] if isinstance(value, tuple) else value
                    if any(kind == "write" for kind, _ in entries):
                        tensor = tensor.clone()
                        for kind, site in entries:
                            if kind == "write":
                                self._split(tensor, tap)[site.index()] = writes[site].to(tensor.dtype)
                        new = (tensor, *value[1:]) if isinstance(value, tuple) else tensor
                        if tap.port == "input":
                            envoy.input = new
                        else:
                            envoy.output = new
                    for kind, site in entries:
                        if kind == "read":
                            found[site] = self._split(tensor, tap)[site.index()].clone()
                if logits:
                    found["logits"] = self.nn.output.logits
                else:
                    tracer.stop()
        return found

    def _split(self, tensor: Tensor, tap: Tap) -> Tensor:
        if tap.heads is None:
            return tensor
        n = self.cfg.n_heads if tap.heads == "query" else self.cfg.n_key_value_heads
        return tensor.view(*tensor.shape[:-1], n, self.cfg.d_head)

    def cache(self, prompts: Prompts, sites: Sequence[Site | str]) -> dict[Site, Tensor]:
        """Activations at `sites`, each [batch, *slice], as interp.hooks.cache_sites gives them."""
        tokens = to_tokens(self, prompts)
        sites = self._sites(sites, tokens.shape[1], "sites")
        found = self._trace(tokens, sites, {}, logits=False)
        return {s: found[s] for s in sites}

    def run_ablated(self, prompts: Prompts, ablation: Ablation) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits with every site of `ablation` ablated (zero / mean / resample as in interp.interventions)."""
        tokens = to_tokens(self, prompts)
        self._sites(ablation.sites, tokens.shape[1], "Ablation.sites")
        values = replacement_values(
            ablation, tokens, lambda p: to_tokens(self, p, argument="Ablation.reference"), self.cache
        )
        return self._trace(tokens, [], values, logits=True)["logits"]

    def patch(
        self, clean: Prompts, corrupted: Prompts, site: Site | str | Sequence[Site | str]
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of `corrupted` with the activation at `site` (one or several) taken from `clean`."""
        clean_tokens = to_tokens(self, clean, argument="clean")
        corrupted_tokens = to_tokens(self, corrupted, argument="corrupted")
        if clean_tokens.shape != corrupted_tokens.shape:
            raise ShapeMismatchError(
                f"clean and corrupted must have the same shape [batch, pos] to patch row by row; got {tuple(clean_tokens.shape)} and {tuple(corrupted_tokens.shape)}."
            )
        clean_acts = self.cache(clean_tokens, site)
        return self._trace(corrupted_tokens, [], clean_acts, logits=True)["logits"]
