"""Dashboard page of a reachability run (config.json analysis = "reachability")."""

from __future__ import annotations

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir


@register_sections("reachability")
def reachability_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    steps = sorted({int(k.rsplit("step", 1)[1]) for k in m if k.startswith("inner_frontier_step")})
    accuracy = run.load_table("accuracy")
    acc_text = (
        f"Held-out graphs: continuous thought {m['acc_continuous']:.3f}, discrete CoT {m['acc_discrete_cot']:.3f}, no CoT {m['acc_no_cot']:.3f}. "
        f"The hand-set construction answers {m['construction_acc']:.4f} of {m['n_construction_problems']} problems; every thought is within "
        f"{m['construction_max_error']:.2e} of |V_c|^(-1/2) sum u_v (tolerance {m['construction_tolerance']:g})."
    )
    inner_text = "Mean <thought c, u_v> by node group; the expected order is frontier and optimal well above not-reachable. " + "; ".join(
        f"step {c}: frontier {m[f'inner_frontier_step{c}']:.3g}, optimal {m.get(f'inner_optimal_step{c}', float('nan')):.3g}, "
        f"reachable {m[f'inner_reachable_step{c}']:.3g}, not reachable {m[f'inner_not_reachable_step{c}']:.3g}" for c in steps
    )
    return [
        Section("Accuracy", text=acc_text, table=accuracy, figures=["accuracy", "loss"]),
        Section("Thoughts and node embeddings", text=inner_text, figures=["inner_products_continuous", "inner_products_construction"]),
        Section("Layer-2 attention on edges", text="Attention mass per edge from the position producing thought c, edges grouped by their source against V_(c-1).",
                figures=["edge_attention_continuous", "edge_attention_construction"]),
        Section("Linear read-out of the reachable set", text="Per node, a logistic probe of 'v within c steps of the root' from thought c; AUC on held-out graphs.", figures=["probe_auc"]),
        Section("Example graph", text="Node colour: the thought's inner product with the node's embedding, per step.", figures=["example_graph_continuous", "example_graph_construction"]),
        *default_sections(run),
    ]
