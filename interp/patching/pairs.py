"""Prompt pairs for patching: the built-in capital-city pairs, and reading a user's .jsonl / .csv file.

A pair is an object with fields clean, corrupted, answer, wrong (answer / wrong: a string, or a token id).
Every problem is an InterpError that names the file, the line and the fix.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from interp.errors import InterpError

PAIR_FIELDS = ("clean", "corrupted", "answer", "wrong")

CAPITALS = {
    "France": "Paris",
    "Spain": "Madrid",
    "Italy": "Rome",
    "Germany": "Berlin",
    "Japan": "Tokyo",
    "Russia": "Moscow",
    "Greece": "Athens",
    "England": "London",
    "China": "Beijing",
    "Canada": "Ottawa",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Kenya": "Nairobi",
}  # each prompt is 5 tokens and SmolLM2-135M answers each correctly (checked in tests/test_pairs.py)


def builtin_pairs(n: int = 16) -> tuple[dict, ...]:
    """Clean 'The capital of X is' vs corrupted with the next country; answer X's capital, wrong the other's."""
    countries = list(CAPITALS)[:n]
    return tuple(
        {
            "clean": f"The capital of {c} is",
            "corrupted": f"The capital of {o} is",
            "answer": f" {CAPITALS[c]}",
            "wrong": f" {CAPITALS[o]}",
        }
        for c, o in zip(countries, countries[1:] + countries[:1])
    )


def check_pair(row, where: str) -> dict:
    """A pair is an object with non-empty string prompts clean/corrupted and answer/wrong strings (or token ids)."""
    if not isinstance(row, dict):
        raise InterpError(
            f"{where}: is a JSON {type(row).__name__}, not an object with fields {', '.join(PAIR_FIELDS)}."
        )
    missing = [k for k in PAIR_FIELDS if k not in row]
    if missing:
        raise InterpError(f"{where}: lacks {missing}; every row needs {', '.join(PAIR_FIELDS)}.")
    for key in PAIR_FIELDS:
        value = row[key]
        token_id = key in ("answer", "wrong") and isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not token_id and not isinstance(value, str):
            shown = "null" if value is None else type(value).__name__
            kind = "a string (or a token id)" if key in ("answer", "wrong") else "a string"
            raise InterpError(f"{where}: {key!r} is {shown}; it must be {kind}.")
        if isinstance(value, str) and value == "":
            raise InterpError(
                f"{where}: {key!r} is empty; give the text (an answer usually starts with a space, e.g. ' Paris')."
            )
    return row


def read_pairs(path: Path) -> tuple[dict, ...]:
    """Prompt pairs from .jsonl or .csv (UTF-8) with fields clean, corrupted, answer, wrong.

    Every problem is an InterpError naming the file, the line and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise InterpError(
            f"pairs: {path} does not exist; give a .jsonl or .csv file with fields clean, corrupted, answer, wrong."
        )
    if path.is_dir():
        raise InterpError(
            f"pairs: {path} is a folder; give a .jsonl or .csv file with fields clean, corrupted, answer, wrong."
        )
    if path.suffix not in (".jsonl", ".csv"):
        raise InterpError(f"pairs: {path.name} is neither .jsonl nor .csv.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InterpError(
            f"pairs: {path}:{line}: byte {exc.start} is not UTF-8 ({exc.reason}); save the file as UTF-8."
        ) from None
    text = text.removeprefix("\ufeff")
    rows: list = []
    if path.suffix == ".jsonl":
        for line_no, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InterpError(
                    f"pairs: {path}:{line_no}: not valid JSON ({exc.msg}, column {exc.colno}); each line must be one JSON object."
                ) from None
            except RecursionError:
                raise InterpError(
                    f"pairs: {path}:{line_no}: JSON nested too deeply; each line must be one flat JSON object."
                ) from None
            rows.append(check_pair(row, f"{path}:{line_no}"))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        try:
            header = reader.fieldnames
            if not header:
                raise InterpError(
                    f"pairs: {path} is empty; the first line must be the header clean,corrupted,answer,wrong."
                )
            missing = [k for k in PAIR_FIELDS if k not in header]
            if missing:
                raise InterpError(
                    f"pairs: {path}:1: the header {header} lacks {missing}; the first line must name clean,corrupted,answer,wrong."
                )
            for row in reader:
                extra = row.pop(None, None)
                if extra:
                    raise InterpError(
                        f"pairs: {path}:{reader.line_num}: {len(extra)} more fields than the header names; quote fields that hold commas."
                    )
                if all(v in (None, "") for v in row.values()):
                    continue
                rows.append(check_pair(row, f"{path}:{reader.line_num}"))
        except csv.Error as exc:
            raise InterpError(
                f"pairs: {path}:{reader.line_num}: not valid CSV ({exc}); check the quotes on that line."
            ) from None
    if not rows:
        raise InterpError(f"pairs: {path} holds no pairs; give at least one row with clean, corrupted, answer, wrong.")
    return tuple(rows)
