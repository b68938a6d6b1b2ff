"""Dashboard page of a dark-matter run (config.json analysis = "dark_matter")."""

from __future__ import annotations

import pandas as pd

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir

PER_WIDTH_COLUMNS = [
    "width",
    "l0",
    "ce_share_linear",
    "ce_share_nonlinear",
    "pursuit_nonlinear_fvu_change",
    "earlier_layer_nonlinear_fvu_change",
    "attn_mlp_nonlinear_fvu_change",
    "larger_sae_share_nonlinear",
    "larger_sae_energy_share_nonlinear",
    "larger_sae_not_yet_learned_ratio_nonlinear",
]


def _grid_sections(run: ResultsDir, m: dict) -> list[Section]:
    """The norm R^2 grid: one row per cell (width, positions dropped, training, k) with its bootstrap 95% CI; cells not yet run say so."""
    if not (run.path / "norm_r2_grid.parquet").exists():
        return []
    grid = run.load_table("norm_r2_grid")
    columns = [
        c
        for c in (
            "width",
            "positions_dropped",
            "training",
            "steps",
            "converged",
            "k",
            "norm_r2",
            "ci_low",
            "ci_high",
            "fvu",
            "fit_tokens",
            "eval_tokens",
            "eval_seqs",
            "ci_doc_low",
            "ci_doc_high",
            "eval_docs",
            "norm_r2_store_heldout",
            "norm_r2_extra_heldout",
            "status",
        )
        if c in grid.columns
    ]
    missing = int((grid.status != "done").sum())
    text = (
        "Held-out R^2 of ||e||^2 predicted linearly from x (no intercept), by SAE width, first positions of each sequence dropped (probe fit and judged "
        "on later positions only), training (the previous runs' 300 steps, or until the FVU changes by < 1% over the last 20% of steps) and k. "
        "CI: percentile bootstrap over held-out sequences (the fitted probe held fixed). The paper reports > 0.9."
    )
    if "norm_r2_extra_heldout" in grid.columns:
        text += (
            " Held out: the store's held-out sequences and extra sequences from later documents of the corpus (seen by neither the SAEs nor the "
            "probes), judged together (norm_r2, eval_seqs); norm_r2_store_heldout / norm_r2_extra_heldout: each set alone; ci_doc: the bootstrap over "
            "documents instead of sequences (a document spans several sequences)."
        )
    if missing:
        text += f" {missing} rows are not measured yet (status says why); rerunning the same command resumes from the cached store and SAEs."
    sections = [
        Section(
            "Norm R^2 grid: what moves it",
            text=text,
            figures=["norm_r2_grid"] if "norm_r2_grid" in run.figure_names() else [],
            table=grid[columns],
        )
    ]
    if (run.path / "norm_r2_grid_effects.parquet").exists():
        sections.append(
            Section(
                "Norm R^2 grid: effect of each factor",
                text=(
                    "Change in norm R^2 when one factor moves from its first level to another, over the pairs of measured cells that agree on every other factor."
                ),
                table=run.load_table("norm_r2_grid_effects"),
            )
        )
    if (run.path / "norm_r2_grid_more_tokens.parquet").exists():
        sections.append(
            Section(
                "Norm R^2 grid: cells with a CI wider than the target, on more tokens",
                text=(
                    "Each such cell judged again on the fit rows its probe was not fit on (fit_unused: held out for the probe, but seen by the SAE in training) "
                    "and on those pooled with the held-out rows (pooled), each with a bootstrap 95% CI over sequences; held_out repeats the grid's number."
                ),
                table=run.load_table("norm_r2_grid_more_tokens"),
            )
        )
    return sections


def _ce_section(m: dict) -> Section | None:
    if not any(ci is not None for ci in m.get("ce_share_nonlinear_ci") or []):
        return None
    rows = [
        dict(
            width=w,
            ce_increase_sae=m["ce_increase_sae"][i],
            ce_share_nonlinear=m["ce_share_nonlinear"][i],
            ce_share_nonlinear_ci=ci,
            ce_share_linear=m["ce_share_linear"][i],
            ce_share_linear_ci=m["ce_share_linear_ci"][i],
        )
        for i, (w, ci) in enumerate(zip(m["widths"], m["ce_share_nonlinear_ci"]))
        if ci is not None
    ]
    table = pd.DataFrame(rows)
    for part in ("nonlinear", "linear"):
        table[f"ce_share_{part}_ci"] = [
            f"[{a:.2f}, {b:.2f}]" + (" includes 0" if a <= 0 <= b else "") for a, b in table[f"ce_share_{part}_ci"]
        ]
    return Section(
        "CE shares with bootstrap CIs",
        text=(
            f"Share of the SAE's CE increase that each error part, left in place, still causes, on {m.get('downstream_seqs', '?')} held-out sequences "
            "(percentile bootstrap 95% CI over sequences). A share whose CI includes 0 is not distinguishable from no effect."
        ),
        table=table,
    )


def _focus(m: dict, key: str) -> float:
    """The focus width's value: runs before per-width lists stored the scalar under the plain key."""
    return m.get(f"focus_{key}", m.get(key))


