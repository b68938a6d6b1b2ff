"""The extra held-out sequences of the dark-matter grid come from past the store: later documents of the same packed corpus stream."""

from types import SimpleNamespace

import pytest
import torch

from interp.corpus import document_separator, load_corpus
from interp.errors import InterpError
from interp.models import bundled_tokenizer
from sae.darkmatter.data import document_ids, stream_after_store

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
    # the document ids the grid's document-level bootstrap clusters by, against the hand packing
    assert document_ids(torch.tensor(ids), separator).tolist() == doc_of


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


def _grid_split(doc_of_seq):
    """A small Split of random activations: 40 fit and 20 held-out sequences of 10 positions in the store, 10 extra ones past it."""
    from sae.darkmatter.data import ExtraHeld, Rows, Split

    g = torch.Generator().manual_seed(0)
    d, p = 8, 10

    def rows(n_seqs):
        x = torch.randn(n_seqs * p, d, generator=g) * torch.linspace(0.5, 2, d)
        seq = torch.arange(n_seqs).repeat_interleave(p)
        pos = torch.arange(p).repeat(n_seqs)
        return x, seq, pos

    x, _, pos = rows(40)
    fit = Rows(torch.zeros(len(x), dtype=torch.long), pos, x, x, x, x, None)
    hx, hseq, hpos = rows(20)
    held = Rows(torch.zeros(len(hx), dtype=torch.long), hpos, hx, hx, hx, hx, hseq, doc_of_seq(hseq))
    ex, eseq, epos = rows(10)
    extra = ExtraHeld(
        torch.zeros(len(ex), dtype=torch.long), epos, ex, eseq, torch.arange(70, 80), doc_of_seq(eseq + 20)
    )
    return Split(fit, held, torch.zeros(700, dtype=torch.long), torch.arange(20), extra)


@pytest.mark.parametrize("grouping", [1, 5])
def test_the_grid_bootstraps_over_documents_too(tmp_path, grouping):
    """Document clusters equal to the sequences give the sequence bootstrap's interval exactly; coarser documents, as many clusters as
    documents and the same point estimate."""
    from sae.darkmatter.grid import GridCell, norm_r2_grid
    from sae.train import TrainConfig

    training = TrainConfig(steps=20, batch_size=64, lr=3e-3, warmup_steps=2, checkpoint_every=20)
    config = SimpleNamespace(
        layer=6, seed=0, bootstrap=200, grid_fit_tokens=300, grid_positions_dropped=(1, 4), short_training=training
    )
    grid = norm_r2_grid(config, tmp_path, _grid_split(lambda seq: seq // grouping), cells=[GridCell("short", 16, 4)])
    assert (grid.eval_seqs == 30).all() and (grid.eval_docs == 30 // grouping).all()
    if grouping == 1:
        assert (grid.ci_doc_low == grid.ci_low).all() and (grid.ci_doc_high == grid.ci_high).all()
    else:
        assert (grid.ci_doc_low != grid.ci_low).all()
    assert ((grid.ci_doc_low <= grid.norm_r2) & (grid.norm_r2 <= grid.ci_doc_high)).all()
