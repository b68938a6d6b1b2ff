"""The correlational screen: which layers, heads and MLP neurons behave differently on recall and reasoning prompts.

Statistics at the last prompt token, per item: the residual-stream norm per layer (resid_post), the
attention entropy and maximum weight per head (the last query row of the pattern), and the
magnitude |activation| per MLP neuron (mlp.hook_post). Each unit's recall and reasoning values are
compared with a two-sided Mann-Whitney U test, Benjamini-Hochberg corrected over the units of a
feature, and Cohen's d (pooled SD; positive = larger on reasoning). A unit is task-specialised when
q < alpha and |d| >= min_d.

Length control: reasoning prompts are longer, and norms and entropies grow with length. The
controlled comparison prepends a neutral filler text to each recall prompt so its token length
matches a reasoning prompt's (lengths assigned by rank); the raw comparison is kept beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.tasks import PromptSet
from interp.errors import InterpError

FILLER = (
    "Here are some notes written for a general knowledge quiz. Read them and then complete the last sentence. "
    "Many people enjoy quizzes like this one, and they often learn something new along the way. "
)


def last_token_features(model: HookedTransformer, prompts: PromptSet) -> dict[str, Float[Tensor, "item unit"]]:
    """resid_norm [item, layer], attn_entropy and attn_max [item, layer*head], mlp_abs [item, layer*d_mlp], one batch per length."""
    cfg = model.cfg
    names = lambda name: name.endswith(("hook_resid_post", "hook_pattern", "mlp.hook_post"))  # noqa: E731
    out = {
        "resid_norm": torch.empty(len(prompts), cfg.n_layers),
        "attn_entropy": torch.empty(len(prompts), cfg.n_layers * cfg.n_heads),
        "attn_max": torch.empty(len(prompts), cfg.n_layers * cfg.n_heads),
        "mlp_abs": torch.empty(len(prompts), cfg.n_layers * cfg.d_mlp),
    }
    with torch.no_grad():
        for indices in prompts.length_groups().values():
            tokens = torch.stack([prompts.tokens[i] for i in indices]).to(cfg.device)
            _, cache = model.run_with_cache(tokens, names_filter=names)
            resid = torch.stack(
                [cache["resid_post", layer][:, -1] for layer in range(cfg.n_layers)], 1
            )  # [batch, layer, d_model]
            pattern = torch.stack(
                [cache["pattern", layer][:, :, -1] for layer in range(cfg.n_layers)], 1
            )  # [batch, layer, head, key]
            mlp = torch.stack(
                [cache["post", layer][:, -1] for layer in range(cfg.n_layers)], 1
            )  # [batch, layer, d_mlp]
            entropy = -(pattern * pattern.clamp_min(1e-12).log()).sum(-1)
            out["resid_norm"][indices] = resid.norm(dim=-1).float().cpu()
            out["attn_entropy"][indices] = entropy.flatten(1).float().cpu()
            out["attn_max"][indices] = pattern.max(-1).values.flatten(1).float().cpu()
            out["mlp_abs"][indices] = mlp.abs().flatten(1).float().cpu()
    return out


def unit_labels(model: HookedTransformer, feature: str) -> pd.DataFrame:
    """layer / head / neuron of each column of a feature from last_token_features."""
    cfg = model.cfg
    if feature == "resid_norm":
        return pd.DataFrame(dict(layer=np.arange(cfg.n_layers), head=-1, neuron=-1))
    if feature in ("attn_entropy", "attn_max"):
        layer, head = np.divmod(np.arange(cfg.n_layers * cfg.n_heads), cfg.n_heads)
        return pd.DataFrame(dict(layer=layer, head=head, neuron=-1))
    if feature == "mlp_abs":
        layer, neuron = np.divmod(np.arange(cfg.n_layers * cfg.d_mlp), cfg.d_mlp)
        return pd.DataFrame(dict(layer=layer, head=-1, neuron=neuron))
    raise InterpError(
        f"unit_labels(feature={feature!r}): not a screen feature; choose resid_norm, attn_entropy, attn_max or mlp_abs."
    )


def cohens_d(a: Float[np.ndarray, "n_a unit"], b: Float[np.ndarray, "n_b unit"]) -> Float[np.ndarray, " unit"]:
    """(mean b - mean a) / pooled SD, per column; 0 where both samples are constant."""
    n_a, n_b = len(a), len(b)
    pooled = np.sqrt(((n_a - 1) * a.var(0, ddof=1) + (n_b - 1) * b.var(0, ddof=1)) / (n_a + n_b - 2))
    diff = b.mean(0) - a.mean(0)
    return np.where(pooled > 0, diff / np.where(pooled > 0, pooled, 1.0), 0.0)


def compare(
    model: HookedTransformer,
    recall: dict[str, Tensor],
    reasoning: dict[str, Tensor],
    *,
    alpha: float = 0.01,
    min_d: float = 0.8,
) -> pd.DataFrame:
    """Mann-Whitney U + Benjamini-Hochberg + Cohen's d per unit of every feature; one row per (feature, unit)."""
    frames = []
    for feature in recall:
        a, b = recall[feature].numpy().astype(np.float64), reasoning[feature].numpy().astype(np.float64)
        if len(a) < 2 or len(b) < 2:
            raise InterpError(
                f"screen: {feature} needs at least 2 items per task, got {len(a)} recall and {len(b)} reasoning."
            )
        varies = np.ptp(np.concatenate([a, b]), axis=0) > 0
        p = np.ones(a.shape[1])
        if varies.any():
            p[varies] = stats.mannwhitneyu(a[:, varies], b[:, varies], axis=0, alternative="two-sided").pvalue
        q = stats.false_discovery_control(p, method="bh")
        d = cohens_d(a, b)
        frames.append(
            unit_labels(model, feature).assign(
                feature=feature,
                mean_recall=a.mean(0),
                mean_reasoning=b.mean(0),
                cohens_d=d,
                p=p,
                q=q,
                specialised=(q < alpha) & (np.abs(d) >= min_d),
            )
        )
    return pd.concat(frames, ignore_index=True)


