"""Dashboard page of a dark-matter run (config.json analysis = "dark_matter")."""

from __future__ import annotations

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir


@register_sections("dark_matter")
def dark_matter_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    claims = run.load_table("claims")
    claims = claims.assign(verdict=claims["holds"].map({True: "holds", False: "does not hold"})).drop(columns="holds")
    laws = m["power_law"]
    return [
        Section("Claims of the paper", text=(
            f"{int((claims.verdict == 'holds').sum())} of {len(claims)} claims hold on widths {m['widths']} (TopK, matched L0), "
            f"{m['fit_tokens']} fit and {m['eval_tokens']} held-out tokens. Each row: our number, the criterion, the verdict."), table=claims),
        Section("Scaling with width", text=(
            f"Sae(x): FVU = {laws['fvu_sae']['c']:.3g} + {laws['fvu_sae']['a']:.3g} W^{laws['fvu_sae']['m']:.3g}; "
            f"Sae(x) + LinearError: {laws['fvu_sae_plus_linear']['c']:.3g} + {laws['fvu_sae_plus_linear']['a']:.3g} W^{laws['fvu_sae_plus_linear']['m']:.3g}."),
            figures=["scaling"], table=run.load_table("by_width")),
        Section("Error decomposition", text=(
            f"At width {m['focus_width']}: the nonlinear error is {m['focus_nonlinear_fvu_share']:.2f} of the SAE's FVU and leaves "
            f"{m['ce_share_nonlinear']:.2f} of its CE increase (the linear error leaves {m['ce_share_linear']:.2f})."), figures=["decomposition"]),
        Section("Per-token norms", text=(
            f"Mean R^2 of ||e_j|| from ||e_i|| over width pairs: {m['cross_width_norm_r2']:.3f}; adding ||NonlinearError_i|| gains {m['nonlinear_norm_gain']:.3f}."),
            figures=["cross_width_scatter", "norm_probe_scatter"], table=run.load_table("cross_width")),
        Section("Norm-prediction baselines", text="Held-out R^2 of predicting ||e||^2.", table=run.load_table("norm_baselines")),
        Section("Synthetic check with known truth", text="Correlation over held-out tokens of each estimated part's norm with each true noise's norm.",
                table=run.load_table("synthetic_corr")),
        *default_sections(run),
    ]
