"""Activation store: per-token activations of chosen sites, in checksummed safetensors shards.

Layout of a store directory:
    manifest.json            model fingerprint, sites, dtype, seq_len, corpus provenance, and the
                             shard list (file, sequences, tokens, sha256)
    shard_00000.safetensors  "tokens" [n_tokens] int32 and one [n_tokens, *site_shape] tensor per site

`build_store` (interp.store.writer) writes one; `open_store` / `ActivationStore` read it. Shards
are checked against their sha256 the first time they are read; `verify()` checks all of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from torch import Tensor

from interp.fileio import file_sha256
from interp.errors import CorruptFileError, InterpError, UnknownSiteError, did_you_mean
from interp.sites import Site

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def site_key(site: Site) -> str:
    """The tensor name of a site in a shard: its hook name, plus the head or neuron it selects."""
    extras = "".join(f":{k}={v}" for k, v in (("head", site.head), ("neuron", site.neuron)) if v is not None)
    return site.hook_name + extras


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def model_fingerprint(model) -> dict:
    """Identity of a model for a store: its architecture and the sums of a few weight matrices."""
    cfg = model.cfg
    fields = (
        "model_name",
        "n_layers",
        "d_model",
        "n_heads",
        "d_head",
        "d_mlp",
        "d_vocab",
        "n_key_value_heads",
        "act_fn",
        "normalization_type",
        "positional_embedding_type",
        "dtype",
    )
    config = {k: str(getattr(cfg, k, None)) for k in fields}
    named = dict(model.named_parameters())
    last = cfg.n_layers - 1
    probes = ["embed.W_E", "blocks.0.attn.W_Q", f"blocks.{last}.attn.W_O", f"blocks.{last}.mlp.W_out", "unembed.W_U"]
    # Float64 sums of ~4096 evenly strided entries, to 8 digits: cheap, equal for the same weights, changed by any training step.
    weight_sums = {
        k: f"{named[k].detach().flatten()[:: max(1, named[k].numel() // 4096)].double().sum().item():.8g}"
        for k in probes
        if k in named
    }
    digest = hashlib.sha256(json.dumps([config, weight_sums], sort_keys=True).encode()).hexdigest()[:16]
    return {"name": cfg.model_name, "digest": digest, "config": config, "weight_sums": weight_sums}


class ActivationStore:
    """A built store, read shard by shard. Pass `model` to check that the store was built from it."""

    def __init__(self, path: str | Path, model=None, *, allow_incomplete: bool = False):
        self.path = Path(path).expanduser()
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise InterpError(
                f"ActivationStore(path={str(self.path)!r}): no {MANIFEST} there, so it is not an activation store. Build one with interp.store.build_store(...)."
            )
        try:
            self.manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise CorruptFileError(
                f"{manifest_path} is not valid JSON ({type(exc).__name__}). The store is damaged: rebuild it with build_store(...) into a new directory."
            ) from None
        if not isinstance(self.manifest, dict):
            raise CorruptFileError(
                f"{manifest_path} holds a JSON {type(self.manifest).__name__}, not a store manifest. Rebuild the store."
            )
        if self.manifest.get("format") != FORMAT_VERSION:
            raise CorruptFileError(
                f"{manifest_path}: store format {self.manifest.get('format')!r}, this toolkit reads format {FORMAT_VERSION}. Rebuild the store."
            )
        self._check_manifest_fields(manifest_path)
        if not self.manifest["complete"] and not allow_incomplete:
            raise InterpError(
                f"The store at {self.path} is incomplete ({self.n_tokens} of {self.manifest['n_tokens_target']} tokens). "
                "Resume it by calling build_store(...) again with the same arguments, or pass allow_incomplete=True to read what is there."
            )
        self._cross_check()
        if model is not None:
            self.check_model(model)
        self._verified: set[str] = set()

    def _check_manifest_fields(self, manifest_path: Path) -> None:
        """Types of the fields the reader uses, so a hand-edited manifest fails here with a message, not later with a KeyError."""
        m = self.manifest

        def bad(what: str) -> CorruptFileError:
            return CorruptFileError(
                f"{manifest_path}: {what}. The manifest is damaged or edited: rebuild the store with build_store(...)."
            )

        expected = {
            "complete": bool,
            "shards": list,
            "sites": list,
            "seq_len": int,
            "n_tokens_target": int,
            "model": dict,
        }
        for key, kind in expected.items():
            if not isinstance(m.get(key), kind) or (kind is int and isinstance(m.get(key), bool)):
                raise bad(
                    f"field {key!r} is {type(m.get(key)).__name__ if key in m else 'missing'}, expected {kind.__name__}"
                )
        for i, site in enumerate(m["sites"]):
            if not (
                isinstance(site, dict) and isinstance(site.get("key"), str) and isinstance(site.get("shape"), list)
            ):
                raise bad(f"sites[{i}] is not an object with a key and a shape")
        for i, shard in enumerate(m["shards"]):
            if not isinstance(shard, dict):
                raise bad(f"shards[{i}] is not an object")
            for key in ("n_seq", "n_tokens", "bytes"):
                if not isinstance(shard.get(key), int) or isinstance(shard.get(key), bool) or shard[key] < 0:
                    raise bad(f"shards[{i}].{key} is {shard.get(key)!r}, expected a non-negative integer")
            if not isinstance(shard.get("sha256"), str):
                raise bad(f"shards[{i}].sha256 is missing")
            if shard.get("file") != shard_name(i):
                raise bad(
                    f"shards[{i}] is {shard.get('file')!r} where {shard_name(i)!r} belongs (an entry was deleted or reordered)"
                )
            if shard["n_tokens"] != shard["n_seq"] * m["seq_len"]:
                raise bad(
                    f"shards[{i}] has n_tokens={shard['n_tokens']} but n_seq={shard['n_seq']} sequences of seq_len={m['seq_len']}"
                )

    def _cross_check(self) -> None:
        """The manifest against the files: every listed shard there with its size and its tensors' token count; none unlisted."""
        listed = {s["file"] for s in self.shards}
        for shard in self.shards:
            file = self.path / shard["file"]
            if not file.exists():
                raise CorruptFileError(
                    f"Store {self.path} is missing {shard['file']} (listed in {MANIFEST}). "
                    "Fix: call build_store(...) again with the same arguments; it rewrites the missing shard and those after it."
                )
            if file.stat().st_size != shard["bytes"]:
                raise CorruptFileError(
                    self._checksum_message(shard, f"its size is {file.stat().st_size} bytes, expected {shard['bytes']}")
                )
            try:
                with safe_open(str(file), framework="pt") as f:
                    lengths = {k: f.get_slice(k).get_shape() for k in f.keys()}
            except Exception as exc:
                raise CorruptFileError(self._checksum_message(shard, f"its header cannot be read ({exc})")) from None
            for key in ["tokens", *self.sites]:
                shape = lengths.get(key)
                want = [shard["n_tokens"]] + ([] if key == "tokens" else list(self.site_shape(key)))
                if shape is None or list(shape) != want:
                    raise CorruptFileError(
                        self._checksum_message(shard, f"tensor {key!r} has shape {shape}, the manifest says {want}")
                    )
        if self.manifest["complete"]:
            unlisted = sorted(p.name for p in self.path.glob("shard_*.safetensors") if p.name not in listed)
            if unlisted:
                raise CorruptFileError(
                    f"Store {self.path}: {MANIFEST} does not list {unlisted[:3]}; the manifest lost entries. Rebuild the store "
                    "(delete the directory and call build_store(...) again)."
                )
            if self.n_tokens != self.manifest["n_tokens_target"] and not self.manifest.get("corpus_exhausted"):
                raise CorruptFileError(
                    f"Store {self.path}: its shards hold {self.n_tokens} tokens but it was built for {self.manifest['n_tokens_target']} "
                    "and the corpus did not run out; the manifest lost entries. Rebuild the store."
                )

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def n_tokens(self) -> int:
        return sum(s["n_tokens"] for s in self.shards)

    @property
    def sites(self) -> list[str]:
        return [s["key"] for s in self.manifest["sites"]]

    def site_shape(self, site: Site | str) -> tuple[int, ...]:
        key = self._key(site)
        return tuple(next(s["shape"] for s in self.manifest["sites"] if s["key"] == key))

    def check_model(self, model) -> None:
        expected, got = self.manifest["model"], model_fingerprint(model)
        if expected["digest"] != got["digest"]:
            diffs = [
                f"{k}: store {expected['config'][k]!r}, model {v!r}"
                for k, v in got["config"].items()
                if expected["config"].get(k) != v
            ]
            diffs += [
                f"sum of {k}: store {expected['weight_sums'].get(k)}, model {v}"
                for k, v in got["weight_sums"].items()
                if expected["weight_sums"].get(k) != v
            ]
            raise InterpError(
                f"The store at {self.path} was built from model {expected['name']!r} (fingerprint {expected['digest']}), not from this model "
                f"{got['name']!r} (fingerprint {got['digest']}): {'; '.join(diffs[:4])}. Open it with the model it was built from, or build a new store."
            )

    def _key(self, site: Site | str) -> str:
        key = site_key(site) if isinstance(site, Site) else site
        if key not in self.sites:
            raise UnknownSiteError(
                f"The store at {self.path} has no site {key!r}.{did_you_mean(key, self.sites)} Stored sites: {', '.join(self.sites)}."
            )
        return key

    def _checksum_message(self, shard: dict, what: str) -> str:
        return (
            f"Store shard {self.path / shard['file']} is corrupt: {what}. "
            "Fix: delete that file and call build_store(...) again with the same arguments; it rewrites that shard and those after it."
        )

    def _verify_shard(self, shard: dict) -> None:
        if shard["file"] in self._verified:
            return
        digest = file_sha256(self.path / shard["file"])
        if digest != shard["sha256"]:
            raise CorruptFileError(
                self._checksum_message(
                    shard, f"sha256 {digest[:12]}... does not match the manifest's {shard['sha256'][:12]}..."
                )
            )
        self._verified.add(shard["file"])

    def verify(self) -> None:
        """Check every shard against its checksum (reading the whole store once)."""
        for shard in self.shards:
            self._verify_shard(shard)

    def load_shard(self, index: int, site: Site | str | None = None) -> dict[str, Tensor]:
        """Tensors of shard `index` ("tokens" and every site, or only `site`, which may be "tokens"), checksum verified."""
        shard = self.shards[index]
        self._verify_shard(shard)
        keys = ["tokens", *self.sites] if site is None else ["tokens" if site == "tokens" else self._key(site)]
        with safe_open(str(self.path / shard["file"]), framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def activations(self, site: Site | str) -> Float[Tensor, "n_tokens *site_shape"]:
        """All of a site's activations in stream order (the whole store in memory: for small stores)."""
        return torch.cat([self.load_shard(i, site)[self._key(site)] for i in range(len(self.shards))])

    def tokens(self) -> Int[Tensor, " n_tokens"]:
        return torch.cat([self.load_shard(i, "tokens")["tokens"] for i in range(len(self.shards))])

    def iter_batches(
        self,
        site: Site | str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shards_in_memory: int = 2,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        with_index: bool = False,
    ) -> Iterator[
        Float[Tensor, "batch *site_shape"] | tuple[Float[Tensor, "batch *site_shape"], Int[Tensor, " batch"]]
    ]:
        """Batches of one site's activations, each stored token once per pass.

        Shuffling permutes the shard order, then holds `shards_in_memory` shards at a time and
        permutes their tokens together, so memory stays at that many shards plus one batch. Use
        seed=epoch for a new order each epoch. rank/world_size give each data-parallel reader a
        disjoint set of shards. with_index=True also yields each row's position in the token stream.
        """
        key = self._key(site)
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("shards_in_memory", shards_in_memory, 1),
            ("world_size", world_size, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise InterpError(f"iter_batches({name}={value!r}): must be an integer >= {low}.")
        if not 0 <= rank < world_size:
            raise InterpError(f"iter_batches(rank={rank}): must be in 0..{world_size - 1} for world_size={world_size}.")
        generator = torch.Generator().manual_seed(seed)
        order = (
            torch.randperm(len(self.shards), generator=generator).tolist() if shuffle else list(range(len(self.shards)))
        )
        mine = order[rank::world_size]
        starts = [0]
        for shard in self.shards:
            starts.append(starts[-1] + shard["n_tokens"])
        rest_acts: Tensor | None = None
        rest_index: Tensor | None = None
        for w in range(0, len(mine), shards_in_memory):
            window = mine[w : w + shards_in_memory]
            acts = [self.load_shard(i, key)[key] for i in window]
            index = [torch.arange(starts[i], starts[i + 1]) for i in window]
            if rest_acts is not None:
                acts.insert(0, rest_acts)
                index.insert(0, rest_index)
            acts_cat, index_cat = torch.cat(acts), torch.cat(index)
            del acts
            if shuffle:
                perm = torch.randperm(len(acts_cat), generator=generator)
                acts_cat, index_cat = acts_cat[perm], index_cat[perm]
            n_full = len(acts_cat) // batch_size * batch_size
            for start in range(0, n_full, batch_size):
                batch = acts_cat[start : start + batch_size]
                yield (batch, index_cat[start : start + batch_size]) if with_index else batch
            rest_acts, rest_index = acts_cat[n_full:], index_cat[n_full:]
        if rest_acts is not None and len(rest_acts) and not drop_last:
            yield (rest_acts, rest_index) if with_index else rest_acts

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, {self.n_tokens} tokens, {len(self.shards)} shards, sites={self.sites})"


def open_store(path: str | Path, model=None, *, allow_incomplete: bool = False) -> ActivationStore:
    """Open a built store; with `model`, check that the store was built from that model."""
    return ActivationStore(path, model, allow_incomplete=allow_incomplete)
