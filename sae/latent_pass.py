"""One cached pass over N corpus tokens that records, for every latent, what a latent dashboard shows.

Per latent: how often it fires, its largest activation, a histogram of its nonzero activations (fixed log10
bins), and its `top` largest activations with where they occurred (sequence, position). The pass runs over
chunks of sequences and writes its state after each chunk (atomically), so a killed pass resumes from the last
finished chunk; a finished pass is reused when asked again with the same settings.

`latent_cards` then turns chosen latents into what their dashboard card shows: top-activating contexts with
the latent's activation on every token of the window (one forward over the sequences involved), the tokens the
decoder direction promotes and suppresses most through the unembedding, and the nearest latents by decoder cosine.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor

from interp.errors import CorruptFileError, InterpError, OutOfRangeError
from interp.fileio import atomic_path
from sae.models import Sae

HIST_EDGES = np.linspace(-4, 3, 57)  # log10(activation) bin edges; below and above are clipped into the end bins


class LatentPass(NamedTuple):
    firing: Tensor  # [d_sae] tokens on which the latent is active
    max_act: Tensor  # [d_sae]
    hist: Tensor  # [d_sae, bins] counts of nonzero activations per log10 bin
    top_values: Tensor  # [top, d_sae] descending
    top_seq: Tensor  # [top, d_sae]
    top_pos: Tensor  # [top, d_sae]
    n_tokens: int


def _key(sae: Sae, site: str, tokens: Tensor, top: int) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str).encode())
    for p in sae.state_dict().values():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    digest.update(tokens.cpu().numpy().tobytes())
    digest.update(f"{site}|{top}".encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def site_latents(model, sae: Sae, site: str, seqs: Int[Tensor, "b pos"]) -> Tensor:
    """[b, pos, d_sae]: the SAE's latents on these sequences (a transcoder's: from its input site)."""
    from interp.hooks import cache_sites
    from interp.sites import as_site

    s = as_site(model, site)
    acts = cache_sites(model, seqs, [s], micro_batch=len(seqs))[s]
    b, p = acts.shape[:2]
    return sae.encode(acts.reshape(b * p, -1).float()).reshape(b, p, -1)


@torch.no_grad()
def latent_pass(
    model,
    sae: Sae,
    site: str,
    tokens: Int[Tensor, "seqs pos"],
    state_path: str | os.PathLike,
    *,
    top: int = 20,
    chunk_seqs: int = 16,
    stop_after_chunks: int | None = None,
) -> LatentPass:
    """Run (or resume, or reuse) the pass over `tokens`; its state lives at `state_path` (a .pt file).

    stop_after_chunks: return after this many new chunks (a partial pass, resumable), for time-boxed runs and tests.
    """
    if tokens.ndim != 2:
        raise InterpError(f"latent_pass: tokens must be [seqs, pos], got shape {tuple(tokens.shape)}.")
    if top < 1 or top > tokens.numel():
        raise OutOfRangeError(f"latent_pass(top={top}): must lie in 1..{tokens.numel()} (the tokens passed).")
    state_path = Path(state_path)
    key = _key(sae, site, tokens, top)
    d_sae, pos = sae.cfg.d_sae, tokens.shape[1]
    state = None
    if state_path.exists():
        try:
            state = torch.load(state_path, weights_only=False)
        except Exception as exc:
            raise CorruptFileError(f"{state_path} cannot be read ({exc}); delete it to run the pass again.") from exc
        if state.get("key") != key:
            state = None  # another SAE, site or token set: start again
    if state is None:
        state = dict(
            key=key,
            next_chunk=0,
            firing=torch.zeros(d_sae, dtype=torch.long),
            max_act=torch.zeros(d_sae),
            hist=torch.zeros(d_sae, len(HIST_EDGES) - 1, dtype=torch.long),
            top_values=torch.full((top, d_sae), -1.0),
            top_index=torch.zeros(top, d_sae, dtype=torch.long),  # flat token index seq * pos + position
        )
    starts = list(range(0, len(tokens), chunk_seqs))
    done_now = 0
    for chunk, start in enumerate(starts):
        if chunk < state["next_chunk"]:
            continue
        if stop_after_chunks is not None and done_now >= stop_after_chunks:
            break
        acts = site_latents(model, sae, site, tokens[start : start + chunk_seqs]).reshape(-1, d_sae)
        active = acts > 0
        state["firing"] += active.sum(0)
        state["max_act"] = torch.maximum(state["max_act"], acts.max(0).values)
        rows, cols = active.nonzero(as_tuple=True)
        bins = np.clip(np.digitize(np.log10(acts[rows, cols].double().numpy()), HIST_EDGES) - 1, 0, len(HIST_EDGES) - 2)
        state["hist"].view(-1).index_add_(
            0, cols * (len(HIST_EDGES) - 1) + torch.from_numpy(bins).long(), torch.ones(len(cols), dtype=torch.long)
        )
        k = min(top, len(acts))
        values, index = acts.topk(k, dim=0)
        merged_values = torch.cat([state["top_values"], values])
        merged_index = torch.cat([state["top_index"], index + start * pos])
        best = merged_values.topk(top, dim=0)
        state["top_values"] = best.values
        state["top_index"] = merged_index.gather(0, best.indices)
        state["next_chunk"] = chunk + 1
        state_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(state_path) as tmp:  # a kill mid-write keeps the previous chunk's state
            torch.save(state, tmp)
        done_now += 1
    n_tokens = min(state["next_chunk"] * chunk_seqs, len(tokens)) * pos
    return LatentPass(
        state["firing"],
        state["max_act"],
        state["hist"],
        state["top_values"],
        state["top_index"] // pos,
        state["top_index"] % pos,
        n_tokens,
    )


def pass_complete(state_path: str | os.PathLike, tokens: Tensor, chunk_seqs: int = 16) -> bool:
    state = torch.load(state_path, weights_only=False)
    return state["next_chunk"] * chunk_seqs >= len(tokens)


def latent_table(result: LatentPass, model, tokens: Tensor) -> pd.DataFrame:
    """One row per latent: density, max activation, and the text of its top-activating token (the table's search key)."""
    texts = {}
    top_tokens = tokens[result.top_seq[0], result.top_pos[0]]
    for t in top_tokens.unique().tolist():
        texts[t] = _text(model, torch.tensor([t]))
    live = result.top_values[0] > 0
    return pd.DataFrame(
        {
            "latent": np.arange(len(result.firing)),
            "density": result.firing.double().numpy() / max(1, result.n_tokens),
            "max_activation": result.max_act.numpy(),
            "top_token": [texts[int(t)] if bool(ok) else "" for t, ok in zip(top_tokens, live)],
        }
    )


@torch.no_grad()
def latent_cards(
    model,
    sae: Sae,
    site: str,
    tokens: Int[Tensor, "seqs pos"],
    result: LatentPass,
    latents: list[int],
    *,
    contexts: int = 8,
    window: int = 10,
    after: int = 4,
    n_logits: int = 10,
    n_neighbours: int = 5,
) -> list[dict]:
    """What each chosen latent's card shows (a dict per latent, JSON-ready)."""
    bad = [j for j in latents if not 0 <= j < sae.cfg.d_sae]
    if bad:
        raise OutOfRangeError(
            f"latents {bad[:5]}: out of range; this SAE has d_sae={sae.cfg.d_sae} latents, 0..{sae.cfg.d_sae - 1}."
        )
    seqs_needed = sorted(
        {
            int(result.top_seq[r, j])
            for j in latents
            for r in range(min(contexts, len(result.top_seq)))
            if result.top_values[r, j] > 0
        }
    )
    per_seq = {}
    for i in range(0, len(seqs_needed), 16):
        chunk = seqs_needed[i : i + 16]
        acts = site_latents(model, sae, site, tokens[chunk])
        for row, s in enumerate(chunk):
            per_seq[s] = acts[row][:, latents]  # [pos, len(latents)]
    w_dec = sae.W_dec.detach().float()
    unit = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cards = []
    for column, j in enumerate(latents):
        examples = []
        for r in range(min(contexts, len(result.top_seq))):
            value = float(result.top_values[r, j])
            if value <= 0:
                break
            s, q = int(result.top_seq[r, j]), int(result.top_pos[r, j])
            lo, hi = max(0, q - window), min(tokens.shape[1], q + 1 + after)
            examples.append(
                dict(
                    activation=value,
                    seq=s,
                    pos=q,
                    tokens=[_text(model, tokens[s, t : t + 1]) for t in range(lo, hi)],
                    acts=[round(float(a), 4) for a in per_seq[s][lo:hi, column]],
                    focus=q - lo,
                )
            )
        logits = w_dec[j] @ model.W_U.detach().float()
        up, down = logits.topk(n_logits), (-logits).topk(n_logits)
        cosine = unit @ unit[j]
        cosine[j] = -2
        near = cosine.topk(min(n_neighbours, len(cosine) - 1))
        cards.append(
            dict(
                latent=j,
                density=float(result.firing[j]) / max(1, result.n_tokens),
                max_activation=float(result.max_act[j]),
                hist=result.hist[j].tolist(),
                hist_edges=HIST_EDGES.tolist(),
                examples=examples,
                top_logits=[(_text(model, i[None]), round(float(v), 4)) for v, i in zip(up.values, up.indices)],
                bottom_logits=[(_text(model, i[None]), round(-float(v), 4)) for v, i in zip(down.values, down.indices)],
                neighbours=[(int(i), round(float(v), 4)) for v, i in zip(near.values, near.indices)],
            )
        )
    return cards


def choose_latents(result: LatentPass, n: int, seed: int = 0) -> list[int]:
    """Half the most frequent live latents, half a seeded random sample of the other live ones."""
    live = (result.firing > 0).nonzero()[:, 0]
    frequent = result.firing[live].argsort(descending=True)[: n // 2]
    chosen = live[frequent].tolist()
    rest = [int(j) for j in live if int(j) not in set(chosen)]
    gen = torch.Generator().manual_seed(seed)
    chosen += [rest[i] for i in torch.randperm(len(rest), generator=gen)[: n - len(chosen)].tolist()]
    return sorted(chosen)


def _text(model, ids: Tensor) -> str:
    return model.to_string(ids) if model.tokenizer is not None else "".join(f"<{int(i)}>" for i in ids)
