"""Metrics on a model's next-token prediction: logit difference, answer probability, accuracy, KL.

Each metric reads the logits at the last position and returns one value per prompt, so a
patching sweep can score many variants of a batch in one call and average per variant.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import ShapeMismatchError

Logits = Float[Tensor, "batch pos d_vocab"] | Float[Tensor, "batch d_vocab"]


def last_position(logits: Logits, *, argument: str = "logits") -> Float[Tensor, "batch d_vocab"]:
    """The logits at the last position ([batch, pos, d_vocab]) or as given ([batch, d_vocab])."""
    if logits.ndim == 3:
        return logits[:, -1]
    if logits.ndim == 2:
        return logits
    raise ShapeMismatchError(
        f"{argument}: expected logits of shape [batch, pos, d_vocab] or [batch, d_vocab], got {tuple(logits.shape)}."
    )


def _check_tokens(
    tokens: Int[Tensor, "batch"], logits: Float[Tensor, "batch d_vocab"], argument: str
) -> Int[Tensor, "batch"]:
    tokens = torch.as_tensor(tokens, device=logits.device)
    if tokens.ndim != 1 or tokens.shape[0] != logits.shape[0]:
        raise ShapeMismatchError(
            f"{argument}: expected one token id per prompt, shape [{logits.shape[0]}], got {tuple(tokens.shape)}."
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ShapeMismatchError(f"{argument}: expected integer token ids, got dtype {tokens.dtype}.")
    d_vocab = logits.shape[-1]
    if len(tokens) and not (0 <= int(tokens.min()) and int(tokens.max()) < d_vocab):
        raise ShapeMismatchError(
            f"{argument}: token ids must lie in 0..{d_vocab - 1} (the vocabulary), got {int(tokens.min())}..{int(tokens.max())}."
        )
    return tokens


def logit_diff(
    logits: Logits, answer_tokens: Int[Tensor, "batch"], wrong_tokens: Int[Tensor, "batch"]
) -> Float[Tensor, "batch"]:
    """logit(answer) - logit(wrong answer) at the last position, per prompt."""
    last = last_position(logits)
    answer = _check_tokens(answer_tokens, last, "answer_tokens")
    wrong = _check_tokens(wrong_tokens, last, "wrong_tokens")
    return last.gather(-1, answer[:, None])[:, 0] - last.gather(-1, wrong[:, None])[:, 0]


def answer_prob(logits: Logits, answer_tokens: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """Probability of the answer token at the last position, per prompt."""
    last = last_position(logits)
    answer = _check_tokens(answer_tokens, last, "answer_tokens")
    return last.float().log_softmax(-1).gather(-1, answer[:, None])[:, 0].exp().to(last.dtype)


def accuracy(logits: Logits, answer_tokens: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """1.0 where the top-1 prediction at the last position is the answer, else 0.0."""
    last = last_position(logits)
    answer = _check_tokens(answer_tokens, last, "answer_tokens")
    return (last.argmax(-1) == answer).to(last.dtype)


def kl_div(logits: Logits, clean_logits: Logits) -> Float[Tensor, "batch"]:
    """KL(clean || logits) of the next-token distributions at the last position, per prompt."""
    last = last_position(logits)
    clean = last_position(clean_logits, argument="clean_logits")
    if clean.shape != last.shape:
        raise ShapeMismatchError(
            f"clean_logits: expected the shape of logits at the last position, {tuple(last.shape)}, got {tuple(clean.shape)}."
        )
    clean_logprobs = clean.float().log_softmax(-1)
    return (clean_logprobs.exp() * (clean_logprobs - last.float().log_softmax(-1))).sum(-1).to(last.dtype)


def restoration(metric: Tensor | float, clean: Tensor | float, corrupted: Tensor | float) -> Tensor:
    """(metric - corrupted) / (clean - corrupted): 0 at the corrupted run, 1 at the clean run.

    NaN where clean equals corrupted, since no effect can then be normalised.
    """
    metric, clean, corrupted = (torch.as_tensor(x, dtype=torch.float64) for x in (metric, clean, corrupted))
    gap = clean - corrupted
    return torch.where(gap == 0, torch.nan, (metric - corrupted) / torch.where(gap == 0, 1.0, gap))
