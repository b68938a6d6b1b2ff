"""Circuit discovery with SAE-latent nodes (experiments.circuit, CircuitConfig.sae): the SAE's site split into
latents + an error node, every changed latent's EAP and exact effect, the error's share of the site's effect, and the
top latents' top-activating corpus contexts; and the loading of the SAE the config names."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from experiments.circuit import CircuitConfig

from interp.errors import InterpError


def _context_text(example: dict) -> str:
    """A context window as text, its top-activating token in brackets."""
    return "".join(f"[{t}]" if i == example["focus"] else t for i, t in enumerate(example["tokens"])).replace("\n", "⏎")


def sae_results(
    config: CircuitConfig, task, graph, sae, hook: str, tokens, state_path: Path, *, corpus_fvu: float | None = None
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The SAE's site split into latents + an error node on `task`: every changed latent's EAP and exact effect
    (interp.graph.sae_nodes), the error's share of the site's effect, the latents' EAP edges, and the top
    `sae_top_latents` latents' top-activating contexts over `tokens` (sae.latent_pass, resumable at `state_path`)."""
    import torch

    from interp.graph import agreement
    from interp.graph.sae_nodes import node_of_hook, sae_edge_scores, sae_node_effects, sae_split
    from interp.hooks import capture
    from sae.latent_pass import latent_cards, latent_pass

    node = node_of_hook(graph, hook)
    start = time.perf_counter()
    effects = sae_node_effects(task, node, sae, graph)
    edges = sae_edge_scores(task, node, sae, graph)
    seconds = {"scores": time.perf_counter() - start}
    with torch.no_grad():
        acts = capture(task.model, task.clean_tokens, [hook], attention_mask=task.clean_mask)[hook]
        f, error = sae_split(sae, acts)
    x = acts.reshape(-1, acts.shape[-1]).double()
    fvu_prompts = float(error.reshape(-1, x.shape[-1]).double().pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    latents = effects[effects["kind"] == "latent"]
    whole = effects.set_index("kind")
    top = latents.loc[
        latents["exact"].abs().sort_values(ascending=False, kind="stable").index[: config.sae_top_latents]
    ]
    start = time.perf_counter()
    result = latent_pass(task.model, sae, hook, tokens, state_path, top=max(config.sae_contexts, 1))
    cards = latent_cards(
        task.model, sae, hook, tokens, result, [int(j) for j in top["latent"]], contexts=config.sae_contexts
    )
    seconds["contexts"] = time.perf_counter() - start
    rows = []
    for rank, (card, (_, row)) in enumerate(zip(cards, top.iterrows())):
        for example in card["examples"] or [None]:
            rows.append(
                {
                    "rank": rank,
                    "node": row["upstream"],
                    "latent": int(row["latent"]),
                    "exact": float(row["exact"]),
                    "eap": float(row["eap"]),
                    "density": card["density"],
                    "activation": None if example is None else example["activation"],
                    "context": "(never active in the corpus pass)" if example is None else _context_text(example),
                    "seq": None if example is None else example["seq"],
                    "pos": None if example is None else example["pos"],
                }
            )
    contexts = pd.DataFrame(rows)
    ranked = pd.DataFrame({"upstream": latents["upstream"], "downstream": "", "effect": latents["eap"]})
    truth = pd.DataFrame({"upstream": latents["upstream"], "downstream": "", "effect": latents["exact"]})
    metrics = {
        "path": str(config.sae),
        "hook": hook,
        "node": node,
        "d_sae": int(sae.W_dec.shape[0]),
        "fvu_corpus": corpus_fvu,
        "fvu_prompts": fvu_prompts,
        "l0_prompts": float((f > 0).sum(-1).double().mean()),
        "n_changed_latents": effects.attrs["n_changed_latents"],
        "node_exact": float(whole.loc["node", "exact"]),
        "node_eap": float(whole.loc["node", "eap"]),
        "error_exact": float(whole.loc["error", "exact"]),
        "error_eap": float(whole.loc["error", "eap"]),
        "latents_exact": float(whole.loc["latents", "exact"]),
        "latents_eap": float(whole.loc["latents", "eap"]),
        "error_share_exact": effects.attrs["error_share_exact"],
        "error_share_eap": effects.attrs["error_share_eap"],
        "latent_sum_exact": float(latents["exact"].sum()),
        "agreement": agreement(ranked, truth, config.k) if len(latents) >= 2 else None,
        "context_tokens": int(result.n_tokens),
        "top_latents": [
            {
                "latent": int(j),
                "exact": float(e),
                "eap": float(a),
                "top_context": next(iter(c["examples"]), {}).get("tokens"),
            }
            for j, e, a, c in zip(top["latent"], top["exact"], top["eap"], cards)
        ],
        "seconds": seconds,
    }
    return metrics, {"sae_nodes": effects, "sae_edges": edges, "sae_contexts": contexts}


def load_circuit_sae(path: str):
    """(SAE, the hook it reads, its FVU from the training run's metrics.json if there) for CircuitConfig.sae."""
    import json

    from sae.io import load_sae, read_sae_config

    directory = Path(path)
    sae_dir = directory / "sae" if (directory / "sae").is_dir() else directory
    hook = (read_sae_config(sae_dir).get("metadata") or {}).get("hook_name")
    if not hook:
        raise InterpError(
            f"sae={path!r}: its cfg.json has no metadata.hook_name, so the node it replaces is unknown; save it with a hook name."
        )
    fvu = None
    metrics = sae_dir.parent / "metrics.json"
    if metrics.is_file():
        fvu = json.loads(metrics.read_text()).get("fvu")
    return load_sae(sae_dir), hook, fvu
