"""The circuit-discovery run's page (config.json analysis = "circuit"): the top circuit drawn as a layered graph,
faithfulness curves of every method on the same axes (in sample and held out), the agreement with exact edge
patching, the top edges, node scores (AtP, AtP* GradDrop, exact) with the false-negative bound, the planted
ground truth and ACDC, then the defaults."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir

TOP_CIRCUIT_EDGES = 30
COLOURS = {"eap": "#1f77b4", "eap-ig": "#ff7f0e", "exact": "#2ca02c", "acdc": "#9467bd"}


def _fmt(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def node_position(name: str, n_layers: int) -> tuple[float, float]:
    """x: the layer (embeddings left of layer 0, logits right of the last; a key/value group just left of its layer,
    the MLP half a layer right); y: the head (MLPs below the heads)."""
    if name == "embed":
        return -1.0, 0.0
    if name == "logits":
        return float(n_layers), 0.0
    if name.startswith("m"):
        return float(name[1:].split(".")[0]) + 0.5, -1.5
    layer, head = name[1:].split(".")[:2]
    if head.startswith("kv"):  # a key/value group: just left of its layer's query heads
        return float(layer) - 0.3, 1.5 + 2.0 * int(head[2:])
    return float(layer), 1.0 + int(head[1:])


def _sender_of(receiver: str) -> str:
    """The node a receiver belongs to (its head for q, its kv group for k / v, the MLP, the logits)."""
    if receiver == "logits" or receiver.startswith("m"):
        return receiver
    parts = receiver.split(".")
    return f"{parts[0]}.{parts[1]}"


def circuit_figure(edges: pd.DataFrame, title: str, n_layers: int) -> go.Figure:
    """Edges (upstream, downstream, effect) drawn layer by layer left to right: width by |effect|, colour by sign."""
    fig = go.Figure()
    scale = float(edges["effect"].abs().max()) or 1.0
    nodes: dict[str, tuple[float, float]] = {}
    for u, v, effect in zip(edges["upstream"], edges["downstream"], edges["effect"]):
        x0, y0 = node_position(u, n_layers)
        target = _sender_of(v)
        x1, y1 = node_position(target, n_layers)
        if target == u:  # never for a graph edge, but keep the drawing sane
            continue
        nodes[u], nodes[target] = (x0, y0), (x1, y1)
        fig.add_trace(
            go.Scatter(
                x=[x0, x1],
                y=[y0, y1],
                mode="lines",
                line=dict(width=1 + 7 * abs(effect) / scale, color="#d62728" if effect < 0 else "#1f77b4"),
                hovertext=f"{u} -> {v}: {effect:+.3g}",
                hoverinfo="text",
                showlegend=False,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[p[0] for p in nodes.values()],
            y=[p[1] for p in nodes.values()],
            mode="markers+text",
            text=list(nodes),
            textposition="top center",
            marker=dict(size=10, color="#333"),
            showlegend=False,
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title=title
        + " (red: patching the edge lowers the metric, i.e. it carries the answer; blue: raises it; width: |effect|)",
        xaxis_title="layer (embeddings left, logits right; MLPs below the heads)",
        yaxis=dict(showticklabels=False),
        height=480,
    )
    return fig


def curves_figure(curves: pd.DataFrame, title: str) -> go.Figure:
    fig = go.Figure()
    for (method, split), c in curves.groupby(["method", "split"] if "split" in curves else ["method", "method"]):
        c = c.sort_values("n_edges")
        fig.add_trace(
            go.Scatter(
                x=np.maximum(c["n_edges"], 0.5),
                y=c["recovered"],
                mode="lines+markers",
                name=f"{method} ({split})" if split != method else method,
                line=dict(color=COLOURS.get(method), dash="dash" if split == "insample" else "solid"),
            )
        )
    fig.update_layout(
        title=title,
        xaxis=dict(type="log", title="edges kept (the rest carry the corrupted sender)"),
        yaxis_title="share of the clean - corrupted metric recovered",
        height=420,
    )
    return fig


def _agreement_table(metrics: dict) -> pd.DataFrame:
    rows = []
    for task, m in (("pairs", metrics), ("copy", metrics.get("copy") or {})):
        for method, a in (m.get("agreement") or {}).items():
            rows.append(
                {
                    "task": task,
                    "method": method,
                    "spearman vs exact": a.get("spearman"),
                    f"recall@{a.get('k', 20)}": a.get("recall_at_20"),
                    "edges verified": a.get("n_edges"),
                }
            )
    return pd.DataFrame(rows)


def _top_edges(edges: pd.DataFrame, n: int = 20) -> pd.DataFrame:
    """Each method's n edges with the largest |score|, largest first."""
    rows = pd.concat(
        [
            f.loc[f["effect"].abs().sort_values(ascending=False).index[:n]]
            for _, f in edges.groupby("method", sort=False)
        ]
    )
    columns = [c for c in ("method", "upstream", "downstream", "query_heads", "effect", "exact_effect") if c in rows]
    return rows[columns].reset_index(drop=True)


