"""The activation store on the tiny model, for the mutants tests/test_store.py let live (issue 22, point 4).

Resume after a run stopped between a shard and its manifest entry (an in-process kill point, no SmolLM2), the
model fingerprint against its definition (every listed config field and probed weight changes it), the
manifest's field checks one at a time, the resume's intact-prefix rule, and the reader's batches against
slicing the whole store by hand.
"""

import hashlib
import json

import numpy as np
import pytest
import torch

import interp.store.writer as writer
from interp.errors import CorruptFileError, InterpError, UnknownSiteError
from interp.models import load_model
from interp.sites import Site
from interp.store import ActivationStore, build_store, check_store_dir, model_fingerprint, open_store, site_key
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


def build_until_stop(model, tokens, out, monkeypatch) -> None:
    """Build into `out`, stopped where a kill would land: the 2nd shard renamed into place, the manifest not yet listing it."""
    real_write = writer.write_json_atomic

    def write_or_stop(path, manifest):
        if path.name == "manifest.json" and len(manifest["shards"]) == 2 and not manifest["complete"]:
            raise Stop
        real_write(path, manifest)

    monkeypatch.setattr(writer, "write_json_atomic", write_or_stop)
    with pytest.raises(Stop):
        build(model, tokens, out)
    monkeypatch.setattr(writer, "write_json_atomic", real_write)


def test_resume_after_a_stop_between_shard_and_manifest_is_byte_identical(tiny_model, tokens, tmp_path, monkeypatch):
    clean = build(tiny_model, tokens, tmp_path / "clean")
    assert [s["n_seq"] for s in clean.shards] == [4, 4, 4]
    stopped = tmp_path / "stopped"
    build_until_stop(tiny_model, tokens, stopped, monkeypatch)
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


@pytest.fixture
def store(tiny_model, tokens, tmp_path):
    return build(tiny_model, tokens, tmp_path / "store")


def test_a_rebuild_after_a_lost_or_reordered_shard_equals_a_clean_build(tiny_model, tokens, tmp_path, store):
    clean = build(tiny_model, tokens, tmp_path / "clean")
    # a shard file deleted: rewritten from there on
    (store.path / "shard_00001.safetensors").unlink()
    assert build(tiny_model, tokens, store.path).manifest == clean.manifest
    # two manifest entries swapped (each still names an intact file): nothing after the first misplaced entry is trusted
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["shards"][0], manifest["shards"][1] = manifest["shards"][1], manifest["shards"][0]
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    rebuilt = build(tiny_model, tokens, store.path)
    assert rebuilt.manifest == clean.manifest and torch.equal(rebuilt.tokens(), tokens.reshape(-1).int())
    # an entry that is not an object
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["shards"][2], manifest["complete"] = "shard_00002.safetensors", False
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    assert build(tiny_model, tokens, store.path).manifest == clean.manifest


def test_unreadable_manifests_are_refused_before_a_model_is_loaded(tmp_path):
    check_store_dir(tmp_path / "not-there")  # nothing there yet: fine, and nothing made
    assert not (tmp_path / "not-there").exists()
    folder = tmp_path / "s"
    folder.mkdir()
    check_store_dir(folder)  # an empty folder: fine
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(
        CorruptFileError,
        match=r"manifest.json is not a readable JSON manifest \(JSONDecodeError\)\. The store is damaged: delete "
        r".* to rebuild it, or pass another --out\.$",
    ):
        check_store_dir(folder)
    for payload in ('{"shards": 3}', "[1, 2]"):
        (folder / "manifest.json").write_text(payload)
        with pytest.raises(CorruptFileError, match=r"is not a store manifest \(no list of shards\)\. Delete "):
            check_store_dir(folder)
    (folder / "manifest.json").write_text('{"shards": []}')
    check_store_dir(folder)


