"""Text corpora: the default offline corpus and user text, streamed as documents or packed token batches.

`load_corpus` yields documents (strings) from the default corpus, a .txt file, a .jsonl file with a
text field, a .parquet file with a text column, a directory of such files, or a local Hugging Face
dataset saved with `save_to_disk`. `token_batches` packs them into fixed-length token sequences.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from interp.errors import InterpError
from interp.fileio import file_sha256
from interp.models import cache_root

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")
CorpusSource = str | Path | Iterable[str] | None


def default_corpus_dir() -> Path:
    return cache_root() / "corpus" / "default"


def fetch_default_corpus(dest: str | Path | None = None, *, force: bool = False) -> Path:
    """Fetch the default corpus into `dest` (default: the toolkit's cache) unless it is already there intact.

    Returns the directory holding documents.jsonl and manifest.json (provenance: packages,
    versions, licences, file list with sha256).
    """
    from interp.corpus.fetch import fetch_routes

    dest = Path(dest).expanduser() if dest is not None else default_corpus_dir()
    if not force and _is_intact(dest):
        return dest
    manifest = fetch_routes(dest)
    tokens = manifest["n_tokens"].get("smollm2", "?")
    print(
        f"interp corpus: {manifest['n_documents']} documents, {tokens} tokens, route {manifest['route']!r} -> {dest}",
        file=sys.stderr,
    )
    return dest


def _is_intact(dest: Path) -> bool:
    manifest_path, documents = dest / "manifest.json", dest / "documents.jsonl"
    if not (manifest_path.exists() and documents.exists()):
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    return manifest.get("documents_sha256") == file_sha256(documents)


def load_corpus(source: CorpusSource = None, *, text_field: str = "text", encoding: str = "utf-8") -> Iterator[str]:
    """Yield the documents of `source`, in a fixed order.

    source: None or "default" (the default corpus, fetched on first use), a path to a .txt file
    (one document), .jsonl (one document per line, in `text_field`), .parquet (column
    `text_field`), a directory of those files (sorted by name) or a Hugging Face dataset saved with
    `save_to_disk`, or an iterable of strings.

    .txt and .jsonl files are decoded strictly in `encoding`: a byte that is not valid there is an
    InterpError naming the file and the byte offset (never a silent replacement character).
    """
    _check_encoding(encoding)
    if source is None or (isinstance(source, str) and source == "default"):
        yield from _read_jsonl(fetch_default_corpus() / "documents.jsonl", "text")
        return
    if not isinstance(source, (str, Path)):
        for i, doc in enumerate(source):
            if not isinstance(doc, str):
                raise InterpError(
                    f"load_corpus(source=...): item {i} is a {type(doc).__name__}, not a string. Pass an iterable of strings or a path."
                )
            yield doc
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise InterpError(
            f"load_corpus(source={str(source)!r}): no such file or directory. Pass None for the default corpus, or a .txt, .jsonl or .parquet file, a directory of them, or a saved Hugging Face dataset."
        )
    if path.is_dir():
        if (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or (path / "state.json").exists()
        ):
            yield from _read_hf_dataset(path, text_field)
            return
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise InterpError(
                f"load_corpus(source={str(path)!r}): the directory holds no {', '.join(TEXT_SUFFIXES)} files and is not a saved Hugging Face dataset."
            )
        for f in files:
            yield from _read_file(f, text_field, encoding)
        return
    yield from _read_file(path, text_field, encoding)


def _check_encoding(encoding: str) -> None:
    import codecs

    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise InterpError(
            f"encoding={encoding!r} is not a text encoding Python knows; use e.g. utf-8, latin-1, cp1252."
        ) from None


def _decode_error(path: Path, offset: int, exc: UnicodeDecodeError, encoding: str) -> InterpError:
    return InterpError(
        f"{path}: byte {offset} is not valid {encoding} ({exc.reason}). Convert the file to {encoding}, "
        "or pass the encoding it is in (--encoding / encoding=, e.g. latin-1)."
    )


def check_corpus(source: CorpusSource, *, text_field: str = "text", encoding: str = "utf-8") -> None:
    """Read a user corpus once, without tokenizing, so a bad file fails before a model is loaded."""
    if source is None or source == "default":
        return
    for _ in load_corpus(source, text_field=text_field, encoding=encoding):
        pass


def _read_file(path: Path, text_field: str, encoding: str = "utf-8") -> Iterator[str]:
    if path.suffix == ".txt":
        data = path.read_bytes()
        try:
            yield data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _decode_error(path, exc.start, exc, encoding) from None
    elif path.suffix == ".jsonl":
        yield from _read_jsonl(path, text_field, encoding)
    elif path.suffix == ".parquet":
        yield from _read_parquet(path, text_field)
    else:
        raise InterpError(
            f"load_corpus(source={str(path)!r}): unsupported file type {path.suffix!r}. Supported: {', '.join(TEXT_SUFFIXES)}, a directory of them, or a saved Hugging Face dataset."
        )


def _read_jsonl(path: Path, text_field: str, encoding: str = "utf-8") -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                raise _decode_error(path, offset + exc.start, exc, encoding) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InterpError(
                    f"{path}:{line_no}: not valid JSON ({exc.msg}). Each line of a .jsonl corpus must be one JSON object."
                ) from exc
            if not isinstance(record, dict) or text_field not in record:
                keys = list(record) if isinstance(record, dict) else type(record).__name__
                raise InterpError(
                    f"{path}:{line_no}: no {text_field!r} field (found {keys}). Pass text_field= naming the field that holds the text."
                )
            if not isinstance(record[text_field], str):
                raise InterpError(
                    f"{path}:{line_no}: the {text_field!r} field is {type(record[text_field]).__name__}, not a string of text."
                )
            yield record[text_field]


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise InterpError(
            f"{path}: no column {text_field!r} (columns: {columns}). Pass text_field= naming the text column."
        )
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):  # row batches keep memory bounded
        yield from (str(t) for t in batch.column(0).to_pylist() if t is not None)


def _read_hf_dataset(path: Path, text_field: str) -> Iterator[str]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as exc:
        raise InterpError(
            f"{path} is a saved Hugging Face dataset but the `datasets` package is not installed. Fix: pip install datasets"
        ) from exc
    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise InterpError(
                f"{path}: a DatasetDict without a 'train' split (splits: {list(dataset)}). Pass the directory of one split."
            )
        dataset = dataset["train"]
    if text_field not in dataset.column_names:
        raise InterpError(
            f"{path}: no column {text_field!r} (columns: {dataset.column_names}). Pass text_field= naming the text column."
        )
    for row in dataset.select_columns([text_field]).iter(batch_size=1024):
        yield from (str(t) for t in row[text_field])


def corpus_provenance(source: CorpusSource) -> dict:
    """Where a corpus came from, for store manifests: the default corpus's sha256, or the file's."""
    if source is None or source == "default":
        manifest = json.loads((fetch_default_corpus() / "manifest.json").read_text())
        return {
            "name": "default",
            "route": manifest["route"],
            "documents_sha256": manifest["documents_sha256"],
            "sources": [{k: s[k] for k in ("package", "version", "registry", "licence")} for s in manifest["sources"]],
        }
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        return {"name": str(path), "sha256": file_sha256(path) if path.is_file() else None}
    return {"name": f"<{type(source).__name__}>"}


def document_separator(tokenizer) -> int:
    """The token placed between packed documents: <|endoftext|> where the vocabulary has it, else EOS, else BOS."""
    vocab = tokenizer.get_vocab()
    # Instruct tokenizers (SmolLM2) set EOS to the chat end-of-turn token; pretraining separated documents with <|endoftext|>.
    if "<|endoftext|>" in vocab:
        return vocab["<|endoftext|>"]
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return token_id
    raise InterpError(
        "token_batches: the tokenizer has no <|endoftext|>, EOS or BOS token; pass separator= (a token id) explicitly."
    )


def token_batches(
    model_or_tokenizer,
    corpus: CorpusSource = None,
    seq_len: int = 128,
    batch_size: int = 32,
    *,
    separator: int | None = None,
    text_field: str = "text",
    encoding: str = "utf-8",
) -> Iterator[Int[Tensor, "batch seq_len"]]:
    """Pack documents into rows of `seq_len` tokens (documents joined by `separator`), `batch_size` rows at a time.

    Deterministic: the same corpus and tokenizer give the same batches. A trailing partial row is
    dropped; the last batch may have fewer rows.
    """
    tokenizer = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if tokenizer is None or not callable(tokenizer):
        raise InterpError(
            "token_batches(model_or_tokenizer=...): the model has no tokenizer. Pass a model loaded with one, or a Hugging Face tokenizer."
        )
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise InterpError(f"token_batches({name}={value!r}): must be a positive integer.")
    sep = document_separator(tokenizer) if separator is None else separator
    buffer: list[int] = []
    rows: list[list[int]] = []
    for docs in _chunks(load_corpus(corpus, text_field=text_field, encoding=encoding), 64):
        for ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"]:
            buffer.extend(ids)
            buffer.append(sep)
            while len(buffer) >= seq_len:
                rows.append(buffer[:seq_len])
                del buffer[:seq_len]
                if len(rows) == batch_size:
                    yield torch.tensor(rows, dtype=torch.long)
                    rows = []
    if rows:
        yield torch.tensor(rows, dtype=torch.long)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def corpus_tokens(
    model_or_tokenizer, n_seqs: int, seq_len: int = 128, *, skip_seqs: int = 0, corpus: CorpusSource = None
) -> Int[Tensor, "n_seqs seq_len"]:
    """Rows skip_seqs .. skip_seqs + n_seqs of the packed token stream (disjoint ranges give held-out sets)."""
    rows = torch.cat(
        list(itertools.islice(token_batches(model_or_tokenizer, corpus, seq_len, 64), (skip_seqs + n_seqs + 63) // 64))
    )
    if len(rows) < skip_seqs + n_seqs:
        raise InterpError(
            f"corpus_tokens(n_seqs={n_seqs}, skip_seqs={skip_seqs}): the corpus holds only {len(rows)} rows of {seq_len} tokens. Ask for fewer, or use a larger corpus."
        )
    return rows[skip_seqs : skip_seqs + n_seqs]