def _task_sections(run: ResultsDir, metrics: dict, prefix: str, label: str) -> list[Section]:
    tables = run.table_names()
    if f"{prefix}edges" not in tables:
        return []
    edges = run.load_table(f"{prefix}edges")
    n_layers = int(pd.to_numeric(edges["layer"], errors="coerce").max()) + 1
    sections = []
    for method in edges["method"].unique():
        frame = edges[edges["method"] == method]
        score = frame["exact_effect"].where(frame["exact_effect"].notna(), frame["effect"])
        top = frame.assign(effect=score).loc[score.abs().sort_values(ascending=False).index[:TOP_CIRCUIT_EDGES]]
        sections.append(
            Section(
                f"{label}: top circuit by {method}",
                text=f"The {len(top)} edges with the largest {method} scores, drawn with their exact effect where verified "
                f"(clean {_fmt(metrics.get('clean_metric'))}, corrupted {_fmt(metrics.get('corrupted_metric'))}).",
                figures=[circuit_figure(top, f"{label}: top {len(top)} edges by {method}", n_layers)],
            )
        )
    curves = run.load_table(f"{prefix}faithfulness").assign(split="insample")
    if f"{prefix}heldout_faithfulness" in tables:
        held = run.load_table(f"{prefix}heldout_faithfulness")
        curves = pd.concat([curves, held[held["split"] == "heldout"]], ignore_index=True)
    h = metrics.get("heldout_faithfulness") or {}
    sections.append(
        Section(
            f"{label}: faithfulness curves",
            text="Metric recovered by each method's top-n edges, every other edge carrying its corrupted sender. Dashed: in sample "
            "(the pairs that ranked the edges); solid: held out (edges ranked on "
            f"{h.get('n_rank_pairs', 'n/a')} pairs, curves on the other {h.get('n_eval_pairs', 'n/a')}).",
            figures=[curves_figure(curves, f"{label}: faithfulness")],
        )
    )
    sections.append(
        Section(
            f"{label}: top edges",
            text="Largest |score| per method; exact_effect where verified.",
            table=_top_edges(edges),
        )
    )
    if f"{prefix}nodes" in tables:
        nodes = run.load_table(f"{prefix}nodes")
        wide = nodes.pivot_table(index="node", columns="method", values="effect", aggfunc="first")
        gd = nodes[nodes["method"] == "atp+graddrop"].set_index("node")
        wide["graddrop_score"] = gd["score"]
        wide["bound"] = gd["bound"]
        wide = wide.reindex(wide["exact"].abs().sort_values(ascending=False).index).head(25).reset_index()
        b = (metrics.get("nodes") or {}).get("bound") or {}
        a = (metrics.get("nodes") or {}).get("agreement") or {}
        text = (
            "Per node (embeddings, heads, MLPs): the exact effect of patching its output to corrupted, AtP's estimate and AtP* GradDrop's "
            "score (a magnitude). Rank agreement with |exact| (Spearman, recall@k): "
            + "; ".join(f"{m} {_fmt(v.get('spearman'))}, {_fmt(v.get('recall_at_20'))}" for m, v in a.items())
            + f". False-negative bound after verifying the top {b.get('verify_top', 'n/a')}: largest unverified effect <= {_fmt(b.get('max_bound'))} "
            f"(true largest {_fmt(b.get('largest_unverified_exact'))}); the bound covers {b.get('covered', 'n/a')} of {b.get('n_unverified', 'n/a')} unverified nodes."
        )
        sections.append(Section(f"{label}: node scores (exact vs AtP vs GradDrop)", text=text, table=wide))
    return sections


@register_sections("circuit")
def circuit_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    sections = [
        Section(
            "Agreement with exact edge patching",
            text="Each approximate method's own top edges patched exactly: Spearman of the signed effects and recall@k of the "
            "largest exact effects among them (an edge a method misses entirely is not counted against it).",
            table=_agreement_table(m),
        ),
        *_task_sections(run, m, "", "Capital pairs"),
        *_task_sections(run, m.get("copy") or {}, "copy_", "In-context copy"),
    ]
    tables = run.table_names()
    if "planted_faithfulness" in tables:
        planted = run.load_table("planted_faithfulness")
        auc = "; ".join(
            f"{leak}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.get("auc", {}).items())
            for leak, r in (m.get("planted") or {}).items()
        )
        acdc = "; ".join(
            f"{leak}: {r['n_edges']} edges, {r['n_planted_found']}/{r['n_planted']} planted, {r['n_extra']} extra, recovered {_fmt(r['recovered'])}"
            for leak, r in (m.get("acdc") or {}).items()
        )
        figures = [
            curves_figure(planted[planted["leak"] == leak], f"Planted circuit (leak {leak:g}): faithfulness")
            for leak in sorted(planted["leak"].unique())
        ]
        table = run.load_table("planted_acdc") if "planted_acdc" in tables else None
        sections.append(
            Section(
                "Planted circuit: ground truth",
                text=f"ROC AUC of |score| separating the planted edges: {auc}. ACDC (tau {m.get('acdc', {}).get('leak=0', {}).get('tau', 'n/a')}): {acdc}. "
                "The table: ACDC's circuit, each edge's minimality drop (share of the gap lost when it alone is removed).",
                table=table,
                figures=figures,
            )
        )
    sections += _acdc_model_sections(run, m)
    sections += _sae_sections(run, m)
    return [*sections, *default_sections(run)]


