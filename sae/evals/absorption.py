"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench's absorption metric).

The task is built from the tokenizer's own vocabulary: tokens that are a space and then 2+ ASCII letters
(" apple"), grouped by first letter. Each is run after a fixed prefix and the SAE's site is read at that token.

1. A multinomial logistic probe on the raw activation predicts the first letter (fitted on the train tokens);
   its row for letter L, mapped back to activation space, is the letter's direction p_L.
2. The letter's main latents are chosen on the train tokens: the latent whose mean activation differs most
   between letter-L tokens and the others, then the next ones while each raises the F1 of "any main latent
   fires" as a letter-L detector by more than `f1_gain` (at most `max_main`). A later main latent must fire on at
   least `min_share` of the letter's train tokens: with a few dozen tokens per letter, a latent of one token (an
   absorbing one) would otherwise raise the F1 enough to be called a letter latent.
3. On the test tokens the probe gets right, a token is absorbed when none of the letter's main latents fire
   and the latent contributing most to the probe projection, act_j * (W_dec_j . p_L), has decoder cosine with
   p_L of at least `cos_threshold`: the letter's information is carried by another latent.

absorption_rate: absorbed / probe-correct test tokens, averaged over letters. absorption_fraction: on the same
tokens, the share of the positive probe projection contributed by latents other than the main ones (0: the main
latents carry it all; 1: all of it is absorbed), averaged over letters.
"""

from __future__ import annotations

import math
import re
import string

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.errors import InterpError
from sae.evals.linear import fit_logistic
from sae.models import Sae

WORD = re.compile(r"^ [A-Za-z]{2,}$")
PREFIX = "Spell the word:"


def first_letter_vocabulary(
    tokenizer, *, per_letter: int = 40, min_per_letter: int = 12, seed: int = 0
) -> pd.DataFrame:
    """Columns token, text, letter (0..25): up to `per_letter` word tokens per first letter, letters with fewer dropped."""
    vocab = tokenizer.get_vocab()
    found: dict[int, list[tuple[int, str]]] = {}
    for token_id in sorted(vocab.values()):
        text = tokenizer.decode([token_id])
        if WORD.match(text):
            found.setdefault(string.ascii_lowercase.index(text[1].lower()), []).append((token_id, text))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for letter, items in sorted(found.items()):
        if len(items) < min_per_letter:
            continue
        for i in torch.randperm(len(items), generator=gen)[:per_letter].tolist():
            rows.append(dict(token=items[i][0], text=items[i][1], letter=letter))
    return pd.DataFrame(rows, columns=["token", "text", "letter"])


@torch.no_grad()
def word_activations(model, site, tokens: Int[Tensor, " n"], *, batch_size: int = 256) -> Float[Tensor, "n d"]:
    """The site's activation at each word token placed after PREFIX (one short sequence per token)."""
    from interp.hooks import cache_sites
    from interp.sites import as_site

    site = as_site(model, site)
    prefix = model.to_tokens(PREFIX, prepend_bos=bool(model.cfg.default_prepend_bos))[0]
    seqs = torch.cat([prefix.expand(len(tokens), -1), tokens[:, None].to(prefix.device)], dim=1)
    out = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        acts = cache_sites(model, chunk, [site], micro_batch=len(chunk))[site]  # the default would run one at a time
        out.append(acts[:, -1].reshape(acts.shape[0], -1).float())
    return torch.cat(out)


def _f1(pred: Tensor, y: Tensor) -> float:
    tp = float((pred & y).sum())
    return 2 * tp / max(1.0, float(pred.sum()) + float(y.sum()))


def main_latents(
    acts: Tensor, y: Tensor, *, max_main: int = 3, f1_gain: float = 0.03, min_share: float = 0.1, candidates: int = 20
) -> list[int]:
    diff = acts[y].double().mean(0) - acts[~y].double().mean(0)
    order = diff.topk(min(candidates, acts.shape[1])).indices.tolist()
    chosen = [order[0]]
    best = _f1(acts[:, chosen].gt(0).any(1), y)
    share = acts[y].gt(0).double().mean(0)
    for j in order[1:]:
        if len(chosen) >= max_main:
            break
        if share[j] < min_share:
            continue
        f1 = _f1(acts[:, [*chosen, j]].gt(0).any(1), y)
        if f1 > best + f1_gain:
            chosen.append(j)
            best = f1
    return chosen