def test_checksum_message_and_each_shard_hashed_once(store, monkeypatch):
    import interp.store.reader as reader

    hashed = []
    real = reader.file_sha256
    monkeypatch.setattr(reader, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    opened = open_store(store.path)
    for _ in range(3):
        opened.load_shard(1)
        opened.activations(SITES[0])
    assert sorted(hashed) == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]
    path = store.path / "shard_00002.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    want = store.shards[2]["sha256"][:12]
    with pytest.raises(
        CorruptFileError, match=rf"sha256 [0-9a-f]{{12}}\.\.\. does not match the manifest's {want}\.\.\."
    ):
        open_store(store.path).verify()
    got = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(CorruptFileError, match=rf"sha256 {got[:12]}\.\.\. does not"):
        open_store(store.path).load_shard(2)


class RecordingStore(ActivationStore):
    """Records which tensors each shard read returns."""

    def load_shard(self, index, site=None):
        out = super().load_shard(index, site)
        self.reads.append(sorted(out))
        return out


def test_each_read_loads_only_the_tensors_asked_for(store):
    key = site_key(SITES[1])
    assert sorted(store.load_shard(0)) == sorted(["tokens", *map(site_key, SITES)])
    assert list(store.load_shard(0, SITES[1])) == [key] and list(store.load_shard(0, "tokens")) == ["tokens"]
    assert torch.equal(store.load_shard(0)["tokens"], tokens_of(store, 0))
    recording = RecordingStore(store.path)
    recording.reads = []
    recording.activations(SITES[1])
    recording.tokens()
    list(recording.iter_batches(SITES[1], 5))
    assert recording.reads == [[key]] * 3 + [["tokens"]] * 3 + [[key]] * 3


def tokens_of(store, index):
    from safetensors import safe_open

    with safe_open(str(store.path / store.shards[index]["file"]), framework="pt") as f:
        return f.get_tensor("tokens")