def length_matched(model: HookedTransformer, recall: PromptSet, reasoning: PromptSet) -> PromptSet:
    """Recall prompts with the tail of FILLER prepended so their lengths match the reasoning prompts' (by rank)."""
    if model.tokenizer is None:
        raise InterpError(
            "length_matched needs a model with a tokenizer (the filler is text); compare prompts of equal length directly instead."
        )
    filler = model.to_tokens(FILLER * 4, prepend_bos=False)[0]
    targets = np.sort(np.array([len(r) for r in reasoning.tokens]))
    order = np.argsort([len(r) for r in recall.tokens], kind="stable")
    picks = targets[np.linspace(0, len(targets) - 1, len(recall)).round().astype(int)]
    tokens = list(recall.tokens)
    for rank, i in enumerate(order):
        extra = int(picks[rank]) - len(tokens[i])
        if extra > 0:
            tokens[i] = torch.cat([filler[-extra:].to(tokens[i].device), tokens[i]])
    return PromptSet(
        recall.task,
        recall.items.assign(n_tokens=[len(t) for t in tokens]),
        tokens,
        recall.corrupted,
        recall.answer_ids,
        recall.wrong_ids,
        recall.candidate_ids,
    )


def screen(
    model: HookedTransformer,
    recall: PromptSet,
    reasoning: PromptSet,
    *,
    control_length: bool = True,
    alpha: float = 0.01,
    min_d: float = 0.8,
) -> pd.DataFrame:
    """The screen on raw prompts and (control_length) on length-matched recall prompts; column `comparison` tells which."""
    reasoning_features = last_token_features(model, reasoning)
    frames = [
        compare(model, last_token_features(model, recall), reasoning_features, alpha=alpha, min_d=min_d).assign(
            comparison="raw"
        )
    ]
    if control_length:
        matched = last_token_features(model, length_matched(model, recall, reasoning))
        frames.append(
            compare(model, matched, reasoning_features, alpha=alpha, min_d=min_d).assign(comparison="length_matched")
        )
    return pd.concat(frames, ignore_index=True)


def screen_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Specialised units per feature and comparison, split by the sign of d (higher on recall / on reasoning)."""
    return (
        df.assign(higher_on=np.where(df["cohens_d"] > 0, "reasoning", "recall"))
        .groupby(["comparison", "feature"])
        .apply(
            lambda g: pd.Series(
                dict(
                    units=len(g),
                    specialised=int(g["specialised"].sum()),
                    higher_on_recall=int((g["specialised"] & (g["higher_on"] == "recall")).sum()),
                    higher_on_reasoning=int((g["specialised"] & (g["higher_on"] == "reasoning")).sum()),
                )
            ),
            include_groups=False,
        )
        .reset_index()
    )
