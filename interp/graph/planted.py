"""A planted circuit: a tiny model, built by hand, whose metric depends on a known set of edges.

A random 3-layer GQA model (the test suite's tiny shape) in which every node's output is scaled by
`leak` except the planted ones: MLP 0 and head 1.2 (query head 2, which reads key/value head 1). The
task changes one token in the middle of the prompt and reads the last position. The change travels
along embed -> m0 -> (k and v of a1.kv1) -> a1.h2 -> logits, so the planted edges are

    embed -> m0, embed -> a1.kv1.k, embed -> a1.kv1.v, m0 -> a1.kv1.k, m0 -> a1.kv1.v, a1.h2 -> logits

(q edges carry nothing: the query reads the last position, where neither run differs before block 1's
attention; embed -> logits and m0 -> logits read only the last position too). With leak=0 every
other edge has no effect at all, by construction; with leak > 0 the other nodes carry a weak signal,
so an estimate must rank the planted edges above a floor of small real effects.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

from interp.errors import InterpError
from interp.patching.task import PatchingTask

PLANTED_SHAPE = dict(
    n_layers=3,
    d_model=64,
    d_head=16,
    n_heads=4,
    n_key_value_heads=2,
    d_mlp=128,
    d_vocab=101,
    n_ctx=32,
    act_fn="silu",
    normalization_type="RMS",
    positional_embedding_type="rotary",
    rotary_dim=16,
    gated_mlp=True,
)
PLANTED_EDGES = (
    ("embed", "m0"), ("embed", "a1.kv1.k"), ("embed", "a1.kv1.v"),
    ("m0", "a1.kv1.k"), ("m0", "a1.kv1.v"), ("a1.h2", "logits"),
)  # fmt: skip
PLANTED_HEAD = (1, 2)


def planted_model(leak: float = 0.0, seed: int = 0):
    """The tiny model with only MLP 0 and head 1.2 at full strength (other heads' W_O and MLPs' W_out times `leak`)."""
    from interp.models import load_model

    if not (isinstance(leak, (int, float)) and 0.0 <= leak < 1.0):
        raise InterpError(f"leak={leak!r}: the scale of the unplanted nodes' outputs must lie in [0, 1).")
    model = load_model(PLANTED_SHAPE, seed=seed)
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            for h in range(model.cfg.n_heads):
                if (layer, h) != PLANTED_HEAD:
                    block.attn.W_O[h] *= leak
            if layer != 0:
                block.mlp.W_out *= leak
            block.attn.b_O.zero_()
        # the planted head reads the changed token through its value: make that path strong
        model.blocks[1].attn.W_O[PLANTED_HEAD[1]] *= 4.0
    return model


def planted_task(model, n_prompts: int = 8, seq_len: int = 10, position: int = 4, seed: int = 0) -> PatchingTask:
    """Random prompts whose token at `position` is swapped in the corrupted run; logit difference of two fixed tokens."""
    if not 0 < position < seq_len - 1:
        raise InterpError(
            f"position={position}: the changed token must lie strictly inside the prompt (1..{seq_len - 2}), before the last position the metric reads."
        )
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.cfg.d_vocab, (n_prompts, seq_len), generator=g)
    corrupted = clean.clone()
    corrupted[:, position] = (
        clean[:, position] + torch.randint(1, model.cfg.d_vocab - 1, (n_prompts,), generator=g)
    ) % model.cfg.d_vocab
    answer, wrong = torch.randint(1, model.cfg.d_vocab, (2,), generator=g).tolist()
    if answer == wrong:
        wrong = (wrong + 1) % model.cfg.d_vocab
    return PatchingTask(model, clean, corrupted, answers=[answer] * n_prompts, wrong_answers=[wrong] * n_prompts)


def roc_auc(scores, labels) -> float:
    """ROC AUC of `scores` separating labels True from False (ties count half), by the rank-sum formula."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise InterpError(f"labels: ROC AUC needs both classes; got {n_pos} positive and {n_neg} negative.")
    if not np.isfinite(scores).all():
        raise InterpError("scores: ROC AUC needs finite scores.")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def planted_labels(frame) -> np.ndarray:
    """True for the rows of an edge table that are planted edges."""
    planted = set(PLANTED_EDGES)
    return np.array([(u, v) in planted for u, v in zip(frame["upstream"], frame["downstream"])])
