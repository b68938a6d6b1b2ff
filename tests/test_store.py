"""The activation store round-trips, resumes after SIGKILL byte-identically, shuffles exactly, and refuses bad stores."""

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.corpus import token_batches
from interp.errors import CorruptFileError, InterpError, UnknownSiteError
from interp.models import load_model
from interp.sites import Site
from interp.store import ActivationStore, build_store, open_store
from tests.conftest import TINY_GQA

TINY_SITES = [Site(1, "resid_post"), Site(0, "z", head=1), Site(2, "mlp_post", neuron=5), Site(1, "k")]
HAND_SLICES = {  # each site's slice of its hook's batch-first tensor, written out (the store itself uses Site.index())
    Site(1, "resid_post"): lambda act: act,
    Site(0, "z", head=1): lambda act: act[:, :, 1],
    Site(2, "mlp_post", neuron=5): lambda act: act[:, :, 5],
    Site(1, "k"): lambda act: act,
    Site(0, "mlp_post"): lambda act: act,
    Site(2, "mlp_out"): lambda act: act,
}
SEQ_LEN, BATCH = 16, 4


@pytest.fixture(scope="module")
def tiny_tokens():
    return torch.randint(0, TINY_GQA["d_vocab"], (40, SEQ_LEN), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_store(tiny_model, tiny_tokens, tmp_path):
    # 40 sequences, 2 batches (8 sequences, 128 tokens) per shard: 5 shards
    return build_store(
        tiny_model,
        TINY_SITES,
        tiny_tokens,
        tmp_path / "store",
        n_tokens=40 * SEQ_LEN,
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        shard_tokens=8 * SEQ_LEN,
        progress=False,
    )


def _reference(model, tokens, sites: list[Site], batch_size: int) -> dict[Site, torch.Tensor]:
    """The sites' activations from TransformerLens's own cache, batch by batch, flattened to tokens."""
    rows = {s: [] for s in sites}
    names = {s.hook_name for s in sites}
    for batch in tokens.split(batch_size):
        _, cache = model.run_with_cache(
            batch, names_filter=lambda n: n in names, stop_at_layer=max(s.layer for s in sites) + 1
        )
        for s in sites:
            act = HAND_SLICES[s](cache[s.hook_name])
            rows[s].append(act.reshape(-1, *act.shape[2:]))
    return {s: torch.cat(r) for s, r in rows.items()}


def test_round_trip_equals_run_with_cache(tiny_model, tiny_tokens, tiny_store):
    assert len(tiny_store.shards) == 5 and tiny_store.n_tokens == 40 * SEQ_LEN
    assert torch.equal(tiny_store.tokens(), tiny_tokens.reshape(-1).to(torch.int32))
    reference = _reference(tiny_model, tiny_tokens, TINY_SITES, BATCH)
    for site in TINY_SITES:
        torch.testing.assert_close(tiny_store.activations(site), reference[site], rtol=1e-6, atol=1e-6)
    assert tiny_store.site_shape(Site(1, "k")) == (2, 16)  # GQA: 2 key/value heads
    assert tiny_store.site_shape("blocks.2.mlp.hook_post:neuron=5") == ()


def test_round_trip_bundled_model_on_default_corpus(model, tmp_path):
    sites = ["blocks.1.hook_resid_post", Site(0, "mlp_post")]
    store = build_store(
        model, sites, None, tmp_path / "s", n_tokens=256, seq_len=32, batch_size=4, shard_tokens=128, progress=False
    )
    tokens = torch.cat(list(itertools.islice(token_batches(model, None, 32, 4), 2)))
    assert torch.equal(store.tokens(), tokens.reshape(-1).to(torch.int32))
    reference = _reference(model, tokens, [Site(1, "resid_post"), Site(0, "mlp_post")], 4)
    for site, expected in reference.items():
        torch.testing.assert_close(store.activations(site), expected, rtol=1e-5, atol=1e-5)
    manifest = store.manifest
    assert manifest["corpus"]["name"] == "default" and manifest["dtype"] == "float32"
    assert [s["shape"] for s in manifest["sites"]] == [[576], [1536]]
    assert [s["n_tokens"] for s in manifest["shards"]] == [128, 128]


KILLED_RUN = """
import os, signal, sys
import interp.store.writer as writer
from interp.models import load_model
from interp.store import build_store

write_manifest = writer.write_json_atomic


def write_or_die(path, manifest):
    # a deterministic kill point: the 4th shard is on disk, SIGKILL before the manifest lists it
    if path.name == "manifest.json" and len(manifest["shards"]) == 4 and not manifest["complete"]:
        os.kill(os.getpid(), signal.SIGKILL)
    write_manifest(path, manifest)


writer.write_json_atomic = write_or_die
build_store(load_model(), ["blocks.0.hook_resid_post"], None, sys.argv[1], n_tokens=2048, seq_len=32, batch_size=4, shard_tokens=128, progress=False)
"""


def test_resume_after_sigkill_gives_identical_shards(model, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(killed)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL
    at_kill = json.loads((killed / "manifest.json").read_text())
    assert not at_kill["complete"] and len(at_kill["shards"]) == 3
    assert (
        killed / "shard_00003.safetensors"
    ).exists()  # written, renamed, never listed: the resumed run must not trust it
    with pytest.raises(InterpError, match="incomplete"):
        open_store(killed)
    assert open_store(killed, allow_incomplete=True).n_tokens == 128 * len(at_kill["shards"])

    args = dict(n_tokens=2048, seq_len=32, batch_size=4, shard_tokens=128, progress=False)
    resumed = build_store(model, ["blocks.0.hook_resid_post"], None, killed, **args)
    uninterrupted = build_store(model, ["blocks.0.hook_resid_post"], None, clean, **args)
    assert resumed.manifest["shards"] == uninterrupted.manifest["shards"]  # same sha256 for every shard
    for shard in uninterrupted.shards:
        assert (killed / shard["file"]).read_bytes() == (clean / shard["file"]).read_bytes()
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in clean.iterdir())  # no leftovers


class CountingStore(ActivationStore):
    """Records how many shards were loaded, to check the reader's memory bound."""

    loads = 0

    def load_shard(self, index, site=None):
        self.loads += 1
        return super().load_shard(index, site)


def test_shuffled_reader_yields_every_token_once(tiny_store):
    site = Site(1, "resid_post")
    everything = tiny_store.activations(site)
    store = CountingStore(tiny_store.path)
    batches = store.iter_batches(site, batch_size=48, seed=3, shards_in_memory=2, with_index=True)
    first, _ = next(batches)
    assert store.loads == 2  # two shards held, not the whole store
    pairs = [(first, _)] + list(batches)
    acts, index = torch.cat([a for a, _ in pairs]), torch.cat([i for _, i in pairs])
    assert torch.equal(index.sort().values, torch.arange(len(everything)))
    assert torch.equal(acts, everything[index])
    assert not torch.equal(index, torch.arange(len(everything)))  # actually shuffled
    again = torch.cat([i for _, i in tiny_store.iter_batches(site, 48, seed=3, with_index=True)])
    other = torch.cat([i for _, i in tiny_store.iter_batches(site, 48, seed=4, with_index=True)])
    assert torch.equal(index, again) and not torch.equal(index, other)
    assert [len(b) for b in tiny_store.iter_batches(site, 48, seed=3, drop_last=True)] == [48] * (640 // 48)
    in_order = torch.cat(list(tiny_store.iter_batches(site, 100, shuffle=False)))
    assert torch.equal(in_order, everything)


def test_readers_split_shards_across_ranks(tiny_store):
    site = Site(0, "z", head=1)
    per_rank = [
        torch.cat([i for _, i in tiny_store.iter_batches(site, 32, seed=1, rank=r, world_size=3, with_index=True)])
        for r in range(3)
    ]
    joined = torch.cat(per_rank)
    assert torch.equal(joined.sort().values, torch.arange(tiny_store.n_tokens))  # disjoint, and together complete
    assert all(len(idx) % 128 == 0 and len(idx) > 0 for idx in per_rank)  # whole shards per rank


def test_corrupt_shard_is_detected_and_repaired(tiny_model, tiny_tokens, tiny_store):
    site = Site(1, "resid_post")
    good = tiny_store.activations(site)
    path = tiny_store.path / "shard_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    store = open_store(tiny_store.path)  # sizes agree: found when the shard is read
    with pytest.raises(
        CorruptFileError,
        match=r"shard_00001.safetensors is corrupt: sha256 .* Fix: delete that file and call build_store",
    ):
        list(store.iter_batches(site, 64, shuffle=False))
    with pytest.raises(CorruptFileError, match="shard_00001"):
        open_store(tiny_store.path).verify()
    repaired = build_store(
        tiny_model,
        TINY_SITES,
        tiny_tokens,
        tiny_store.path,
        n_tokens=40 * SEQ_LEN,
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        shard_tokens=8 * SEQ_LEN,
        progress=False,
    )
    repaired.verify()
    assert torch.equal(repaired.activations(site), good)


def test_missing_shard_is_detected(tiny_store):
    (tiny_store.path / "shard_00002.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"missing shard_00002.safetensors .* rewrites the missing shard"):
        open_store(tiny_store.path)


def test_model_mismatch_is_detected(tiny_model, tiny_tokens, tiny_store):
    open_store(tiny_store.path, model=tiny_model)
    other = load_model(TINY_GQA, seed=1)
    with pytest.raises(InterpError, match=r"not from this model .*fingerprint.*sum of embed.W_E"):
        open_store(tiny_store.path, model=other)
    with pytest.raises(InterpError, match=r"different model"):
        build_store(
            other,
            TINY_SITES,
            tiny_tokens,
            tiny_store.path,
            n_tokens=40 * SEQ_LEN,
            seq_len=SEQ_LEN,
            batch_size=BATCH,
            shard_tokens=8 * SEQ_LEN,
            progress=False,
        )


def test_bad_arguments_are_explained(tiny_model, tiny_tokens, tiny_store, tmp_path):
    def build(**changes):
        args = dict(
            sites=[Site(0, "resid_post")],
            corpus=tiny_tokens,
            out_dir=tmp_path / "x",
            n_tokens=64,
            seq_len=SEQ_LEN,
            progress=False,
        )
        args.update(changes)
        return build_store(tiny_model, **args)

    with pytest.raises(InterpError, match="not a per-token activation"):
        build(sites=[Site(0, "pattern")])
    with pytest.raises(InterpError, match="not a per-token activation"):
        build(sites=[Site(0, "resid_post", position=3)])
    with pytest.raises(UnknownSiteError, match="Did you mean"):
        build(sites=["blocks.0.hook_resid_pots"])
    with pytest.raises(InterpError, match=r"n_tokens=0\): must be a positive integer"):
        build(n_tokens=0)
    with pytest.raises(InterpError, match="longer than the model's context of 32"):
        build(seq_len=64)
    with pytest.raises(InterpError, match=r"token ids must have shape \[n_sequences, seq_len=16\]"):
        build(corpus=tiny_tokens[:, :8])
    with pytest.raises(InterpError, match="different batch_size"):
        build(out_dir=tiny_store.path, sites=TINY_SITES, n_tokens=40 * SEQ_LEN, batch_size=8, shard_tokens=8 * SEQ_LEN)
    with pytest.raises(InterpError, match="not an activation store"):
        open_store(tmp_path)
    with pytest.raises(UnknownSiteError, match="Did you mean: 'blocks.1.hook_resid_post'"):
        next(tiny_store.iter_batches("blocks.1.hook_resid_pre", 8))
    with pytest.raises(InterpError, match=r"rank=3\): must be in 0..2"):
        next(tiny_store.iter_batches(Site(1, "resid_post"), 8, rank=3, world_size=3))


def test_storage_dtype(tiny_model, tiny_tokens, tmp_path):
    site = Site(2, "mlp_out")
    store = build_store(
        tiny_model,
        [site],
        tiny_tokens[:8],
        tmp_path / "half",
        n_tokens=8 * SEQ_LEN,
        seq_len=SEQ_LEN,
        batch_size=BATCH,
        dtype=torch.float16,
        progress=False,
    )
    assert store.manifest["dtype"] == "float16"
    assert torch.equal(store.activations(site), _reference(tiny_model, tiny_tokens[:8], [site], BATCH)[site].half())
