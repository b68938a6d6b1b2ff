"""Dashboard page of a scan-and-snap run (config.json analysis = "scan_snap")."""

from __future__ import annotations

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir


@register_sections("scan_snap")
def scan_snap_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    predictions = run.load_table("predictions")
    predictions = predictions.assign(verdict=predictions["holds"].map({True: "holds", False: "does not hold"})).drop(columns="holds")
    held = int((predictions["verdict"] == "holds").sum())
    return [
        Section("Predictions", text=f"{held} of {len(predictions)} predictions hold. Each row: the measured number, the criterion it is judged by, the verdict.",
                table=predictions),
        Section("Small case: scan", text=(
            f"2 classes, 10 common and 10 distinct tokens each, T = 128, batch 128. Final mass of c_n on common tokens: {m['common_mass_final']:.3f}; "
            f"Kendall tau of c_n against P(l|n) over distinct tokens: {m['kendall_tau_distinct']:.3f}."),
            figures=["mass_over_training", "final_composition"]),
        Section("Sweep: entropy of c_n over distinct tokens", text=(
            f"{m.get('sweep_runs', '?')} SGD runs trained as one batched computation in {m.get('sweep_seconds', float('nan')):.0f} s. "
            "The paper predicts lower entropy (sparser attention) for larger eta_Z and higher entropy for larger eta_Y / eta_Z."),
            figures=["sweep_entropy"]),
        Section("Snap: the reduced ODE", text="B(t) grows quadratically before t0 = K ln M / eta_Y and roughly logarithmically after; the Theorem 3 bounds are checked along these trajectories.",
                figures=["snap_curves"]),
        Section("SGD against the ODE", text="Plain SGD (no momentum) from zero weights against the T -> infinity gradient flow, step for unit of time.", figures=["sgd_vs_ode"]),
        Section("Beyond the toy: a TransformerLens 1-layer transformer", text=(
            "Learned embeddings, W_Q/W_K/W_V/W_O, LayerNorm, Adam; positional embeddings off (W_pos zeroed and frozen: TransformerLens 3.9 has no option to drop them). "
            "Two next tokens per query, so the query alone cannot predict the answer and the context must be read."),
            figures=["transformer_attention"]),
        *default_sections(run),
    ]