@torch.no_grad()
def absorption_from_rows(
    sae: Sae,
    x: Float[Tensor, "n d_in"],
    letters: Int[Tensor, " n"],
    *,
    train_fraction: float = 0.6,
    cos_threshold: float = 0.025,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-letter table, per-token table) of the first-letter absorption task on activations x labelled by letter."""
    if len(x) != len(letters):
        raise InterpError(f"absorption: x has {len(x)} rows but letters has {len(letters)}.")
    classes = sorted(set(letters.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[int(c)] for c in letters])
    gen = torch.Generator().manual_seed(seed)
    is_train = torch.zeros(len(x), dtype=torch.bool)
    for c in range(len(classes)):  # stratified split: each letter in both halves
        members = (y == c).nonzero()[:, 0]
        members = members[torch.randperm(len(members), generator=gen)]
        is_train[members[: max(1, round(train_fraction * len(members)))]] = True
    probe = fit_logistic(x[is_train], y[is_train], len(classes))
    predicted = probe.predict(x)
    acts = sae.encode(x.float())
    W_dec = sae.W_dec.detach().double()
    dec_unit = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    letter_rows, token_rows = [], []
    for c, letter in enumerate(classes):
        direction = probe.direction(c)
        main = main_latents(acts[is_train], y[is_train] == c)
        cosines = dec_unit @ direction
        test_hits = ((~is_train) & (y == c) & (predicted == c)).nonzero()[:, 0]
        absorbed_n, fractions = 0, []
        for t in test_hits.tolist():
            contribution = acts[t].double() * (W_dec @ direction)
            main_fires = bool(acts[t, main].gt(0).any())
            top = int(contribution.argmax())
            absorbed = (
                (not main_fires)
                and top not in main
                and float(contribution[top]) > 0
                and float(cosines[top]) >= cos_threshold
            )
            positive = contribution.clamp_min(0)
            total = float(positive.sum())
            fraction = float((total - float(positive[main].sum())) / total) if total > 0 else float("nan")
            absorbed_n += absorbed
            if not math.isnan(fraction):
                fractions.append(fraction)
            token_rows.append(
                dict(
                    row=t,
                    letter=string.ascii_lowercase[letter],
                    main_fires=main_fires,
                    absorbed=absorbed,
                    top_latent=top,
                    top_cosine=float(cosines[top]),
                    absorption_fraction=fraction,
                )
            )
        n = len(test_hits)
        letter_rows.append(
            dict(
                letter=string.ascii_lowercase[letter],
                main_latents=main,
                main_cosine=[round(float(cosines[j]), 3) for j in main],
                test_tokens=int(((~is_train) & (y == c)).sum()),
                probe_correct=n,
                absorbed=absorbed_n,
                absorption_rate=absorbed_n / n if n else float("nan"),
                absorption_fraction=sum(fractions) / len(fractions) if fractions else float("nan"),
            )
        )
    letters_table = pd.DataFrame(letter_rows)
    letters_table.attrs["probe_test_accuracy"] = float((predicted[~is_train] == y[~is_train]).double().mean())
    return letters_table, pd.DataFrame(token_rows)


def absorption_metrics(letters_table: pd.DataFrame) -> dict[str, float]:
    rates = letters_table.absorption_rate.dropna()
    n = int(letters_table.probe_correct.sum())
    pooled = float(letters_table.absorbed.sum()) / max(1, n)
    return dict(
        absorption_rate=float(rates.mean()) if len(rates) else float("nan"),
        absorption_rate_pooled=pooled,
        absorption_rate_pooled_ci95=1.96 * math.sqrt(max(pooled * (1 - pooled), 1e-12) / max(1, n)),
        absorption_fraction=float(letters_table.absorption_fraction.dropna().mean()),
        absorption_letters=len(letters_table),
        absorption_test_tokens=n,
        absorption_probe_accuracy=letters_table.attrs.get("probe_test_accuracy", float("nan")),
    )


def first_letter_absorption(
    model, sae: Sae, site, *, per_letter: int = 40, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The whole task on a real model: vocabulary, activations at `site`, probe, main latents, absorbed tokens."""
    if model.tokenizer is None:
        raise InterpError(
            "first_letter_absorption: the model has no tokenizer, so the first-letter task cannot be built."
        )
    vocab = first_letter_vocabulary(model.tokenizer, per_letter=per_letter, seed=seed)
    if vocab.letter.nunique() < 2:
        raise InterpError("first_letter_absorption: fewer than two letters have enough word tokens in this vocabulary.")
    x = word_activations(model, site, torch.tensor(vocab.token.values))
    letters_table, tokens_table = absorption_from_rows(sae, x, torch.tensor(vocab.letter.values), seed=seed)
    tokens_table["text"] = vocab.text.values[tokens_table.row.values] if len(tokens_table) else []
    return letters_table, tokens_table
