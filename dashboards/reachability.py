"""Dashboard page of a reachability run (config.json analysis = "reachability")."""

from __future__ import annotations

import math

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir

SEPARATE = ("optimal_path", "frontier_minus_optimal", "visited", "reachable_minus_frontier", "never_reachable")


def _fmt(value, spec: str = ".3g") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


@register_sections("reachability")
def reachability_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    steps = sorted({int(k.rsplit("step", 1)[1]) for k in m if k.startswith("inner_frontier_step")})
    accuracy = run.load_table("accuracy")
    warning = (
        "UNDER-TRAINED (quick run): these numbers are a smoke test, not results. " if m.get("under_trained") else ""
    )
    acc_text = warning + (
        f"Held-out graphs (n = {m.get('n_eval', 'n/a')}): continuous thought {m['acc_continuous']:.3f}, discrete CoT {m['acc_discrete_cot']:.3f}, no CoT {m['acc_no_cot']:.3f}; "
        f"continuous minus discrete {_fmt(m.get('continuous_minus_discrete'), '+.3f')} (two-proportion z = {_fmt(m.get('z'), '.2f')}). "
        f"The label-order shortcut (the best id-only rule on training graphs, {m.get('label_order_shortcut_rule', 'n/a')}) scores {_fmt(m.get('label_order_shortcut_acc'), '.3f')} "
        f"(with ids in level order: {_fmt(m.get('label_order_shortcut_acc_unshuffled_ids'), '.3f')}). "
        f"The hand-set construction answers {m['construction_acc']:.4f} of {m['n_construction_problems']} problems; every thought is within "
        f"{m['construction_max_error']:.2e} of |V_c|^(-1/2) sum u_v (tolerance {m['construction_tolerance']:g})."
    )
    branching = (
        "How often the frontier (nodes at distance exactly c) holds more than one node on the held-out graphs: "
        + ", ".join(f"step {c}: {_fmt(m.get(f'frontier_gt1_fraction_step{c}'), '.2f')}" for c in steps)
        + "."
    )
    following = (
        "Edge following, against chance: thought c's highest-logit graph node lies in the frontier F_c in "
        + ", ".join(
            f"{_fmt(m.get(f'thought_top_in_frontier_step{c}'), '.2f')} (chance {_fmt(m.get(f'thought_top_in_frontier_chance_step{c}'), '.2f')}) at step {c}"
            for c in steps
        )
        + f"; discrete CoT's first generated hop is an edge out of the root in {_fmt(m.get('discrete_first_hop_valid'), '.2f')} (chance {_fmt(m.get('discrete_first_hop_valid_chance'), '.2f')}), "
        f"its whole chain a root -> answer path in {_fmt(m.get('discrete_chain_valid_to_answer'), '.2f')}."
    )
    curve_text = (
        "Held-out accuracy on a separate curve set against training steps; the budget is read off these. "
        + "; ".join(
            f"{mode}: {_fmt(m.get(f'curve_acc_{mode}'), '.3f')} at the end, {_fmt(m.get(f'curve_gain_last_20pct_{mode}'), '+.3f')} over the last 20% of steps"
            for mode in ("continuous", "discrete_cot", "no_cot")
        )
        + "."
    )
    inner_text = (
        "Mean <thought c, u_v> per separate (disjoint) node group; thought c exists for problems whose answer is at least c hops away. "
        + "; ".join(
            f"step {c}: " + ", ".join(f"{g} {_fmt(m.get(f'inner_{g}_step{c}'))}" for g in SEPARATE) for c in steps
        )
        + ". Acceptance (issue 14): frontier-minus-optimal above never-reachable by >= 30% of the optimal-to-never gap, z > 5: "
        + "; ".join(
            f"step {c}: share {_fmt(m.get(f'frontier_minus_optimal_gap_share_step{c}'), '.2f')}, z {_fmt(m.get(f'frontier_minus_optimal_z_step{c}'), '.1f')}"
            for c in (1, 2)
        )
        + "."
    )
    probe_text = (
        "Per node, a logistic probe of 'v within c steps of the root' from thought c (fitted on training graphs), AUC on held-out graphs. Per group, the AUC of the probe's score separating the group from never-reachable nodes: "
        + "; ".join(
            f"step {c}: " + ", ".join(f"{g} {_fmt(m.get(f'probe_auc_{g}_step{c}'), '.2f')}" for g in SEPARATE[:4])
            for c in steps
        )
        + "."
    )
    return [
        Section("Accuracy", text=acc_text + " " + branching, table=accuracy, figures=["accuracy"]),
        Section(
            "Accuracy against training steps", text=curve_text + " " + following, figures=["accuracy_curves", "loss"]
        ),
        Section(
            "Thoughts and node embeddings",
            text=inner_text,
            figures=["inner_products_continuous", "inner_products_construction"],
        ),
        Section(
            "Layer-2 attention on edges",
            text="Attention mass per edge (its three tokens, summed over heads) from the position producing thought c, edges grouped by their source at step c - 1.",
            figures=["edge_attention_continuous", "edge_attention_construction"],
        ),
        Section("Linear read-out of the reachable set", text=probe_text, figures=["probe_auc"]),
        Section(
            "Example graph",
            text="One branching held-out graph: each thought's weight on every node (softmax over the graph's nodes of the thought's logits; label under the node id), trained model and construction.",
            figures=["example_graph_continuous", "example_graph_construction"],
        ),
        *default_sections(run),
    ]
