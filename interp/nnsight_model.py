"""NNsightModel: any local Hugging Face causal LM, addressed with the same Sites as a HookedTransformer.

nnsight reads and writes module inputs and outputs during a forward; a `Tap` says which module
value holds a Site's activation (for Llama-family models: resid_post is the decoder layer's
output, z the input of self_attn.o_proj split into heads, mlp_post the input of mlp.down_proj).
Values are equal to TransformerLens's up to float error, with one known difference: TL centres the
unembedding, so logits differ by a per-position constant while log-probs agree.

Models too large for any local machine run on NDIF (the National Deep Inference Fabric) through nnsight's remote
execution: `NNsightModel.remote("meta-llama/Llama-3.1-70B")` builds the architecture on the meta device from its
config (no weights are loaded), and every cache / ablate / patch call ships the traced block to the NDIF host, which
runs it on its copy of the weights and sends back the saved values. It needs the network and an NDIF API key
(NDIF_API_KEY, or api_key=); without them the call fails at once with an InterpError naming the fix.
`remote="local"` serialises and deserialises each request exactly as for NDIF and runs it here on the local weights:
the remote path checked without a server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from urllib.parse import urlparse
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
from interp.models import converted_dir, load_hf_model, prune_superseded
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
        (partial / "source.json").write_text(
            json.dumps({"source": str(gguf), "kind": "dequantized HF copy (nnsight route)"})
        )
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)  # atomic: a killed save never leaves a half-written copy
        prune_superseded(directory, gguf)
    return directory


@dataclass(frozen=True)
class RemoteTarget:
    """Where a remote NNsightModel's traces run: the model NDIF serves, its host and the API key."""

    repo_id: str  # the Hugging Face repo id NDIF serves the model under
    revision: str | None = None
    host: str | None = None  # None: nnsight's configured host (NDIF_HOST, else https://api.ndif.us)
    api_key: str | None = None  # None: nnsight's configured key (NDIF_API_KEY or its config file)
    connect_timeout: float = 10.0  # seconds to reach the host before giving up


