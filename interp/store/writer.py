"""build_store: stream a corpus through the model and write sites' activations to a resumable store.

The token stream is deterministic (interp.corpus.token_batches), shards hold whole batches, and
each shard is written to a temporary file and renamed before the manifest lists it. A run killed
at any point therefore resumes by checking the listed shards and continuing with the next batch,
and the finished store is byte-identical to one written without interruption.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
from contextlib import contextmanager
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from interp.corpus import CorpusSource, corpus_provenance, token_batches
from interp.errors import CorruptFileError, InterpError
from interp.hooks import capture_hook, deepest_layer
from interp.sites import Site, as_site
from interp.fileio import atomic_path, file_sha256
from interp.fileio import atomic_write_json as write_json_atomic
from interp.store.reader import FORMAT_VERSION, MANIFEST, ActivationStore, model_fingerprint, shard_name, site_key


def build_store(
    model: HookedTransformer,
    sites: Sequence[Site | str],
    corpus: CorpusSource | Tensor,
    out_dir: str | Path,
    n_tokens: int,
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    shard_tokens: int = 2**16,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    encoding: str = "utf-8",
) -> ActivationStore:
    """Write the activations of `sites` on the first `n_tokens` tokens of `corpus` to `out_dir`.

    corpus: anything interp.corpus.load_corpus reads (None: the default corpus), or token ids
    [n_sequences, seq_len]. Shards hold about `shard_tokens` tokens (whole batches). dtype: storage
    dtype (default the model's). Calling again with the same arguments resumes an interrupted run,
    or repairs missing or corrupt shards; different arguments on an existing store are refused.
    One process writes a store at a time (an fcntl lock on out_dir/.lock); a second gets an error naming the first's pid.
    encoding: of a .txt / .jsonl corpus, decoded strictly.
    """
    sites = [_storable(model, s) for s in sites]
    if not sites:
        raise InterpError("build_store(sites=[]): name at least one Site or hook name to store.")
    if len({site_key(s) for s in sites}) != len(sites):
        raise InterpError(f"build_store(sites=...): a site is listed twice ({[site_key(s) for s in sites]}).")
    for name, value in (
        ("n_tokens", n_tokens),
        ("seq_len", seq_len),
        ("batch_size", batch_size),
        ("shard_tokens", shard_tokens),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InterpError(f"build_store({name}={value!r}): must be a positive integer.")
    if seq_len > model.cfg.n_ctx:
        raise InterpError(
            f"build_store(seq_len={seq_len}): longer than the model's context of {model.cfg.n_ctx} tokens. Use seq_len <= {model.cfg.n_ctx}."
        )
    if isinstance(corpus, Tensor) and (corpus.ndim != 2 or corpus.shape[1] != seq_len):
        raise InterpError(
            f"build_store(corpus=<tensor {tuple(corpus.shape)}>): token ids must have shape [n_sequences, seq_len={seq_len}]."
        )
    if isinstance(corpus, Tensor):
        if corpus.dtype.is_floating_point or corpus.dtype == torch.bool:
            raise InterpError(f"build_store(corpus=<tensor of {corpus.dtype}>): token ids must be integers.")
        _check_token_range(corpus, model.cfg.d_vocab, "build_store(corpus=<tensor>)")
    dtype = dtype or model.cfg.dtype
    out_dir = Path(out_dir).expanduser()
    n_seq_target = math.ceil(n_tokens / seq_len)
    seqs_per_shard = (
        max(1, shard_tokens // seq_len // batch_size) * batch_size
    )  # whole batches: a resumed run sees the same batches
    shapes = _site_shapes(model, sites, seq_len)
    settings = {
        "format": FORMAT_VERSION,
        "model": model_fingerprint(model),
        "sites": [
            {
                "key": site_key(s),
                "hook_name": s.hook_name,
                "layer": s.layer,
                "component": s.component,
                "head": s.head,
                "neuron": s.neuron,
                "shape": list(shapes[s]),
            }
            for s in sites
        ],
        "dtype": str(dtype).removeprefix("torch."),
        "seq_len": seq_len,
        "batch_size": batch_size,
        "seqs_per_shard": seqs_per_shard,
        "n_tokens_target": n_seq_target * seq_len,
        "corpus": {"name": "<token tensor>", "sha256": _tensor_sha256(corpus)}
        if isinstance(corpus, Tensor)
        else corpus_provenance(corpus),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    from interp.distributed import rank_world

    if rank_world()[1] > 1:  # under torchrun: the shards split over the ranks, one manifest (interp.store.sharded)
        from interp.store.sharded import build_store_sharded

        batches = _batches(model, corpus, seq_len, batch_size, encoding)
        return build_store_sharded(model, sites, out_dir, settings, shapes, batches, progress=progress)
    with store_lock(out_dir):
        manifest = _resume_or_start(out_dir, settings)
        if manifest["complete"]:
            return ActivationStore(out_dir, model)
        done_seqs = sum(s["n_seq"] for s in manifest["shards"])
        batches = _batches(model, corpus, seq_len, batch_size, encoding)
        for _ in range(done_seqs // batch_size):  # replay the deterministic stream up to where the last run stopped
            next(batches, None)
        stop = deepest_layer(sites)
        bar = tqdm(
            total=n_seq_target * seq_len,
            initial=done_seqs * seq_len,
            unit="tok",
            unit_scale=True,
            desc=f"store {out_dir.name}",
            disable=not progress,
        )
        buffer = ShardBuffer(sites, shapes, dtype, seq_len, min(seqs_per_shard, n_seq_target - done_seqs))
        for tokens in batches:
            tokens = tokens[: n_seq_target - done_seqs - buffer.n_seq]
            if len(tokens) == 0:
                break
            _check_token_range(tokens, model.cfg.d_vocab, "build_store(corpus=...)")
            buffer.add(tokens, _forward(model, tokens.to(model.cfg.device), sites, stop))
            bar.update(len(tokens) * seq_len)
            if buffer.n_seq == seqs_per_shard or done_seqs + buffer.n_seq == n_seq_target:
                done_seqs += buffer.n_seq
                _write_shard(out_dir, manifest, buffer.take(), buffer.n_seq_taken, seq_len)
            if done_seqs == n_seq_target:
                break
        if buffer.n_seq:
            done_seqs += buffer.n_seq
            _write_shard(out_dir, manifest, buffer.take(), buffer.n_seq_taken, seq_len)
        bar.close()
        if done_seqs < n_seq_target:
            print(
                f"build_store: the corpus ran out after {done_seqs * seq_len} of {n_seq_target * seq_len} tokens; the store holds what there was."
            )
            manifest["corpus_exhausted"] = True
        manifest["complete"] = True
        write_json_atomic(out_dir / MANIFEST, manifest)
        return ActivationStore(out_dir, model)


class ShardBuffer:
    """One shard's tensors, allocated once and filled batch by batch (tokens int32, each site in the store's dtype).

    The writer's memory is then this buffer plus the copy safetensors makes while saving a shard, the same for
    every shard. (A list of batches concatenated at the end held two shards at once and left it to the allocator
    whether the previous shard's freed memory was reused: identical runs peaked at two or at three shards, so no
    plan could predict them; issue 19.)"""

    def __init__(self, sites: Sequence[Site], shapes: dict[Site, tuple[int, ...]], dtype, seq_len: int, n_seq: int):
        rows = n_seq * seq_len
        self.seq_len, self.n_seq, self.n_seq_taken = seq_len, 0, 0
        self.sites = list(sites)
        self.tensors = {"tokens": torch.empty(rows, dtype=torch.int32)}
        self.tensors |= {site_key(s): torch.empty(rows, *shapes[s], dtype=dtype) for s in sites}

    def add(self, tokens: Tensor, acts: dict[Site, Tensor]) -> None:
        """Copy one batch (token ids [batch, seq_len] and each site's activations) after what the buffer holds."""
        start, stop = self.n_seq * self.seq_len, (self.n_seq + len(tokens)) * self.seq_len
        if stop > len(self.tensors["tokens"]):
            raise ValueError(
                f"ShardBuffer.add: {len(tokens)} sequences do not fit (holds {self.n_seq} of {len(self.tensors['tokens']) // self.seq_len})"
            )
        self.tensors["tokens"][start:stop] = tokens.reshape(-1)
        for s in self.sites:
            self.tensors[site_key(s)][start:stop] = acts[s].reshape(stop - start, *self.tensors[site_key(s)].shape[1:])
        self.n_seq += len(tokens)

    def take(self) -> dict[str, Tensor]:
        """The filled rows (views, contiguous: the buffer's leading rows), emptying the buffer for the next shard;
        `n_seq_taken` says how many sequences they hold. Write them before the next `add`."""
        rows = self.n_seq * self.seq_len
        self.n_seq_taken, self.n_seq = self.n_seq, 0
        return {k: v[:rows] for k, v in self.tensors.items()}


def _storable(model: HookedTransformer, where: Site | str) -> Site:
    site = as_site(model, where)
    if site.layout.pos_axis != 1 or site.position is not None:
        raise InterpError(
            f"build_store(sites=...): {site} is not a per-token activation; a store holds one row per token. "
            "Store resid/attn_out/mlp_out/q/k/v/z/result/mlp_* sites without a position."
        )
    return site


def _site_shapes(model: HookedTransformer, sites: list[Site], seq_len: int) -> dict[Site, tuple[int, ...]]:
    probe = torch.zeros((1, seq_len), dtype=torch.long, device=model.cfg.device)
    acts = _forward(model, probe, sites, deepest_layer(sites))
    return {s: tuple(acts[s].shape[2:]) for s in sites}


def _forward(model: HookedTransformer, tokens: Tensor, sites: list[Site], stop: int) -> dict[Site, Tensor]:
    acts: dict[Site, Tensor] = {}
    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            fwd_hooks=[(s.hook_name, capture_hook(acts, s, index=s.index(), clone=False)) for s in sites],
            stop_at_layer=stop,
        )
    return acts


