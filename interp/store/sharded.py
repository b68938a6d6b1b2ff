"""build_store under torch.distributed (torchrun): the store's shards split over the ranks, one manifest.

Shard i holds the same sequences as in a one-process build (the deterministic token stream cut into shards of whole
batches); the shards still to write are dealt round-robin over the ranks, each rank runs the model on its own and
writes them (all ranks read the token stream, only the model forward is split). After each shard a rank writes its
manifest entry to out_dir/parts/<index>.json; rank 0 holds the folder's lock, and when every rank is done it writes
the manifest listing all shards in order and removes parts/. The finished folder is the one-process store (same
shard files, same manifest), so a store started one way resumes the other.

Resumable: a rank killed at any point (torchrun then stops the others) leaves shards whose entries are in parts/;
a rerun keeps each one whose file is intact (size and sha256), deletes the rest and writes only what is missing.
With several nodes, out_dir must be a folder every node sees (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from interp.distributed import all_gather_objects, on_rank0, rank_world
from interp.fileio import atomic_path, file_sha256
from interp.fileio import atomic_write_json as write_json_atomic
from interp.store.reader import MANIFEST, ActivationStore, shard_name

PARTS = "parts"  # per-shard manifest entries of a distributed build, before the manifest lists them


def build_store_sharded(
    model, sites, out_dir: Path, settings: dict, shapes: dict, batches, *, progress: bool = True
) -> ActivationStore:
    """The distributed twin of build_store's loop; `settings` and `shapes` as build_store made them, `batches` the
    deterministic token stream (every rank reads all of it). Called on every rank of the group."""
    from interp.hooks import deepest_layer
    from interp.store.writer import ShardBuffer, _check_token_range, _forward, store_lock

    rank, world = rank_world()
    seq_len, batch_size = settings["seq_len"], settings["batch_size"]
    seqs_per_shard, n_seq_target = settings["seqs_per_shard"], settings["n_tokens_target"] // settings["seq_len"]
    batches_per_shard = seqs_per_shard // batch_size
    n_shards = math.ceil(n_seq_target / seqs_per_shard)
    dtype = getattr(torch, settings["dtype"])
    with contextlib.ExitStack() as stack:
        on_rank0(lambda: stack.enter_context(store_lock(out_dir)))  # rank 0 holds the folder for the whole build
        state = on_rank0(lambda: _resume(out_dir, settings), share=True)
        manifest, adopted = state
        if manifest["complete"]:
            return ActivationStore(out_dir, model)
        done = set(range(len(manifest["shards"]))) | set(adopted)
        mine = set([i for i in range(n_shards) if i not in done][rank::world])
        stop = deepest_layer(sites)
        bar = tqdm(
            total=len(mine) * seqs_per_shard * seq_len,
            unit="tok",
            unit_scale=True,
            desc=f"store {out_dir.name} (rank 0 of {world})",
            disable=not progress or rank != 0,
        )
        written: dict[int, dict] = {}
        buffer = ShardBuffer(sites, shapes, dtype, seq_len, min(seqs_per_shard, n_seq_target))
        pending_shard = None
        for b, tokens in enumerate(batches if mine else ()):
            shard = b // batches_per_shard
            if shard >= n_shards or shard > max(mine):
                break
            if shard not in mine:
                continue
            tokens = tokens[: n_seq_target - b * batch_size]
            if len(tokens) == 0:
                break
            _check_token_range(tokens, model.cfg.d_vocab, "build_store(corpus=...)")
            buffer.add(tokens, _forward(model, tokens.to(model.cfg.device), sites, stop))
            pending_shard = shard
            bar.update(len(tokens) * seq_len)
            if buffer.n_seq == seqs_per_shard or b * batch_size + len(tokens) == n_seq_target:
                written[shard] = _write_part(out_dir, shard, buffer.take(), buffer.n_seq_taken, seq_len)
        if buffer.n_seq:  # the corpus ran out inside this shard
            written[pending_shard] = _write_part(out_dir, pending_shard, buffer.take(), buffer.n_seq_taken, seq_len)
        bar.close()
        every = {i: e for part in all_gather_objects(written) for i, e in part.items()} | adopted
        on_rank0(lambda: _finish(out_dir, manifest, every, n_seq_target, seq_len))
    return ActivationStore(out_dir, model)


def _write_part(out_dir: Path, index: int, tensors: dict, n_seq: int, seq_len: int) -> dict:
    """Shard `index` written (temporary file, then renamed), then its manifest entry in parts/."""
    name = shard_name(index)
    with atomic_path(out_dir / name) as tmp:
        save_file(tensors, str(tmp))
    entry = {
        "file": name,
        "n_seq": n_seq,
        "n_tokens": n_seq * seq_len,
        "bytes": (out_dir / name).stat().st_size,
        "sha256": file_sha256(out_dir / name),
    }
    write_json_atomic(out_dir / PARTS / f"{index:05d}.json", entry)
    return entry


def _resume(out_dir: Path, settings: dict) -> tuple[dict, dict[int, dict]]:
    """(the manifest: its intact listed prefix, complete or not; {index: entry} of the intact shards parts/ lists).
    Every other shard file, entry and temporary file is deleted."""
    from interp.store.writer import _intact_prefix, _read_same_settings

    manifest_path = out_dir / MANIFEST
    if manifest_path.exists():
        manifest = _read_same_settings(out_dir, settings)
        good = _intact_prefix(out_dir, manifest["shards"])
        if manifest["complete"] and len(good) == len(manifest["shards"]):
            return manifest, {}
        manifest = {**{k: v for k, v in manifest.items() if k not in ("corpus_exhausted",)}, "shards": good}
        manifest["complete"] = False
    else:
        manifest = {**settings, "complete": False, "shards": []}
    adopted: dict[int, dict] = {}
    parts = out_dir / PARTS
    for record in sorted(parts.glob("*.json")) if parts.is_dir() else []:
        try:
            index, entry = int(record.stem), json.loads(record.read_text())
            path = out_dir / entry["file"]
            intact = (
                index >= len(manifest["shards"])
                and entry["file"] == shard_name(index)
                and path.is_file()
                and path.stat().st_size == entry["bytes"]
                and file_sha256(path) == entry["sha256"]
            )
        except (ValueError, KeyError, TypeError, OSError):
            intact = False
        if intact:
            adopted[index] = entry
        else:
            record.unlink()
    keep = {s["file"] for s in manifest["shards"]} | {e["file"] for e in adopted.values()}
    for path in [*out_dir.glob("shard_*"), *out_dir.glob(".shard_*.tmp"), *parts.glob(".*.tmp")]:
        if path.name not in keep and path.is_file():
            path.unlink()
    write_json_atomic(manifest_path, manifest)
    return manifest, adopted


def _finish(out_dir: Path, manifest: dict, entries: dict[int, dict], n_seq_target: int, seq_len: int) -> None:
    """The manifest listing every shard in order (as a one-process build writes it); parts/ removed."""
    start = len(manifest["shards"])
    index = start
    while index in entries:
        manifest["shards"].append(entries[index])
        index += 1
    done_seqs = sum(s["n_seq"] for s in manifest["shards"])
    if done_seqs < n_seq_target:
        print(
            f"build_store: the corpus ran out after {done_seqs * seq_len} of {n_seq_target * seq_len} tokens; "
            "the store holds what there was."
        )
        manifest["corpus_exhausted"] = True
    manifest["complete"] = True
    write_json_atomic(out_dir / MANIFEST, manifest)
    parts = out_dir / PARTS
    if parts.is_dir():
        for path in parts.iterdir():
            path.unlink()
        parts.rmdir()