class NNsightModel:
    """An HF causal LM run through nnsight, taking Sites for caching, ablating and patching.

    prepend_bos: add the tokenizer's BOS to each prompt (False matches the bundled TL model).
    remote: None (run here), "local" (each trace serialised and deserialised as for NDIF, then run here), or a
    RemoteTarget (each trace sent to NDIF; see `NNsightModel.remote`).
    """

    def __init__(
        self,
        hf_model: torch.nn.Module,
        tokenizer,
        *,
        prepend_bos: bool = False,
        remote: RemoteTarget | str | None = None,
        wrapper=None,  # an nnsight TransformersModel already around hf_model (NNsightModel.remote's meta one)
    ):
        if not (remote is None or remote == "local" or isinstance(remote, RemoteTarget)):
            raise InterpError(
                f"NNsightModel(remote={remote!r}): pass None (run here), 'local' (the remote path simulated here) or a "
                "RemoteTarget (use NNsightModel.remote(repo_id) to build one)."
            )
        self.hf_model = hf_model.eval()
        self.tokenizer = tokenizer
        self.nn = wrapper if wrapper is not None else nnsight.TransformersModel(hf_model, tokenizer=tokenizer)
        self.cfg = HFModelShape.from_hf(hf_model, prepend_bos)
        if isinstance(remote, RemoteTarget):  # meta weights: tokens and results live on the CPU here
            self.cfg = dataclasses.replace(self.cfg, device=torch.device("cpu"))
        self.remote_target = remote
        module_names = dict(hf_model.named_modules())
        self.taps = LLAMA_TAPS if all(name in module_names for name in LLAMA_LAYOUT) else {}

    @classmethod
    def remote(
        cls,
        repo_id: str,
        *,
        config: str | os.PathLike | None = None,
        revision: str | None = None,
        host: str | None = None,
        api_key: str | None = None,
        prepend_bos: bool = False,
    ) -> NNsightModel:
        """A model that runs on NDIF: its architecture built here on the meta device (no weights, no memory), every
        trace sent to the NDIF host as a request naming `repo_id`.

        config: a local folder holding the model's config.json and tokenizer (default: `repo_id` itself, read from
        the local Hugging Face cache, or from the Hub when online). Sending needs the network and an NDIF API key
        (api_key, or the NDIF_API_KEY environment variable); without them each call fails at once, naming the fix.
        """
        from transformers import AutoConfig, AutoTokenizer

        source = str(Path(config).expanduser()) if config is not None else repo_id
        try:
            hf_config = AutoConfig.from_pretrained(source, revision=None if config else revision)
            tokenizer = AutoTokenizer.from_pretrained(source, revision=None if config else revision)
        except OSError as exc:
            raise ModelLoadError(
                f"NNsightModel.remote({repo_id!r}): could not read its config and tokenizer from {source!r} ({exc}). "
                "Offline, pass config= a local folder with the model's config.json and tokenizer files, or download "
                f"them once (huggingface-cli download {repo_id} config.json tokenizer.json tokenizer_config.json)."
            ) from None
        # nnsight's own meta build (architecture from the config, no weights), as for its remote=True traces
        wrapper = nnsight.TransformersModel(
            source, tokenizer=tokenizer, task="text-generation", config=hf_config, revision=None if config else revision
        )
        target = RemoteTarget(repo_id, revision, host, api_key)
        return cls(wrapper._module, tokenizer, prepend_bos=prepend_bos, remote=target, wrapper=wrapper)

    def model_key(self) -> str:
        """The key a remote request names its model by (nnsight's own format: wrapper class, repo id, revision,
        task); only for a remote model."""
        if not isinstance(self.remote_target, RemoteTarget):
            raise InterpError("model_key(): this NNsightModel runs here; build one with NNsightModel.remote(repo_id).")
        import json

        from nnsight.util import to_import_path

        target = self.remote_target
        try:  # nnsight's own minting, with its Hub look-up of the canonical id answered by the id as given
            from nnsight.modeling import huggingface

            huggingface._ID_CACHE.setdefault(target.repo_id, target.repo_id)
            self.nn.repo_id, self.nn.revision = target.repo_id, target.revision
            self.nn.task = self.nn.task or "text-generation"
            return self.nn.to_model_key()
        except (ImportError, AttributeError):  # another nnsight layout: the same fields by hand
            data = {"repo_id": target.repo_id, "revision": target.revision, "task": "text-generation"}
            return f"{to_import_path(self.nn._remoteable_class())}:{json.dumps(data)}"

    def _backend(self):
        """The nnsight backend a trace runs through: None (here), the local simulation, or NDIF's."""
        target = self.remote_target
        if target is None:
            return None
        if target == "local":
            from nnsight.intervention.backends.local import LocalSimulationBackend

            return LocalSimulationBackend(self.nn)
        from nnsight.intervention.backends.remote import RemoteBackend
        from nnsight.schema.config import CONFIG

        api_key = target.api_key or CONFIG.API.APIKEY
        host = target.host or CONFIG.API.HOST
        if not api_key:
            raise InterpError(
                f"NNsightModel.remote({target.repo_id!r}): no NDIF API key. Get one at https://login.ndif.us, then set "
                "the NDIF_API_KEY environment variable or pass api_key= to NNsightModel.remote."
            )
        _reachable(host, target.connect_timeout, target.repo_id)
        return RemoteBackend(self.model_key(), host=host, api_key=api_key)

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
        """One forward: write `writes` (site -> replacement of act[site.index()]), record `reads`.

        The traced block reads only plain data (module paths, index tuples, tensors), never this object or a Site:
        through a remote backend it is shipped as source and run where the interp package is not installed."""
        groups: dict[tuple, list[tuple[str, Site]]] = {}
        for kind, group in (("read", reads), ("write", writes)):
            for site in group:
                tap = self.tap(site)
                groups.setdefault((-1 if site.layer is None else site.layer, tap.order, site.layer), []).append(
                    (kind, site)
                )
        sites: list[Site] = []
        plan = []  # (module path, port, heads to split the last axis into or None, [(kind, key, index, value)])
        for (_, _, layer), entries in sorted(groups.items()):
            tap = self.tap(entries[0][1])
            n_split = (
                None if tap.heads is None else self.cfg.n_heads if tap.heads == "query" else self.cfg.n_key_value_heads
            )
            steps = []
            for kind, site in entries:
                sites.append(site)
                steps.append((kind, len(sites) - 1, site.index(), writes[site] if kind == "write" else None))
            plan.append((tap.module.format(L=layer), tap.port, n_split, steps))
        model, d_head, backend = self.nn, self.cfg.d_head, self._backend()
        with torch.no_grad():
            with model.trace(tokens, backend=backend) as tracer:
                found = nnsight.save({})
                for path, port, n_split, steps in plan:
                    envoy = model.get(path)
                    value = envoy.input if port == "input" else envoy.output
                    tensor = value[0] if isinstance(value, tuple) else value
                    if any(kind == "write" for kind, _, _, _ in steps):
                        tensor = tensor.clone()
                        split = tensor if n_split is None else tensor.view(*tensor.shape[:-1], n_split, d_head)
                        for kind, _, index, new in steps:
                            if kind == "write":
                                split[index] = new.to(tensor.dtype)
                        replaced = (tensor, *value[1:]) if isinstance(value, tuple) else tensor
                        if port == "input":
                            envoy.input = replaced
                        else:
                            envoy.output = replaced
                    split = tensor if n_split is None else tensor.view(*tensor.shape[:-1], n_split, d_head)
                    for kind, key, index, _ in steps:
                        if kind == "read":
                            found[key] = split[index].clone()
                if logits:
                    found["logits"] = model.output.logits
                else:
                    tracer.stop()
        out = {sites[key]: value for key, value in found.items() if key != "logits"}
        if "logits" in found:
            out["logits"] = found["logits"]
        return out

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


def _reachable(host: str, timeout: float, repo_id: str) -> None:
    """Refuse at once, naming the fix, when the NDIF host cannot be reached (offline, a firewall): nnsight's own
    websocket connection would otherwise wait without a time limit."""
    url = urlparse(host)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InterpError(
            f"NNsightModel.remote({repo_id!r}): host {host!r} is not an http(s) URL, e.g. https://api.ndif.us."
        )
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise InterpError(
            f"NNsightModel.remote({repo_id!r}): cannot reach the NDIF host {host} ({exc}). Remote execution needs the "
            "network: connect this machine (or set NDIF_HOST / host= to a reachable NDIF server), and keep an NDIF API "
            "key in NDIF_API_KEY; or run a model that fits here with NNsightModel.from_pretrained."
        ) from None
