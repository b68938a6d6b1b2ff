"""Bootstrap confidence intervals for the dark-matter numbers, resampling whole held-out sequences (tokens of a sequence are not independent).

Only the held-out (evaluation) sampling is resampled: the fitted maps and SAEs stay fixed, so an interval says how much
the number would move on other held-out text of the same kind, not how much a refit would move it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import InterpError, ShapeMismatchError

VARIANT_DIFFS = ("sae", "sae_plus_linear", "sae_plus_nonlinear")


def bootstrap_counts(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_clusters]: how often each cluster is drawn in each replicate (n_clusters draws with replacement, seeded)."""
    if n_clusters < 2 or n_boot < 1:
        raise InterpError(
            f"bootstrap_counts(n_clusters={n_clusters}, n_boot={n_boot}): needs at least 2 clusters and 1 replicate."
        )
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_boot, n_clusters))
    return np.stack([np.bincount(row, minlength=n_clusters) for row in draws]).astype(np.float64)


def _cluster_ids(clusters: Tensor | np.ndarray, n: int, argument: str) -> tuple[np.ndarray, int]:
    ids = np.asarray(clusters).reshape(-1)
    if len(ids) != n:
        raise ShapeMismatchError(
            f"{argument}: {len(ids)} cluster ids for {n} rows; give one id (e.g. the held-out sequence) per row."
        )
    _, dense = np.unique(ids, return_inverse=True)
    return dense, int(dense.max()) + 1


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def r2_with_ci(
    y: Float[Tensor, " n"],
    y_hat: Float[Tensor, " n"],
    clusters: Int[Tensor, " n"],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """R^2 = 1 - SSE/SST of y_hat for y (SST around y's own mean, as in r2) and its percentile bootstrap interval over clusters.

    Returns (r2, low, high). Each replicate redraws the clusters with replacement and recomputes R^2 on the rows drawn.
    """
    y, y_hat = np.asarray(y, dtype=np.float64).reshape(-1), np.asarray(y_hat, dtype=np.float64).reshape(-1)
    if y.shape != y_hat.shape:
        raise ShapeMismatchError(f"y_hat has {len(y_hat)} rows but y has {len(y)}; predict every row.")
    ids, n_clusters = _cluster_ids(clusters, len(y), "clusters")
    centred = y - y.mean()  # SST is shift invariant; centring first keeps sum(y^2) - sum(y)^2 / n well conditioned
    sums = np.stack(
        [
            np.bincount(ids, weights=w, minlength=n_clusters)
            for w in (np.ones_like(y), centred, centred**2, (y - y_hat) ** 2)
        ]
    )
    n, s, ss, sse = sums
    full = 1 - sse.sum() / (ss.sum() - s.sum() ** 2 / n.sum())
    counts = bootstrap_counts(n_clusters, n_boot, seed)
    bn, bs, bss, bsse = (counts @ v for v in (n, s, ss, sse))
    return float(full), *_interval(1 - bsse / (bss - bs**2 / bn), level)


def ce_shares_with_ci(losses: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The CE shares of `ce_shares` with percentile bootstrap intervals over sequences (column `seq`).

    ce_share_nonlinear = sum(ce[Sae + LinearError] - ce[clean]) / sum(ce[Sae] - ce[clean]) over the tokens (the ratio of means);
    ce_share_linear likewise with Sae + NonlinearError. Also the interval of the SAE's CE increase, and for each share whether
    its interval includes 0.
    """
    missing = [c for c in ["seq", "ce_clean", *(f"ce_{v}" for v in VARIANT_DIFFS)] if c not in losses]
    if missing:
        raise ShapeMismatchError(f"losses: missing columns {missing}; pass the frame spliced_losses returns.")
    ids, n_clusters = _cluster_ids(losses["seq"].to_numpy(), len(losses), "losses.seq")
    clean = losses["ce_clean"].to_numpy(np.float64)
    per_seq = {
        v: np.bincount(ids, weights=losses[f"ce_{v}"].to_numpy(np.float64) - clean, minlength=n_clusters)
        for v in VARIANT_DIFFS
    }
    tokens = np.bincount(ids, minlength=n_clusters).astype(np.float64)
    counts = bootstrap_counts(n_clusters, n_boot, seed)
    boot = {v: counts @ d for v, d in per_seq.items()}
    out = dict(
        ce_increase_sae=float(per_seq["sae"].sum() / tokens.sum()),
        ce_increase_sae_ci=list(_interval(boot["sae"] / (counts @ tokens), level)),
        downstream_seqs=n_clusters,
        downstream_tokens=int(tokens.sum()),
    )
    for name, variant in (("nonlinear", "sae_plus_linear"), ("linear", "sae_plus_nonlinear")):
        low, high = _interval(boot[variant] / boot["sae"], level)
        out |= {
            f"ce_share_{name}": float(per_seq[variant].sum() / per_seq["sae"].sum()),
            f"ce_share_{name}_ci": [low, high],
            f"ce_share_{name}_ci_includes_zero": bool(low <= 0 <= high),
        }
    return out


def describe_interval(value: float, low: float, high: float, digits: int = 2) -> str:
    """'0.24 [0.11, 0.37]', with ' (CI includes 0)' when it does."""
    text = f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return text + (" (CI includes 0)" if low <= 0 <= high else "")