def test_batch_arguments_are_named_and_shard_order_follows_the_seed(store):
    site = SITES[0]
    for name, value, low in (("batch_size", 0, 1), ("shards_in_memory", 0, 1), ("world_size", 0, 1)):
        args = {**dict(batch_size=4, shards_in_memory=2, world_size=1), name: value}
        with pytest.raises(InterpError, match=rf"^iter_batches\({name}=0\): must be an integer >= {low}\.$"):
            next(store.iter_batches(site, **args))
    with pytest.raises(InterpError, match=r"^iter_batches\(batch_size=2\.0\): must be an integer >= 1\.$"):
        next(store.iter_batches(site, 2.0))
    # the smallest legal values work: one row a batch, one shard in memory
    rows = list(store.iter_batches(site, 1, shards_in_memory=1, shuffle=False))
    assert len(rows) == 96 and torch.equal(torch.cat(rows), store.activations(site))
    # one shard in memory and a batch of a shard: each batch is one shard, in an order that depends on the seed
    first_index = {}
    for seed in range(6):
        batches = list(store.iter_batches(site, 32, seed=seed, shards_in_memory=1, with_index=True))
        first_index[seed] = [int(index.min()) // 32 for _, index in batches]
        assert all(int(i.max()) // 32 == int(i.min()) // 32 for _, i in batches)  # whole shards
    assert any(order != [0, 1, 2] for order in first_index.values())
    default = torch.cat([i for _, i in store.iter_batches(site, 7, with_index=True)])
    seeded = torch.cat([i for _, i in store.iter_batches(site, 7, seed=0, with_index=True)])
    assert torch.equal(default, seeded)
    assert repr(store) == (
        f"ActivationStore({str(store.path)!r}, 96 tokens, 3 shards, sites={[site_key(s) for s in SITES]})"
    )


# the model record a manifest keeps: the format existing stores on disk are checked against
FINGERPRINT_FIELDS = [
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
]


def test_the_model_record_follows_its_format(tmp_path):
    # d_vocab 128 x d_model 64: the embedding and unembedding have 8192 entries, so every 2nd is summed
    model = load_model(dict(TINY_GQA, d_vocab=128), seed=0)
    record = model_fingerprint(model)
    cfg = model.cfg
    config = {k: str(getattr(cfg, k)) for k in FINGERPRINT_FIELDS}
    assert record["config"] == config and record["name"] == cfg.model_name
    last = cfg.n_layers - 1
    weights = {
        "embed.W_E": model.embed.W_E,
        "blocks.0.attn.W_Q": model.blocks[0].attn.W_Q,
        f"blocks.{last}.attn.W_O": model.blocks[last].attn.W_O,
        f"blocks.{last}.mlp.W_out": model.blocks[last].mlp.W_out,
        "unembed.W_U": model.unembed.W_U,
    }
    sums = {}
    for name, w in weights.items():
        flat = w.detach().numpy().astype(np.float64).ravel()
        sums[name] = f"{flat[:: max(1, flat.size // 4096)].sum():.8g}"
    assert (weights["embed.W_E"].numel() // 4096, weights["blocks.0.attn.W_Q"].numel() // 4096) == (2, 1)
    assert record["weight_sums"] == sums
    digest = hashlib.sha256(json.dumps([config, sums], sort_keys=True).encode()).hexdigest()[:16]
    assert record["digest"] == digest
    # an entry between the strided ones does not count; one on the stride, in the last layer's W_O, does
    with torch.no_grad():
        model.embed.W_E.view(-1)[1] += 1.0
    assert model_fingerprint(model)["digest"] == digest
    with torch.no_grad():
        model.blocks[last].attn.W_O.view(-1)[0] += 1.0
    assert model_fingerprint(model)["digest"] != digest


def edit_shard(index, **changes):
    def edit(m):
        m["shards"][index].update(changes)

    return edit


def drop_key(key, index=None):
    def edit(m):
        (m if index is None else m["shards"][index]).pop(key)

    return edit


def put(key, value):
    def edit(m):
        m[key] = value

    return edit


MANIFEST_EDITS = {
    "missing field": (drop_key("seq_len"), "field 'seq_len' is missing, expected int"),
    "wrong type": (put("n_tokens_target", "96"), "field 'n_tokens_target' is str, expected int"),
    "bool for int": (put("seq_len", True), "field 'seq_len' is bool, expected int"),
    "complete not bool": (put("complete", 1), "field 'complete' is int, expected bool"),
    "site not an object": (
        put("sites", ["blocks.0.hook_resid_post"]),
        "sites[0] is not an object with a key and a shape",
    ),
    "shard not an object": (
        lambda m: m["shards"].__setitem__(1, "shard_00001.safetensors"),
        "shards[1] is not an object",
    ),
    "negative count": (edit_shard(1, n_seq=-1), "shards[1].n_seq is -1, expected a non-negative integer"),
    "bool count": (edit_shard(2, bytes=True), "shards[2].bytes is True, expected a non-negative integer"),
    "no checksum": (drop_key("sha256", 1), "shards[1].sha256 is missing"),
    "misnamed": (
        edit_shard(1, file="shard_00002.safetensors"),
        "shards[1] is 'shard_00002.safetensors' where 'shard_00001.safetensors' belongs (an entry was deleted or reordered)",
    ),
    "tokens do not add up": (
        edit_shard(1, n_tokens=33),
        "shards[1] has n_tokens=33 but n_seq=4 sequences of seq_len=8",
    ),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_each_manifest_field_check_says_which_field(store, case):
    edit, what = MANIFEST_EDITS[case]
    path = store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    message = f"{path}: {what}. The manifest is damaged or edited: rebuild the store with build_store(...)."
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(store.path)
    assert str(error.value) == message


def test_zero_counts_pass_the_field_check_and_fail_against_the_file(store):
    path = store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0].update(n_seq=0, n_tokens=0)
    path.write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match=r"tensor 'tokens' has shape \[32\], the manifest says \[0\]"):
        ActivationStore(store.path)


def test_the_size_and_missing_file_messages(store):
    shard = store.path / "shard_00001.safetensors"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(store.path)
    assert str(error.value) == (
        f"Store shard {shard} is corrupt: its size is {size + 1} bytes, expected {size}. "
        "Fix: delete that file and call build_store(...) again with the same arguments; it rewrites that shard and those after it."
    )
    shard.unlink()
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(store.path)
    assert str(error.value) == (
        f"Store {store.path} is missing shard_00001.safetensors (listed in manifest.json). "
        "Fix: call build_store(...) again with the same arguments; it rewrites the missing shard and those after it."
    )


def test_unreadable_header_and_unlisted_shards_are_named(store):
    for i in range(10, 14):  # four shard files the manifest does not list
        (store.path / f"shard_{i:05d}.safetensors").write_bytes(b"stray")
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(store.path)
    names = [f"shard_{i:05d}.safetensors" for i in range(10, 13)]
    assert str(error.value) == (
        f"Store {store.path}: manifest.json does not list {names}; the manifest lost entries. Rebuild the store "
        "(delete the directory and call build_store(...) again)."
    )
    for i in range(10, 14):
        (store.path / f"shard_{i:05d}.safetensors").unlink()
    shard = store.path / "shard_00000.safetensors"
    shard.write_bytes(b"\xff" * shard.stat().st_size)  # same size, no safetensors header
    with pytest.raises(CorruptFileError, match=r"shard_00000.safetensors is corrupt: its header cannot be read \("):
        ActivationStore(store.path)


def test_a_store_the_corpus_ran_short_of_opens_and_a_lost_entry_does_not(tiny_model, tokens, tmp_path, capsys):
    short = build(tiny_model, tokens, tmp_path / "short", n_tokens=20 * SEQ)  # the corpus has 12 sequences
    assert "the corpus ran out after 96 of 160 tokens" in capsys.readouterr().out
    assert short.manifest["corpus_exhausted"] is True and short.manifest["complete"] is True
    assert open_store(short.path).n_tokens == 96 and short.manifest["n_tokens_target"] == 160
    store = build(tiny_model, tokens, tmp_path / "full")
    path = store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"].pop()
    path.write_text(json.dumps(manifest))
    (store.path / "shard_00002.safetensors").unlink()
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(store.path)
    assert str(error.value) == (
        f"Store {store.path}: its shards hold 64 tokens but it was built for 96 "
        "and the corpus did not run out; the manifest lost entries. Rebuild the store."
    )


def test_the_model_mismatch_lists_the_first_four_differences(tiny_model, store):
    other = load_model(dict(TINY_GQA, d_mlp=96), seed=1)
    built, got = store.manifest["model"], model_fingerprint(other)
    diffs = ["d_mlp: store '128', model '96'"] + [
        f"sum of {k}: store {built['weight_sums'][k]}, model {got['weight_sums'][k]}" for k in got["weight_sums"]
    ]
    assert len(diffs) == 6
    with pytest.raises(InterpError) as error:
        open_store(store.path, model=other)
    assert str(error.value) == (
        f"The store at {store.path} was built from model {built['name']!r} (fingerprint {built['digest']}), not from "
        f"this model {got['name']!r} (fingerprint {got['digest']}): {'; '.join(diffs[:4])}. Open it with the model it "
        "was built from, or build a new store."
    )


def test_a_text_corpus_streams_through_token_batches_with_its_encoding(tmp_path):
    from transformers import AutoTokenizer

    from interp.corpus import token_batches
    from tests.tiny_families import VOCAB, write_tokenizer

    write_tokenizer(tmp_path / "tok")
    model = load_model(dict(TINY_GQA, d_vocab=VOCAB), seed=0)
    model.set_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "tok"), default_padding_side="right")
    corpus = tmp_path / "corpus.txt"
    lines = [f"Caf\u00e9 num\u00e9ro {i}: the capital of France is Paris, {i * 7} km away." for i in range(40)]
    corpus.write_bytes("\n".join(lines).encode("latin-1"))
    want = torch.cat(list(token_batches(model, corpus, SEQ, 3, encoding="latin-1")))
    store = build_store(
        model,
        SITES[:1],
        corpus,
        tmp_path / "s",
        n_tokens=10 * SEQ,
        seq_len=SEQ,
        batch_size=3,
        encoding="latin-1",
        progress=False,
    )
    assert torch.equal(store.tokens(), want[:10].reshape(-1).int())
    from_tensor = build_store(
        model, SITES[:1], want[:10], tmp_path / "t", n_tokens=10 * SEQ, seq_len=SEQ, batch_size=3, progress=False
    )
    assert torch.equal(store.activations(SITES[0]), from_tensor.activations(SITES[0]))
    assert store.manifest["corpus"] == {"name": str(corpus), "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest()}
    with pytest.raises(InterpError, match=r"is not valid utf-8 "):  # decoded strictly: latin-1 bytes are not UTF-8
        build_store(model, SITES[:1], corpus, tmp_path / "u", n_tokens=10 * SEQ, seq_len=SEQ, progress=False)


def test_token_tensors_are_identified_by_their_values_not_their_dtype(tiny_model, tokens, tmp_path):
    store = build(tiny_model, tokens, tmp_path / "s")
    assert store.manifest["corpus"] == {
        "name": "<token tensor>",
        "sha256": hashlib.sha256(tokens.long().numpy().tobytes()).hexdigest(),
    }
    assert build(tiny_model, tokens.int(), tmp_path / "s").manifest == store.manifest  # the same corpus: opens
    with pytest.raises(InterpError) as error:
        build(tiny_model, tokens, tmp_path / "s", batch_size=4, shard_tokens=8 * SEQ)
    assert str(error.value) == (
        f"build_store(out_dir={str(tmp_path / 's')!r}): that directory holds a store built with different batch_size, "
        "seqs_per_shard. Pass a new out_dir, or delete the old store to rebuild it."
    )


def test_a_rebuild_says_where_it_rewrites_from(tiny_model, tokens, store, capsys):
    capsys.readouterr()
    (store.path / "shard_00001.safetensors").unlink()
    build(tiny_model, tokens, store.path)
    assert (
        "build_store: rewriting from shard_00001.safetensors (missing or corrupt) onwards." in capsys.readouterr().out
    )
    manifest = json.loads((store.path / "manifest.json").read_text())
    manifest["shards"][2] = "shard_00002.safetensors"
    (store.path / "manifest.json").write_text(json.dumps(manifest))
    build(tiny_model, tokens, store.path)
    assert "build_store: rewriting from 2 (missing or corrupt) onwards." in capsys.readouterr().out


def test_unknown_sites_list_the_stored_ones_and_config_only_mismatches_list_no_sums(tiny_model, store, monkeypatch):
    with pytest.raises(UnknownSiteError) as error:
        store.activations("blocks.0.hook_mlp_out")
    assert str(error.value).strip("\"'").endswith(f"Stored sites: {', '.join(site_key(s) for s in SITES)}.")
    monkeypatch.setattr(tiny_model.cfg, "model_name", "renamed")
    with pytest.raises(InterpError, match=r": model_name: store '[^']*', model 'renamed'\. Open it with the model"):
        open_store(store.path, model=tiny_model)


def test_the_manifest_format(tiny_model, tokens, store):
    m = json.loads((store.path / "manifest.json").read_text())
    sites = [
        {
            "key": site_key(s),
            "hook_name": s.hook_name,
            "layer": s.layer,
            "component": s.component,
            "head": s.head,
            "neuron": s.neuron,
            "shape": list(store.site_shape(s)),
        }
        for s in SITES
    ]
    assert [site["shape"] for site in sites] == [[64], [16], []]
    assert {k: v for k, v in m.items() if k not in ("model", "shards")} == {
        "format": 1,
        "sites": sites,
        "dtype": "float32",
        "seq_len": SEQ,
        "batch_size": BATCH,
        "seqs_per_shard": 4,
        "n_tokens_target": 96,
        "corpus": {"name": "<token tensor>", "sha256": hashlib.sha256(tokens.long().numpy().tobytes()).hexdigest()},
        "complete": True,
    }
    assert all(type(m[k]) is int for k in ("seq_len", "batch_size", "seqs_per_shard", "n_tokens_target"))
    assert m["model"] == model_fingerprint(tiny_model)
    # shards hold whole batches: 5 sequences of shard_tokens are 2 batches of 2
    odd = build(tiny_model, tokens, store.path.parent / "odd", shard_tokens=5 * SEQ)
    assert [s["n_seq"] for s in odd.shards] == [4, 4, 4] and type(odd.manifest["seqs_per_shard"]) is int


def test_build_arguments_are_checked_and_named(tiny_model, tokens, tmp_path, capsys):
    def call(**changes):
        args = dict(sites=SITES[:1], corpus=tokens, out_dir=tmp_path / "x", n_tokens=SEQ, seq_len=SEQ, progress=False)
        args.update(changes)
        return build_store(tiny_model, **args)

    def message(**changes):
        with pytest.raises(InterpError) as error:
            call(**changes)
        return str(error.value)

    assert message(sites=[]) == "build_store(sites=[]): name at least one Site or hook name to store."
    assert message(sites=[Site(0, "pattern")]).endswith(
        "a store holds one row per token. Store resid/attn_out/mlp_out/q/k/v/z/result/mlp_* sites without a position."
    )
    twice = [SITES[0], "blocks.0.hook_resid_post"]
    assert message(sites=twice) == (
        "build_store(sites=...): a site is listed twice (['blocks.0.hook_resid_post', 'blocks.0.hook_resid_post'])."
    )
    for name, value in (("n_tokens", 0), ("seq_len", 0), ("batch_size", True), ("shard_tokens", 2.0)):
        assert message(**{name: value}) == f"build_store({name}={value!r}): must be a positive integer."
    assert message(corpus=tokens.float()) == (
        "build_store(corpus=<tensor of torch.float32>): token ids must be integers."
    )
    assert message(corpus=tokens > 3).startswith("build_store(corpus=<tensor of torch.bool>)")
    bad = tokens.clone()
    bad[0, 0] = 101
    assert message(corpus=bad).startswith("build_store(corpus=<tensor>): token ids must lie in 0..100")
    # the smallest legal values, and a sequence as long as the context, are fine
    store = call(out_dir=tmp_path / "one", n_tokens=1, batch_size=1, shard_tokens=1)
    assert store.n_tokens == SEQ and [s["n_seq"] for s in store.shards] == [1]
    long = torch.randint(0, TINY_GQA["d_vocab"], (1, 32), generator=torch.Generator().manual_seed(0))
    assert call(out_dir=tmp_path / "ctx", corpus=long, n_tokens=32, seq_len=32).n_tokens == 32
    # the documented defaults: seq_len 128 (longer than this model's context), batches of 16, a progress bar
    with pytest.raises(InterpError, match=r"^build_store\(seq_len=128\): longer than the model's context of 32"):
        build_store(tiny_model, SITES[:1], tokens, tmp_path / "d", n_tokens=SEQ)
    capsys.readouterr()
    many = torch.randint(0, TINY_GQA["d_vocab"], (40, SEQ), generator=torch.Generator().manual_seed(1))
    default = build_store(tiny_model, SITES[:1], many, tmp_path / "b", n_tokens=40 * SEQ, seq_len=SEQ)
    assert default.manifest["batch_size"] == 16 and [s["n_seq"] for s in default.shards] == [40]
    assert "store b" in capsys.readouterr().err


def test_partial_shards_at_the_target_and_at_the_end_of_the_corpus(tiny_model, tokens, tmp_path):
    # the target mid-batch: 5 sequences in batches of 2 (the last batch cut to 1), shards of 4
    cut = build(tiny_model, tokens, tmp_path / "cut", n_tokens=5 * SEQ)
    assert [s["n_seq"] for s in cut.shards] == [4, 1] and torch.equal(cut.tokens(), tokens[:5].reshape(-1).int())
    # the corpus ends mid-shard: 10 sequences for a target of 20
    short = build(tiny_model, tokens[:10], tmp_path / "short", n_tokens=20 * SEQ)
    assert [s["n_seq"] for s in short.shards] == [4, 4, 2] and short.manifest["corpus_exhausted"] is True
    assert torch.equal(short.tokens(), tokens[:10].reshape(-1).int()) and short.tokens().dtype == torch.int32
    full = build(tiny_model, tokens, tmp_path / "full")
    assert torch.equal(short.activations(SITES[2]), full.activations(SITES[2])[: 10 * SEQ])


def test_the_progress_bar_counts_tokens_and_is_silent_when_off(tiny_model, tokens, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    build(tiny_model, tokens, tmp_path / "quiet")
    assert capsys.readouterr().err == ""
    build(tiny_model, tokens, tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    assert "store loud" in err and "96.0/96.0" in err and "tok/s" in err
    # resumed after the first shard: the bar starts at 32 tokens and ends at 96
    build_until_stop(tiny_model, tokens, tmp_path / "resumed", monkeypatch)
    capsys.readouterr()
    build(tiny_model, tokens, tmp_path / "resumed", progress=True)
    err = capsys.readouterr().err
    assert "32.0/96.0" in err and "96.0/96.0" in err


def test_text_tokens_outside_the_models_vocabulary_are_refused(tmp_path):
    from transformers import AutoTokenizer

    from tests.tiny_families import write_tokenizer

    write_tokenizer(tmp_path / "tok")
    model = load_model(TINY_GQA, seed=0)  # 101 token ids, the tokenizer has 320
    model.set_tokenizer(AutoTokenizer.from_pretrained(tmp_path / "tok"), default_padding_side="right")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"The capital of France is Paris, {i} times." for i in range(30)))
    with pytest.raises(InterpError, match=r"^build_store\(corpus=\.\.\.\): token ids must lie in 0\.\.100 "):
        build_store(model, SITES[:1], corpus, tmp_path / "s", n_tokens=4 * SEQ, seq_len=SEQ, progress=False)


def test_the_readers_own_refusals_word_for_word(store, tmp_path):
    """ActivationStore's checks before the field checks: no manifest, not JSON, not an object, another format,
    incomplete; each message exactly (the path, what was found, the fix)."""
    from interp.store import FORMAT_VERSION, MANIFEST

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InterpError) as error:
        ActivationStore(empty)
    assert str(error.value) == (
        f"ActivationStore(path={str(empty)!r}): no {MANIFEST} there, so it is not an activation store. Build one with "
        "interp.store.build_store(...)."
    )
    manifest = empty / MANIFEST
    for payload, found in (
        (b"{not json", "not valid JSON (JSONDecodeError)"),
        (b"\xff\xfe", "not valid JSON (UnicodeDecodeError)"),
    ):
        manifest.write_bytes(payload)
        with pytest.raises(CorruptFileError) as error:
            ActivationStore(empty)
        assert str(error.value) == (
            f"{manifest} is {found}. The store is damaged: rebuild it with build_store(...) into a new directory."
        )
    manifest.write_text("[1, 2]")
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(empty)
    assert str(error.value) == f"{manifest} holds a JSON list, not a store manifest. Rebuild the store."
    edited = dict(store.manifest, format=FORMAT_VERSION + 98)
    manifest.write_text(json.dumps(edited))
    with pytest.raises(CorruptFileError) as error:
        ActivationStore(empty)
    assert str(error.value) == (
        f"{manifest}: store format {FORMAT_VERSION + 98!r}, this toolkit reads format {FORMAT_VERSION}. Rebuild the store."
    )
    incomplete = store.path / MANIFEST
    incomplete.write_text(json.dumps(dict(store.manifest, complete=False, n_tokens_target=store.n_tokens + SEQ)))
    with pytest.raises(InterpError) as error:
        ActivationStore(store.path)
    assert str(error.value) == (
        f"The store at {store.path} is incomplete ({store.n_tokens} of {store.n_tokens + SEQ} tokens). Resume it by "
        "calling build_store(...) again with the same arguments, or pass allow_incomplete=True to read what is there."
    )


def test_site_keys_and_a_config_without_a_field():
    assert site_key(Site(1, "z", head=2)) == "blocks.1.attn.hook_z:head=2"
    assert site_key(Site(1, "mlp_post", neuron=7)) == "blocks.1.mlp.hook_post:neuron=7"
    assert site_key(Site(0, "resid_post")) == "blocks.0.hook_resid_post"
    model = load_model(TINY_GQA, seed=0)
    del model.cfg.__dict__["n_key_value_heads"]  # a config without the field: recorded as None, not an error
    assert model_fingerprint(model)["config"]["n_key_value_heads"] == "None"


def test_a_store_built_into_a_new_nested_folder_and_refused_to_another_model(tiny_model, tokens, tmp_path):
    nested = tmp_path / "a" / "b" / "store"
    built = build(tiny_model, tokens, nested)
    assert built.n_tokens == 12 * SEQ and built.shards and sum(s["n_seq"] for s in built.shards) == 12
    other = load_model(dict(TINY_GQA, d_mlp=96), seed=1)
    with pytest.raises(
        InterpError, match=r"that directory holds a store built with different model\. Pass a new out_dir"
    ):
        build(other, tokens, nested)
