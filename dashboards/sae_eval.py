"""Sections for an SAE's evaluation (what `interp sae eval` writes to DIR/eval/): reconstruction, density, probing, absorption.

Used by the page of an `interp sae train` run (dashboards/sae_train.py); each section appears when its files exist.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.sae import EVALUATION_KEYS
from dashboards.sections import Section, key_value_table

RECONSTRUCTION_KEYS = (*(k for k in EVALUATION_KEYS if k != "tokens"), "dense_threshold", "tokens")


def _read(eval_dir: Path, name: str) -> pd.DataFrame | None:
    path = eval_dir / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def evaluation_sections(eval_dir: str | Path, *, transcoder_site: str | None = None) -> list[Section]:
    eval_dir = Path(eval_dir)
    if not (eval_dir / "metrics.json").is_file():
        return []
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    what = (
        f"the MLP output at {transcoder_site} replaced by the transcoder; CE recovered is against zero-ablating that MLP output"
        if transcoder_site
        else "the SAE spliced in at its site; CE recovered is against zero-ablating the site"
    )
    sections = [
        Section(
            "Reconstruction and downstream loss (held-out tokens)",
            text=f"{what}. explained_variance centres at the mean, explained_variance_gm at the geometric median (SAEBench).",
            table=key_value_table({k: metrics[k] for k in RECONSTRUCTION_KEYS if k in metrics}, key="metric"),
        )
    ]
    histogram = _read(eval_dir, "density_histogram")
    if histogram is not None:
        finite = histogram[np.isfinite(histogram.log10_density_low)]
        figure = go.Figure(
            go.Bar(x=(finite.log10_density_low + finite.log10_density_high) / 2, y=finite.latents, name="latents")
        ).update_layout(
            title=dict(text="Latent firing density on held-out tokens"),
            xaxis=dict(title=dict(text="log10 firing density")),
            yaxis=dict(title=dict(text="latents")),
        )
        if "dense_threshold" in metrics:
            figure.add_vline(x=float(np.log10(metrics["dense_threshold"])), line_dash="dash")
        sections.append(
            Section(
                "Latent density",
                text=f"dead (never active): {metrics.get('dead_fraction', float('nan')):.3f} of latents, not drawn; "
                f"dense (active on more than {metrics.get('dense_threshold', 0.1)} of tokens, right of the dashed line): "
                f"{metrics.get('dense_fraction', float('nan')):.3f}.",
                figures=[figure],
            )
        )
    probing = _read(eval_dir, "sparse_probing")
    if probing is not None and len(probing):
        mean = probing.groupby(["features", "k"]).accuracy.mean().reset_index()
        figure = go.Figure(
            [
                go.Scatter(x=part.k, y=part.accuracy, mode="lines+markers", name=f"{name} (k most different)")
                for name, part in mean[mean.features != "raw_full"].groupby("features")
            ]
        )
        full = mean[mean.features == "raw_full"].accuracy
        if len(full):
            figure.add_hline(
                y=float(full.iloc[0]), line_dash="dash", annotation_text="probe on the whole raw activation"
            )
        figure.update_layout(
            title=dict(text="Sparse probing: mean test accuracy over token-label tasks"),
            xaxis=dict(title=dict(text="k (features the probe sees)"), type="log"),
            yaxis=dict(title=dict(text="test accuracy")),
        )
        table = probing.pivot_table(index="task", columns=["features", "k"], values="accuracy")
        table.columns = [f"{f} k={k}" for f, k in table.columns]
        sections.append(
            Section(
                "Sparse probing",
                text="Per task, k latents (or k raw dimensions, the matched baseline) chosen on a train half by mean difference "
                "between the classes, a logistic probe fitted on them, accuracy on the held-out half. "
                + ", ".join(
                    f"{k}: {metrics[k]:.3f}"
                    for k in sorted(metrics)
                    if k.startswith("sparse_probing_") and "ci95" not in k
                ),
                table=table.reset_index(),
                figures=[figure],
            )
        )
    letters = _read(eval_dir, "absorption_letters")
    if letters is not None and len(letters):
        figure = go.Figure(go.Bar(x=letters.letter, y=letters.absorption_rate, name="absorption rate")).update_layout(
            title=dict(text="First-letter absorption rate per letter"),
            xaxis=dict(title=dict(text="first letter")),
            yaxis=dict(title=dict(text="absorbed / probe-correct test tokens")),
        )
        sections.append(
            Section(
                "Feature absorption (first-letter task)",
                text=(
                    f"absorption rate {metrics.get('absorption_rate', float('nan')):.3f} (mean over letters); pooled "
                    f"{metrics.get('absorption_rate_pooled', float('nan')):.3f} ± {metrics.get('absorption_rate_pooled_ci95', float('nan')):.3f} "
                    f"(95% CI, {metrics.get('absorption_test_tokens', 0)} tokens); absorption fraction "
                    f"{metrics.get('absorption_fraction', float('nan')):.3f}; letter probe test accuracy "
                    f"{metrics.get('absorption_probe_accuracy', float('nan')):.3f}. A token is absorbed when the letter's main "
                    "latents are silent and the latent contributing most to the letter probe has decoder cosine >= 0.025 with it."
                ),
                table=letters.assign(
                    main_latents=letters.main_latents.map(list), main_cosine=letters.main_cosine.map(list)
                ),
                figures=[figure],
            )
        )
    return sections
