"""Sparse probing (SAEBench; Gurnee et al. 2023): can k latents tell a label apart as well as the raw activation?

For each binary task, a balanced sample of tokens is split into a train half and a test half. On the train half
the k latents whose mean activation differs most between the classes are chosen and a logistic probe is fitted
on them; accuracy is measured on the test half. The matched baselines run the same procedure on the raw
activation's k most different dimensions, and a probe on the whole raw activation (the ceiling).

Labels come from the tokenizer, so any corpus carries them: does the token start with a space (a word start),
begin with a capital letter, contain a digit, or consist of punctuation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.errors import InterpError
from sae.evals.linear import fit_logistic

TOKEN_TASKS: dict[str, Callable[[str], bool]] = {
    "word_start": lambda s: s[:1] in (" ", "\n", "\t"),
    "capitalised": lambda s: bool(re.match(r"^\s*[A-Z]", s)),
    "has_digit": lambda s: any(c.isdigit() for c in s),
    "punctuation": lambda s: bool(s.strip()) and all(not c.isalnum() for c in s.strip()),
}


def token_labels(strings: Sequence[str], tasks: dict[str, Callable[[str], bool]] = TOKEN_TASKS) -> dict[str, Tensor]:
    """One boolean label per string per task."""
    return {name: torch.tensor([bool(rule(s)) for s in strings]) for name, rule in tasks.items()}


def _top_different(features: Tensor, y: Tensor, k: int) -> Tensor:
    diff = (features[y].double().mean(0) - features[~y].double().mean(0)).abs()
    return diff.topk(min(k, features.shape[1])).indices


def _accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    probe = fit_logistic(train_x, train_y.long(), 2)
    return float((probe.predict(test_x) == test_y.long()).double().mean())


def sparse_probing_from_rows(
    x: Float[Tensor, "n d_in"],
    acts: Float[Tensor, "n d_sae"],
    labels: dict[str, Bool[Tensor, " n"]],
    *,
    ks: Sequence[int] = (1, 2, 5, 20),
    per_class: int = 500,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (task, features, k): test accuracy of a k-sparse probe on SAE latents ("sae") or raw dimensions
    ("raw"), and of the full raw probe (features "raw_full", k = d_in). Tasks with fewer than 20 tokens per class are skipped."""
    if len(x) != len(acts):
        raise InterpError(f"sparse probing: x has {len(x)} rows but acts has {len(acts)}; pass the same tokens' rows.")
    rows = []
    for task, y_all in labels.items():
        pos, neg = y_all.nonzero()[:, 0], (~y_all).nonzero()[:, 0]
        n = min(per_class, len(pos), len(neg))
        if n < 20:
            continue
        gen = torch.Generator().manual_seed(seed)
        pick = torch.cat(
            [pos[torch.randperm(len(pos), generator=gen)[:n]], neg[torch.randperm(len(neg), generator=gen)[:n]]]
        )
        pick = pick[torch.randperm(len(pick), generator=gen)]
        train, test = pick[: len(pick) // 2], pick[len(pick) // 2 :]
        y_train, y_test = y_all[train], y_all[test]
        for name, features in (("sae", acts), ("raw", x)):
            for k in ks:
                chosen = _top_different(features[train], y_train, k)  # chosen on the train half only
                acc = _accuracy(features[train][:, chosen], y_train, features[test][:, chosen], y_test)
                rows.append(
                    dict(task=task, features=name, k=k, accuracy=acc, n_test=len(test), latents=chosen.tolist())
                )
        acc = _accuracy(x[train], y_train, x[test], y_test)
        rows.append(dict(task=task, features="raw_full", k=x.shape[1], accuracy=acc, n_test=len(test), latents=[]))
    return pd.DataFrame(rows, columns=["task", "features", "k", "accuracy", "n_test", "latents"])


def probing_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Mean test accuracy over tasks per (features, k), with a 95% normal-approximation CI on the pooled test items."""
    out: dict[str, float] = {}
    for (features, k), group in table.groupby(["features", "k"]):
        key = "sparse_probing_raw_full" if features == "raw_full" else f"sparse_probing_{features}_k{k}"
        n = int(group.n_test.sum())
        acc = float((group.accuracy * group.n_test).sum() / n)
        out[key] = float(group.accuracy.mean())
        out[key + "_ci95"] = 1.96 * math.sqrt(max(acc * (1 - acc), 1e-12) / n)
    out["sparse_probing_tasks"] = int(table.task.nunique()) if len(table) else 0
    return out


def token_strings(model, ids: Int[Tensor, " n"]) -> list[str]:
    """Each token id decoded on its own (a dictionary over the distinct ids)."""
    distinct = {int(i) for i in ids.unique()}
    text = {i: model.tokenizer.decode([i]) for i in distinct}
    return [text[int(i)] for i in ids]
