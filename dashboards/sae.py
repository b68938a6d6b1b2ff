"""The SAE run's page: evaluation, what a few latents respond to, training, then the defaults."""

from __future__ import annotations

import pandas as pd

from dashboards.sections import Section, default_sections, key_value_table, register_sections
from interp.results import ResultsDir

EVALUATION_KEYS = (
    "l0",
    "fvu",
    "explained_variance",
    "explained_variance_gm",
    "cosine",
    "ce_clean",
    "ce_sae",
    "ce_zero_ablation",
    "ce_loss_recovered",
    "kl_sae",
    "dead_fraction",
    "dense_fraction",
    "tokens",
)


@register_sections("sae")
def sae_sections(run: ResultsDir) -> list[Section]:
    metrics = run.metrics()
    contexts = run.load_table("top_contexts") if "top_contexts" in run.table_names() else pd.DataFrame()
    shown = pd.DataFrame(
        {
            "latent": contexts.get("latent", []),
            "activation": contexts.get("activation", []),
            "context (the latent fires on the [bracketed] token)": [
                f"…{b}[{t}]{a}…"
                for b, t, a in zip(
                    contexts.get("context_before", []),
                    contexts.get("token_text", []),
                    contexts.get("context_after", []),
                )
            ],
        }
    )
    return [
        Section(
            "Evaluation on held-out text",
            text="CE loss recovered = (CE with the site zeroed - CE with the SAE spliced in) / (CE zeroed - CE clean).",
            table=key_value_table({k: metrics[k] for k in EVALUATION_KEYS if k in metrics}, key="metric"),
        ),
        Section(
            "Top-activating contexts",
            text="The most frequent live latents, each with the held-out contexts where it fires hardest.",
            table=shown,
        ),
        Section(
            "Training and latent density",
            figures=[f for f in ("training_fvu", "latent_density") if f in run.figure_names()],
        ),
        *default_sections(run),
    ]
