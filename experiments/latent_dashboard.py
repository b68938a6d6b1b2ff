"""The latent dashboard of a saved SAE: the cached pass (sae.latent_pass), the cards, the page (dashboards.latents).

`interp sae latents DIR`  ->  DIR/latents/{pass.pt (resumable), latents.parquet, cards.json, index.html}
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def build_latent_dashboard(
    directory: str | os.PathLike,
    model,
    tokens,
    *,
    latents: list[int] | None = None,
    n_latents: int = 24,
    top: int = 20,
    contexts: int = 8,
    seed: int = 0,
) -> Path:
    """directory/latents/{pass.pt (resumable), latents.parquet, cards.json, index.html} for the SAE in directory (or directory/sae)."""
    from dashboards.latents import render_latent_page
    from interp.fileio import atomic_write_bytes
    from interp.results import atomic_write_text
    from sae.io import load_sae, read_sae_config
    from sae.latent_pass import choose_latents, latent_cards, latent_pass, latent_table

    directory = Path(directory)
    sae_dir = directory / "sae" if (directory / "sae").is_dir() else directory
    site = read_sae_config(sae_dir).get("metadata", {}).get("hook_name")
    if site is None:
        from interp.errors import ShapeMismatchError

        raise ShapeMismatchError(
            f"{sae_dir}/cfg.json has no metadata.hook_name, so the site to read latents at is unknown."
        )
    sae = load_sae(sae_dir)
    out = directory / "latents"
    result = latent_pass(model, sae, site, tokens, out / "pass.pt", top=top)
    table = latent_table(result, model, tokens)
    chosen = latents if latents is not None else choose_latents(result, n_latents, seed=seed)
    cards = latent_cards(model, sae, site, tokens, result, chosen, contexts=contexts)
    import io

    buffer = io.BytesIO()
    table.to_parquet(buffer)
    atomic_write_bytes(out / "latents.parquet", buffer.getvalue())
    atomic_write_text(out / "cards.json", json.dumps(cards))
    meta = (
        f"{sae.cfg.architecture} SAE, {sae.cfg.d_sae} latents, at {site}; pass over {result.n_tokens} corpus tokens; "
        f"{int((result.firing == 0).sum())} latents never active there"
    )
    page = out / "index.html"
    atomic_write_text(
        page, render_latent_page(f"Latents of {sae_dir.resolve().parent.name}/{sae_dir.name}", table, cards, meta)
    )
    return page