@register_sections("dark_matter")
def dark_matter_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    head = [*_grid_sections(run, m), *([_ce_section(m)] if _ce_section(m) else [])]
    note = []
    if m.get("partial"):
        note = [
            Section(
                "Partial run",
                text=(
                    f"This invocation stopped at its time budget ({m.get('stopped_at')}). Missing: "
                    + "; ".join(m.get("missing", []))
                    + ". Rerun the same command to resume from the cached store and SAEs."
                ),
            )
        ]
        if not (run.path / "claims.parquet").exists():  # stopped before the family analyses
            return [*note, *head, *default_sections(run)]
    claims = run.load_table("claims")
    if "verdict" not in claims:  # runs from before CI-judged claims
        claims = claims.assign(verdict=claims["holds"].map({True: "holds", False: "does not hold"}))
    claims = claims.drop(columns="holds")
    laws = m["power_law"]
    by_width = run.load_table("by_width")
    sections = [
        *note,
        Section(
            "Claims of the paper",
            text=(
                f"{int((claims.verdict == 'holds').sum())} of {len(claims)} claims hold on widths {m['widths']} (TopK, matched L0), "
                f"{m['fit_tokens']} fit and {m['eval_tokens']} held-out tokens. Each row: our number, the criterion, the verdict (claims with CIs: "
                "'undetermined' when a CI straddles the criterion). The 'best reading' row was chosen after looking at every reading."
            ),
            table=claims,
        ),
        *head,
        Section(
            "Scaling with width",
            text=(
                f"Sae(x): FVU = {laws['fvu_sae']['c']:.3g} + {laws['fvu_sae']['a']:.3g} W^{laws['fvu_sae']['m']:.3g}; "
                f"Sae(x) + LinearError: {laws['fvu_sae_plus_linear']['c']:.3g} + {laws['fvu_sae_plus_linear']['a']:.3g} W^{laws['fvu_sae_plus_linear']['m']:.3g}."
            ),
            figures=["scaling"],
            table=by_width[
                [
                    c
                    for c in by_width.columns
                    if c
                    in (
                        "width",
                        "l0",
                        "vector_r2",
                        "norm_r2",
                        "norm_r2_ci_low",
                        "norm_r2_ci_high",
                        "fvu_sae",
                        "fvu_sae_plus_linear",
                        "fvu_sae_plus_nonlinear",
                        "linear_error_share",
                    )
                ]
            ],
        ),
        Section(
            "Error decomposition",
            text=(
                f"At width {m['focus_width']}: the nonlinear error is {m['focus_nonlinear_fvu_share']:.2f} of the SAE's FVU and leaves "
                f"{_focus(m, 'ce_share_nonlinear') or float('nan'):.2f} of its CE increase (the linear error leaves {_focus(m, 'ce_share_linear') or float('nan'):.2f}). "
                "The table gives each width."
            ),
            figures=["decomposition"],
            table=by_width[[c for c in PER_WIDTH_COLUMNS if c in by_width.columns]],
        ),
    ]
    if "linear_error_sae_not_yet_learned_fraction" in m:
        sections.append(
            Section(
                "Not-yet-learned features",
                text=(
                    "What the largest SAE adds over a smaller one, Sae_large(x) - Sae_W(x), split between W's linear and nonlinear error by inner products, "
                    "beside each part's share of ||e_W||^2 (table above: larger_sae_*; a ratio below 1 means fewer not-yet-learned features in that part). "
                    f"SAEs of width {m['focus_width']} trained on each error part: FVU {m['sae_on_linear_fvu']:.3f} (linear) and {m['sae_on_nonlinear_fvu']:.3f} (nonlinear); "
                    f"fraction of live latents that are directions of the largest SAE (cosine >= threshold) and not of the width-{m['focus_width']} SAE: "
                    f"{m['linear_error_sae_not_yet_learned_fraction']:.3f} (linear) and {m['nonlinear_error_sae_not_yet_learned_fraction']:.3f} (nonlinear)."
                ),
            )
        )
    sections += [
        Section(
            "Per-token norms",
            text=(
                f"Mean R^2 of ||e_j|| from ||e_i|| over width pairs: {m['cross_width_norm_r2']:.3f}; adding ||NonlinearError_i|| gains {m['nonlinear_norm_gain']:.3f}."
            ),
            figures=["cross_width_scatter", "norm_probe_scatter"],
            table=run.load_table("cross_width"),
        ),
        Section(
            "Norm-prediction baselines",
            text="Held-out R^2 of predicting ||e||^2.",
            table=run.load_table("norm_baselines"),
        ),
    ]
    if (run.path / "norm_probes.parquet").exists():
        sections.append(
            Section(
                "Readings of the norm R^2",
                text=(
                    "Held-out R^2 of the linear norm probe for ||e|| and ||e||^2, without and with an intercept, fit on growing numbers of fit tokens, at each width."
                ),
                table=run.load_table("norm_probes"),
            )
        )
    sections += [
        Section(
            "Synthetic check with known truth",
            text="Correlation over held-out tokens of each estimated part's norm with each true noise's norm.",
            table=run.load_table("synthetic_corr"),
        ),
        *default_sections(run),
    ]
    return sections