def _acdc_model_sections(run: ResultsDir, metrics: dict) -> list[Section]:
    """ACDC inside the top EAP edges of the model, next to top-n EAP, held out and in sample."""
    a = metrics.get("acdc_model")
    if not a or "acdc_model" not in run.table_names():
        return []
    table = run.load_table("acdc_model")
    held = (a.get("recovered") or {}).get("heldout", {})
    text = (
        f"Greedy ACDC (tau {_fmt(a.get('tau'))} of the gap, one exact forward per test) inside the top {a.get('n_candidates')} "
        f"edges by EAP, every other edge ablated; edges chosen and pruned on {a.get('n_rank_pairs')} pairs, judged on the other "
        f"{a.get('n_eval_pairs')} (held out). ACDC keeps {a.get('n_edges')} edges ({a.get('n_tests')} tests); held out it recovers "
        f"{_fmt(held.get('acdc'))} of the gap, the top {a.get('n_edges')} edges by EAP {_fmt(held.get('eap top-n'))}, all "
        f"{a.get('n_candidates')} candidates {_fmt(held.get('candidates'))}, {a.get('n_edges')} candidates at random "
        f"{_fmt(held.get('random-n mean'))} (mean of 5 draws). Minimality: {a.get('n_unneeded')} kept edges cost less "
        "than tau when removed alone from the final circuit."
    )
    sections = [Section("ACDC on the model (restricted graph)", text=text, table=table)]
    if "acdc_model_circuit" in run.table_names():
        circuit = run.load_table("acdc_model_circuit")
        drawn = circuit.assign(effect=-circuit["drop"])
        n_layers = int(pd.to_numeric(circuit["layer"], errors="coerce").max()) + 1 if len(circuit) else 1
        sections.append(
            Section(
                "ACDC circuit",
                text="The edges ACDC kept; width: the share of the gap lost when the edge alone is removed (minimality drop).",
                table=circuit[[c for c in ("upstream", "downstream", "query_heads", "damage", "drop") if c in circuit]],
                figures=[circuit_figure(drawn, "ACDC circuit (edge width: minimality drop)", max(n_layers, 1))]
                if len(circuit)
                else [],
            )
        )
    return sections


def _sae_sections(run: ResultsDir, metrics: dict) -> list[Section]:
    """SAE-feature nodes: the site's latents and error node (exact vs EAP), and the top latents' corpus contexts."""
    s = metrics.get("sae")
    tables = run.table_names()
    if not s or "sae_nodes" not in tables:
        return []
    nodes = run.load_table("sae_nodes")
    latents = nodes[nodes["kind"] == "latent"]
    shown = pd.concat(
        [
            nodes[nodes["kind"] != "latent"],
            latents.loc[latents["exact"].abs().sort_values(ascending=False).index[:25]],
        ]
    )[["upstream", "kind", "latent", "exact", "eap"]]
    agreement = s.get("agreement") or {}
    text = (
        f"Node {s.get('node')} ({s.get('hook')}) replaced by the {s.get('d_sae')} latents of the SAE at {s.get('path')} plus one error "
        f"node; FVU {_fmt(s.get('fvu_corpus'))} on held-out corpus tokens, {_fmt(s.get('fvu_prompts'))} on the clean prompts. "
        f"{s.get('n_changed_latents')} latents change between the runs. Exact effect of patching the whole node "
        f"{_fmt(s.get('node_exact'))}, the error node alone {_fmt(s.get('error_exact'))} (share {_fmt(s.get('error_share_exact'))}), "
        f"all latents together {_fmt(s.get('latents_exact'))}; under EAP the error's share is {_fmt(s.get('error_share_eap'))}. "
        f"Latent EAP vs exact: Spearman {_fmt(agreement.get('spearman'))}, recall@{agreement.get('k', 20)} {_fmt(agreement.get('recall_at_20'))}."
    )
    sections = [
        Section(f"SAE-feature nodes at {s.get('node')}: exact vs EAP", text=text, table=shown.reset_index(drop=True))
    ]
    if "sae_contexts" in tables:
        contexts = run.load_table("sae_contexts")
        sections.append(
            Section(
                f"SAE-feature nodes at {s.get('node')}: top-activating corpus contexts",
                text=f"Per latent (largest |exact effect| first), its top-activating contexts over {s.get('context_tokens')} corpus "
                "tokens (sae.latent_pass); the token where it fires most in brackets.",
                table=contexts[["node", "exact", "eap", "density", "activation", "context"]],
            )
        )
    return sections
