"""Prompt pairs for circuit discovery beyond the built-in capitals: in-context copying.

`copy_pairs`: a sequence of random words, then the same sequence again, cut before its last word; the
model continues by copying (induction). The corrupted prompt changes the last word's FIRST occurrence, so
copying predicts the new word there: answer = the original last word, wrong = its replacement, and the
logit difference measures copying from context. Words are single tokens of the model's tokenizer (a
leading space and 3+ lowercase letters); a pair is kept only if both prompts tokenize back to the same
number of tokens, one per word.
"""

from __future__ import annotations

import numpy as np

from interp.errors import InterpError


def word_tokens(tokenizer, min_letters: int = 3) -> list[str]:
    """Vocabulary entries that decode to a space and lowercase letters only (sorted, for a stable draw)."""
    words = set()
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if text.startswith(" ") and len(text) > min_letters and text[1:].isalpha() and text[1:].islower():
            if tokenizer.encode(text, add_special_tokens=False) == [i]:
                words.add(text)
    return sorted(words)


def copy_pairs(tokenizer, n: int = 16, length: int = 8, seed: int = 0) -> tuple[dict, ...]:
    """`n` in-context-copy pairs of `length` random words each (fields clean, corrupted, answer, wrong)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InterpError(f"n={n!r}: the number of copy pairs must be a whole number >= 1.")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise InterpError(f"length={length!r}: a copied sequence needs at least 2 words.")
    if tokenizer is None:
        raise InterpError("tokenizer: the model has no tokenizer; copy pairs are built from its vocabulary.")
    words = word_tokens(tokenizer)
    if len(words) < 2 * length:
        raise InterpError(f"tokenizer: only {len(words)} single-token words; need at least {2 * length}.")
    rng = np.random.default_rng(seed)
    pairs: list[dict] = []
    for _ in range(50 * n):
        if len(pairs) == n:
            break
        picked = [words[i] for i in rng.choice(len(words), size=length + 1, replace=False)]
        seq, other = picked[:length], picked[length]
        corrupted_seq = seq[:-1] + [other]
        clean = "".join(seq + seq[:-1])  # every word with its leading space: both occurrences are the same token
        corrupted = "".join(corrupted_seq + seq[:-1])
        n_clean = len(tokenizer.encode(clean, add_special_tokens=False))
        n_corrupted = len(tokenizer.encode(corrupted, add_special_tokens=False))
        if n_clean == n_corrupted == 2 * length - 1:
            pairs.append({"clean": clean, "corrupted": corrupted, "answer": seq[-1], "wrong": other})
    if len(pairs) < n:
        raise InterpError(f"copy_pairs: found only {len(pairs)} of {n} pairs that tokenize one token per word.")
    return tuple(pairs)
