"""The activation store on the tiny model, for the mutants tests/test_store.py let live (issue 22, point 4).

Resume after a run stopped between a shard and its manifest entry (an in-process kill point, no SmolLM2), the
model fingerprint against its definition (every listed config field and probed weight changes it), the
manifest's field checks one at a time, the resume's intact-prefix rule, and the reader's batches against
slicing the whole store by hand.
"""

import json

import pytest
import torch

import interp.store.writer as writer
from interp.errors import InterpError
from interp.sites import Site
from interp.store import build_store, open_store
from tests.conftest import TINY_GQA

SEQ, BATCH = 8, 2
SITES = [Site(0, "resid_post"), Site(1, "z", head=2), Site(1, "mlp_post", neuron=7)]


class Stop(Exception):
    """The kill point: raised where a SIGKILL would land."""


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, TINY_GQA["d_vocab"], (12, SEQ), generator=torch.Generator().manual_seed(5))


def build(model, tokens, out, **changes):
    # 12 sequences, 2 batches of 2 per shard: shards of 4, 4, 4 sequences
    args = dict(n_tokens=12 * SEQ, seq_len=SEQ, batch_size=BATCH, shard_tokens=4 * SEQ, progress=False)
    args.update(changes)
    return build_store(model, SITES, tokens, out, **args)


def test_resume_after_a_stop_between_shard_and_manifest_is_byte_identical(tiny_model, tokens, tmp_path, monkeypatch):
    clean = build(tiny_model, tokens, tmp_path / "clean")
    assert [s["n_seq"] for s in clean.shards] == [4, 4, 4]
    real_write = writer.write_json_atomic

    def write_or_stop(path, manifest):
        # the 2nd shard is renamed into place; stop before the manifest lists it
        if path.name == "manifest.json" and len(manifest["shards"]) == 2 and not manifest["complete"]:
            raise Stop
        real_write(path, manifest)

    monkeypatch.setattr(writer, "write_json_atomic", write_or_stop)
    stopped = tmp_path / "stopped"
    with pytest.raises(Stop):
        build(tiny_model, tokens, stopped)
    monkeypatch.setattr(writer, "write_json_atomic", real_write)
    at_stop = json.loads((stopped / "manifest.json").read_text())
    assert len(at_stop["shards"]) == 1 and not at_stop["complete"]
    assert (stopped / "shard_00001.safetensors").exists()  # on disk, never listed: must not be trusted
    with pytest.raises(InterpError, match=r"incomplete \(32 of 96 tokens\)"):
        open_store(stopped)
    partial = open_store(stopped, allow_incomplete=True)
    assert partial.n_tokens == 32 and torch.equal(partial.tokens(), tokens[:4].reshape(-1).int())
    (stopped / "shard_00002.safetensors").write_bytes(b"left by a killed run")  # an unlisted leftover
    (stopped / "shard_00001.safetensors.tmp").write_bytes(b"x")
    resumed = build(tiny_model, tokens, stopped)
    assert resumed.manifest == clean.manifest
    for shard in clean.shards:
        assert (stopped / shard["file"]).read_bytes() == (tmp_path / "clean" / shard["file"]).read_bytes()
    assert sorted(p.name for p in stopped.iterdir()) == sorted(p.name for p in (tmp_path / "clean").iterdir())
    # a second call on a complete store opens it without rewriting a shard
    before = {p.name: p.stat().st_mtime_ns for p in stopped.glob("shard_*")}
    again = build(tiny_model, tokens, stopped)
    assert again.manifest == clean.manifest
    assert before == {p.name: p.stat().st_mtime_ns for p in stopped.glob("shard_*")}