def _batches(model, corpus, seq_len: int, batch_size: int, encoding: str = "utf-8") -> Iterator[Tensor]:
    if isinstance(corpus, Tensor):
        return iter(corpus.split(batch_size))
    return token_batches(model, corpus, seq_len, batch_size, encoding=encoding)


def _tensor_sha256(tokens: Tensor) -> str:
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


LOCK_FILE = ".lock"


@contextmanager
def store_lock(out_dir: Path):
    """Hold an exclusive fcntl lock on out_dir/.lock (with our pid in it) while writing a store."""
    path = Path(out_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            what = (
                "store"
                if (Path(out_dir) / MANIFEST).exists() or not (Path(out_dir) / "checkpoints").exists()
                else "run"
            )
            raise InterpError(
                f"out_dir={str(out_dir)!r}: another process is writing this {what} (pid {holder}). "
                "Wait for it to finish (a rerun then resumes or finds it complete), or choose another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def check_store_dir(out_dir: str | Path) -> None:
    """Before loading a model: refuse an out_dir whose manifest is unreadable or that another process is writing."""
    out_dir = Path(out_dir).expanduser()
    if not out_dir.is_dir():
        return
    _read_manifest(out_dir / MANIFEST) if (out_dir / MANIFEST).exists() else None
    if (out_dir / LOCK_FILE).exists():
        with store_lock(out_dir):
            pass


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CorruptFileError(
            f"{path} is not a readable JSON manifest ({type(exc).__name__}). The store is damaged: delete {path.parent} "
            "to rebuild it, or pass another --out."
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise CorruptFileError(
            f"{path} is not a store manifest (no list of shards). Delete {path.parent} to rebuild it, or pass another --out."
        )
    return manifest


def _check_token_range(tokens: Tensor, d_vocab: int, where: str) -> None:
    if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise InterpError(
            f"{where}: token ids must lie in 0..{d_vocab - 1} (the model's vocabulary), got {int(tokens.min())}..{int(tokens.max())}."
        )


def _read_same_settings(out_dir: Path, settings: dict) -> dict:
    """The manifest in out_dir, refused when its store was built with other settings."""
    manifest = _read_manifest(out_dir / MANIFEST)
    changed = [k for k in settings if manifest.get(k) != settings[k]]
    if changed:
        raise InterpError(
            f"build_store(out_dir={str(out_dir)!r}): that directory holds a store built with different {', '.join(changed)}. "
            "Pass a new out_dir, or delete the old store to rebuild it."
        )
    return manifest


def _resume_or_start(out_dir: Path, settings: dict) -> dict:
    """The manifest to continue from: the existing one (its intact shards) or a fresh one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest = _read_same_settings(out_dir, settings)
        good = _intact_prefix(out_dir, manifest["shards"])
        if len(good) < len(manifest["shards"]):
            print(
                f"build_store: rewriting from {manifest['shards'][len(good)]['file'] if isinstance(manifest['shards'][len(good)], dict) else len(good)} (missing or corrupt) onwards."
            )
            manifest["shards"], manifest["complete"] = good, False
    else:
        manifest = {**settings, "complete": False, "shards": []}
    listed = {s["file"] for s in manifest["shards"]}
    for path in out_dir.glob("shard_*"):
        if path.name not in listed:  # written by a killed run after its last manifest update, or a temporary file
            path.unlink()
    write_json_atomic(manifest_path, manifest)
    return manifest


def _intact_prefix(out_dir: Path, shards: Iterable[dict]) -> list[dict]:
    """The listed shards, in order, up to the first that is missing, corrupt, misnamed or whose entry does not add up."""
    good = []
    for index, shard in enumerate(shards):
        if not isinstance(shard, dict) or shard.get("file") != shard_name(index):
            break
        path = out_dir / shard["file"]
        if not path.exists() or path.stat().st_size != shard.get("bytes") or file_sha256(path) != shard.get("sha256"):
            break
        good.append(shard)
    return good


def _write_shard(out_dir: Path, manifest: dict, tensors: dict[str, Tensor], n_seq: int, seq_len: int) -> None:
    name = shard_name(len(manifest["shards"]))
    with atomic_path(out_dir / name) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    manifest["shards"].append(
        {
            "file": name,
            "n_seq": n_seq,
            "n_tokens": n_seq * seq_len,
            "bytes": (out_dir / name).stat().st_size,
            "sha256": file_sha256(out_dir / name),
        }
    )
    write_json_atomic(out_dir / MANIFEST, manifest)
