"""The extra held-out sequences of the dark-matter grid come from past the store: later documents of the same packed corpus stream."""

from types import SimpleNamespace

import pytest
import torch

from interp.corpus import document_separator, load_corpus
from interp.errors import InterpError
from interp.models import bundled_tokenizer
from sae.darkmatter.data import stream_after_store

L, N_STORE, COUNT = 32, 40, 10


def _packed_stream(tokenizer, separator):
    """The default corpus packed by hand, one document at a time: every token's id and the index of the document it belongs to
    (the separator counts with the document it ends), up to a few sequences past the first separator after the store."""
    ids, doc_of = [], []
    for index, text in enumerate(load_corpus(None)):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] + [separator]
        ids += piece
        doc_of += [index] * len(piece)
        tail = ids[N_STORE * L :]
        if separator in tail and len(tail) - tail.index(separator) > (COUNT + 2) * L:
            return ids, doc_of
    raise AssertionError("the default corpus is shorter than this test needs")


def test_extra_sequences_are_later_documents_of_the_same_stream():
    tokenizer = bundled_tokenizer()
    separator = document_separator(tokenizer)
    ids, doc_of = _packed_stream(tokenizer, separator)
    model = SimpleNamespace(tokenizer=tokenizer, cfg=SimpleNamespace(d_vocab=len(tokenizer)))
    config = SimpleNamespace(seq_len=L)
    store = torch.tensor(ids[: N_STORE * L]).reshape(N_STORE, L)

    after, stream_seqs = stream_after_store(model, config, store, COUNT)

    start = int(stream_seqs[0])
    assert stream_seqs.tolist() == list(range(start, start + COUNT)) and start > N_STORE
    assert torch.equal(after.reshape(-1), torch.tensor(ids[start * L : (start + COUNT) * L]))
    # disjoint by document: no token of an extra sequence belongs to a document the store has a token of
    assert min(doc_of[start * L : (start + COUNT) * L]) > max(doc_of[: N_STORE * L])
    # and nothing more is skipped than the sequences up to the one where the store's last document ends
    assert separator in ids[(start - 1) * L : start * L] and separator not in ids[N_STORE * L : (start - 1) * L]


def test_a_store_that_is_not_the_stream_is_refused():
    tokenizer = bundled_tokenizer()
    ids, _ = _packed_stream(tokenizer, document_separator(tokenizer))
    model = SimpleNamespace(tokenizer=tokenizer, cfg=SimpleNamespace(d_vocab=len(tokenizer)))
    shifted = torch.tensor(ids[1 : N_STORE * L + 1]).reshape(N_STORE, L)  # off by one token: another corpus or packing
    with pytest.raises(InterpError, match="differs from the store's last"):
        stream_after_store(model, SimpleNamespace(seq_len=L), shifted, COUNT)


def test_without_a_tokenizer_the_seeded_draw_continues():
    vocab, n_store = 101, 12
    model = SimpleNamespace(tokenizer=None, cfg=SimpleNamespace(d_vocab=vocab))
    generator = torch.Generator().manual_seed(0)
    store = torch.randint(0, vocab, (n_store, L), generator=generator)
    expected = torch.randint(0, vocab, (5, L), generator=generator)
    after, stream_seqs = stream_after_store(model, SimpleNamespace(seq_len=L), store, 5)
    assert torch.equal(after, expected) and stream_seqs.tolist() == list(range(n_store, n_store + 5))
    with pytest.raises(InterpError, match="seeded random corpus"):
        stream_after_store(model, SimpleNamespace(seq_len=L), store.flip(0), 5)
