"""Dashboard page of a scan-and-snap run (config.json analysis = "scan_snap")."""

from __future__ import annotations

import pandas as pd

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir


def _issue16_sections(run: ResultsDir, m: dict) -> list[Section]:
    """The common-token prediction as the paper states it, and our runs held to the authors' own numbers (older runs lack them)."""
    if "common_mass_scan_snap" not in m:
        return []
    mass = m["common_mass_scan_snap"]
    per_eta = "; ".join(
        f"eta_Y={eta}: snap at step {v['snap_step']:.1f}, frozen mass {v['mass_final']:.3f}"
        for eta, v in mass["eta_y"].items()
    )
    figure6 = run.load_table("figure6")
    own = figure6[(figure6["variant"] == "authors_settings")].drop(columns="variant")
    return [
        Section(
            "Common tokens: scan, then snap",
            text=(
                f"Small case, eta_Z = 1, zero init, the authors' SGD (momentum 0.9), {mass['seeds']} seeds. {per_eta}. "
                f"Largest one-step rise before the snap {mass['max_rise_before_snap']:.1e}; largest drift after it {mass['max_drift_after_snap']:.3f} of the drop."
            ),
            figures=["common_mass_scan_snap"],
            table=run.load_table("common_mass"),
        ),
        Section(
            "The authors' Figure 4 run",
            text=(
                "Loss of each iteration's batch, mean over seeds, against the authors' figure_4.log (their seed 2; our batches differ, so we average seeds). "
                f"Largest relative error at iterations 0-10: {max(m['figure4_relative_error'].values()):.3f}."
            ),
            figures=["figure4_loss"],
        ),
        Section(
            "The authors' Figure 6 table",
            text=(
                f"Entropy of c_n over distinct tokens per cell, ours (10 seeds, their settings) vs their figure_6_data.pkl. At {m['figure6']['cells']} one-query cells: "
                f"largest |gap| {m['figure6']['max_abs_gap']:.3f}, largest |gap| / standard error {m['figure6']['max_gap_z']:.2f}; "
                f"with many seeds the largest |gap| / standard error is {m['figure6']['max_gap_z_many_seeds']:.2f}."
            ),
            figures=["figure6_vs_authors"],
            table=own,
        ),
        Section(
            "Theorem 3 on SGD and on the population ODE",
            text=(
                "The bounds r(0) exp(2 f_l(0)^2 B) <= r(t) <= r(0) exp(2 B) for the top distinct token l against each other one, with B read off the "
                "trajectory's own logit increments (one xi per class, as the theorem assumes). B_ratio_least_to_top is the least likely distinct token's "
                "own B over the top token's: 1 under the theorem's assumption."
            ),
            table=pd.DataFrame(
                [
                    {"source": k, **{n: v for n, v in d.items() if not isinstance(v, dict)}}
                    for k, d in m["theorem3_trajectories"].items()
                ]
            ),
        ),
    ]


@register_sections("scan_snap")
def scan_snap_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    predictions = run.load_table("predictions")
    predictions = predictions.assign(verdict=predictions["holds"].map({True: "holds", False: "does not hold"})).drop(
        columns="holds"
    )
    held = int((predictions["verdict"] == "holds").sum())
    return [
        Section(
            "Predictions",
            text=f"{held} of {len(predictions)} predictions hold. Each row: the measured number, the criterion it is judged by, the verdict.",
            table=predictions,
        ),
        *_issue16_sections(run, m),
        Section(
            "Small case: scan",
            text=(
                f"2 classes, 10 common and 10 distinct tokens each, T = 128, batch 128. Final mass of c_n on common tokens: {m['common_mass_final']:.3f}; "
                f"Kendall tau of c_n against P(l|n) over distinct tokens: {m['kendall_tau_distinct']:.3f}."
            ),
            figures=["mass_over_training", "final_composition"],
        ),
        Section(
            "Sweep: entropy of c_n over distinct tokens",
            text=(
                f"{m.get('sweep_runs', '?')} SGD runs trained as one batched computation in {m.get('sweep_seconds', float('nan')):.0f} s. "
                "The paper predicts lower entropy (sparser attention) for larger eta_Z and higher entropy for larger eta_Y / eta_Z."
            ),
            figures=["sweep_entropy"],
        ),
        Section(
            "Snap: the reduced ODE",
            text="B(t) grows quadratically before t0 = K ln M / eta_Y and roughly logarithmically after; the Theorem 3 bounds are checked along these trajectories.",
            figures=["snap_curves"],
        ),
        Section(
            "SGD against the ODE",
            text="Plain SGD (no momentum) from zero weights against the T -> infinity gradient flow, step for unit of time.",
            figures=["sgd_vs_ode"],
        ),
        Section(
            "Beyond the toy: a TransformerLens 1-layer transformer",
            text=(
                "Learned embeddings, W_Q/W_K/W_V/W_O, LayerNorm, Adam; positional embeddings off (W_pos zeroed and frozen: TransformerLens 3.9 has no option to drop them). "
                "Two next tokens per query, so the query alone cannot predict the answer and the context must be read."
            ),
            figures=["transformer_attention"],
        ),
        *default_sections(run),
    ]
