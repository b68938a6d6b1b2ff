"""Corpora: the default offline corpus (fetched from the package registries, prose extracted) and user corpora.

source: reading a corpus (.txt / .jsonl / .parquet / HF dataset dir / strings) and packing it into token rows;
fetch: building the default corpus from documentation packages; rest_prose: reStructuredText to prose.
"""

from interp.corpus.source import (
    TEXT_SUFFIXES,
    CorpusSource,
    check_corpus,
    corpus_provenance,
    corpus_tokens,
    default_corpus_dir,
    document_separator,
    fetch_default_corpus,
    load_corpus,
    token_batches,
)

__all__ = [
    "TEXT_SUFFIXES",
    "CorpusSource",
    "check_corpus",
    "corpus_provenance",
    "corpus_tokens",
    "default_corpus_dir",
    "document_separator",
    "fetch_default_corpus",
    "load_corpus",
    "token_batches",
]
