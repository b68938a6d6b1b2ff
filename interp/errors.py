"""Errors that speak to the user: what was wrong, with which argument, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpError(ValueError):
    """Base class for every user-facing error of the toolkit."""


class UnknownSiteError(InterpError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class OutOfRangeError(InterpError, IndexError):
    pass


class ShapeMismatchError(InterpError):
    pass


class ModelLoadError(InterpError, FileNotFoundError):
    pass


class CorruptFileError(InterpError):
    pass


class NonFiniteError(InterpError):
    """NaN or Inf where numbers must be finite (SAE inputs, training activations or losses)."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    matches = close_matches(word, candidates)
    return f" Did you mean: {', '.join(repr(m) for m in matches)}?" if matches else ""
