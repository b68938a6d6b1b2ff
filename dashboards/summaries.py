"""What each investigation found, in words: one Summary per results dir (headline numbers and a verdict).

The index page and the terminal table at the end of `make demo` list one Summary per run, and each
dashboard opens with its "what this shows" paragraph and verdict. A summary reads only the run's
metrics.json (and its tables), so it works on any results dir, old or new; a missing key reads as
"not measured" rather than failing the page.

    @register_summary("my_analysis")
    def my_summary(run: ResultsDir) -> Summary:
        m = run.metrics()
        return Summary("My analysis", f"effect {m['effect']:.2f}", "holds" if m["effect"] > 0 else "does not hold", "What the analysis measures.")
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from dashboards.sections import _Builders, register_builder
from interp.results import ResultsDir


@dataclass(frozen=True)
class Summary:
    investigation: str  # the row's name
    headline: str  # the number(s) that matter, with their units
    verdict: str  # the answer in words
    about: str  # "what this shows": one short paragraph for someone who has not read the paper
    caveat: str = ""  # e.g. "quick run: under-trained"


SummaryBuilder = Callable[[ResultsDir], Summary]
SUMMARIES: MutableMapping[str, SummaryBuilder] = _Builders("summary")  # a view of dashboards.sections.PAGES


def register_summary(analysis: str) -> Callable[[SummaryBuilder], SummaryBuilder]:
    """Decorator: the decorated function summarises runs whose config.json says this analysis."""
    return register_builder("summary", analysis, "register_summary")


def get(metrics: dict, *path: str, default=None):
    """metrics[path[0]][path[1]]..., or default where any step is missing."""
    value = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def num(value, fmt: str = ".2f") -> str:
    """A number for a sentence; 'n/a' for None/NaN/non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "n/a"
    return format(value, fmt)


def yes_no(value) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def summarise(run: ResultsDir) -> Summary:
    """The run's Summary: its analysis's builder, or a generic one (title and the first metrics)."""
    builder = SUMMARIES.get(run.analysis)
    if builder is None:
        metrics = run.metrics()
        shown = ", ".join(
            f"{k} = {num(v, '.4g') if isinstance(v, float) else v}"
            for k, v in list(metrics.items())[:3]
            if not isinstance(v, (dict, list))
        )
        return Summary(run.title, shown or "no metrics", "no verdict defined for this analysis", "")
    try:
        return builder(run)
    except (
        KeyError,
        TypeError,
        ValueError,
        IndexError,
    ) as error:  # an old or partial run: say so instead of failing the page
        return Summary(run.title, "metrics incomplete", f"cannot summarise ({type(error).__name__}: {error})", "")


def _quick_caveat(run: ResultsDir) -> str:
    metrics = run.metrics()
    if metrics.get("undertrained") or metrics.get("under_trained") or run.record().get("config", {}).get("quick"):
        return "quick settings: under-trained, numbers indicative only"
    return ""


@register_summary("activation_patching")
def _patching(run: ResultsDir) -> Summary:
    m = run.metrics()
    parts = []
    if top := m.get("heads_top"):
        parts.append(
            f"top head L{top['layer']}H{top['head']} restores {num(top['restoration'])} of the logit difference"
        )
    if top := m.get("resid_pre_top"):
        parts.append(
            f"residual stream at layer {top['layer']}, position {top.get('position', '?')} restores {num(top['restoration'])}"
        )
    agreement = {k.removesuffix("_atp_agreement"): v for k, v in m.items() if k.endswith("_atp_agreement")}
    if agreement:
        overlap = lambda a: next((v for k, v in a.items() if k.endswith("_overlap")), None)  # noqa: E731 - top{k}_overlap, k = min(10, units)
        parts.append(
            "AtP vs exact: "
            + "; ".join(
                f"{sweep} r = {num(a.get('pearson_r'))}, top-10 overlap {num(overlap(a))}"
                for sweep, a in agreement.items()
            )
        )
        good = all((a.get("pearson_r") or 0) >= 0.9 for a in agreement.values())
        verdict = f"AtP {'agrees with' if good else 'departs from'} exact patching (Pearson r {'>=' if good else '<'} 0.9 on every sweep)"
    else:
        verdict = f"method: {m.get('method', 'exact')}"
    return Summary(
        "Activation patching",
        "; ".join(parts),
        verdict,
        f"Patch each activation from a clean prompt into a corrupted one ({m.get('n_pairs', '?')} capital-city pairs) and measure the share of the "
        "logit difference it restores (1 = all of it). Exact batched patching beside attribution patching (AtP), a one-pass linear estimate.",
    )


@register_summary("sae")
def _sae(run: ResultsDir) -> Summary:
    m = run.metrics()
    return Summary(
        "Sparse autoencoder (TopK)",
        f"L0 {num(m.get('l0'), '.0f')}, FVU {num(m.get('fvu'), '.3f')}, CE loss recovered {num(m.get('ce_loss_recovered'), '.3f')}, dead {num(m.get('dead_fraction'), '.1%')} "
        f"(d_sae {m.get('d_sae')}, {m.get('site')}, {m.get('train_tokens_seen', 0):,} training rows)",
        f"splicing the SAE in keeps {num(100 * m['ce_loss_recovered'], '.1f') if isinstance(m.get('ce_loss_recovered'), (int, float)) else 'n/a'}% of the model's next-token loss "
        "(relative to zero-ablating the site)",
        "A TopK sparse autoencoder trained on the model's residual stream over the default corpus, evaluated on held-out text: "
        "L0 (active latents per token), FVU (fraction of variance unexplained) and CE loss recovered when its reconstruction replaces the activation.",
        _quick_caveat(run),
    )


@register_summary("dark_matter")
def _dark_matter(run: ResultsDir) -> Summary:
    m = run.metrics()
    widths, norm_r2 = m.get("widths", []), m.get("norm_r2", [])
    nonlinear = m.get("fvu_sae_plus_linear", [])
    headline = []
    if widths and norm_r2:
        headline.append(
            f"norm R^2 of the SAE error from x: {num(norm_r2[0])} (width {widths[0]}) to {num(norm_r2[-1])} (width {widths[-1]})"
        )
    if widths and nonlinear:
        headline.append(f"nonlinear FVU {num(nonlinear[0], '.3f')} to {num(nonlinear[-1], '.3f')}")
    grid = [
        row
        for row in m.get("norm_r2_grid", [])
        if isinstance(row.get("norm_r2"), (int, float)) and row.get("status", "done") == "done"
    ]
    judged = None
    if grid:  # the regime closest to the paper's: most early positions dropped, SAEs trained to convergence, widest
        closest = [r for r in grid if r.get("training") == "converged" or r.get("converged")] or grid
        drop = max(r.get("positions_dropped", 0) for r in closest)
        closest = [r for r in closest if r.get("positions_dropped", 0) == drop]
        judged = max(closest, key=lambda r: (r.get("width", 0), r["norm_r2"]))
        headline.append(
            f"closest to the paper (width {judged.get('width')}, k {judged.get('k')}, first {drop} positions dropped, {judged.get('training', 'trained')}): "
            f"norm R^2 {num(judged['norm_r2'], '.3f')} [{num(judged.get('ci_low'), '.3f')}, {num(judged.get('ci_high'), '.3f')}]"
        )
    if judged is not None:
        low = judged.get("ci_low") if isinstance(judged.get("ci_low"), (int, float)) else judged["norm_r2"]
        verdict = f"paper's 'SAE error norm linearly predictable (R^2 > 0.9)': {'holds' if low > 0.9 else 'not reproduced'} in the regime closest to the paper"
    else:
        best = max(norm_r2) if norm_r2 else None
        verdict = f"paper's 'SAE error norm linearly predictable (R^2 > 0.9)': {'holds' if best is not None and best > 0.9 else 'not reproduced'} here"
    return Summary(
        "Dark matter of SAE error",
        "; ".join(headline) or "n/a",
        verdict,
        "How much of a sparse autoencoder's error is linearly predictable from the activation it reconstructs (the 'linear' part) "
        "and how much is not ('nonlinear dark matter'), across SAE widths (Engels et al. 2024).",
        _quick_caveat(run),
    )


@register_summary("recall_reasoning")
def _recall_reasoning(run: ResultsDir) -> Summary:
    m = run.metrics()
    method = m.get("verdict_method", "mean")
    by = get(m, "by_method", method, default={}) or m
    value = lambda key: by.get(key, m.get(key))  # noqa: E731 - per-method value, else the headline one
    dissociation = value("double_dissociation")
    resolution = value("p_resolution")
    if (
        value("recall_set_selectivity") is not None
    ):  # held-out selectivity statistic (own-task drop - cross-task drop) against matched random sets
        ci = value("interaction_ci95") or [None, None]
        headline = (
            f"selectivity (own - cross drop) of the recall set {num(value('recall_set_selectivity'))} (p {num(value('recall_set_p_selectivity'), '.3f')}), "
            f"of the reasoning set {num(value('reasoning_set_selectivity'))} (p {num(value('reasoning_set_p_selectivity'), '.3f')}); "
            f"interaction {num(value('interaction'))}, 95% CI [{num(ci[0])}, {num(ci[1])}]"
        )
        controls = [
            f"{label} {num(m[key], '.2f')}"
            for key, label in (
                ("planted_detection_rate", "planted circuit found in"),
                ("shuffled_detection_rate", "shuffled labels 'found' in"),
            )
            if isinstance(m.get(key), (int, float))
        ]
        if controls:
            headline += "; controls: " + ", ".join(controls) + " of seeds"
        p_text = f"p resolution {num(resolution, '.3f')}" if resolution is not None else "p resolution n/a"
    else:  # an older run: accuracies and the random-set p values
        headline = (
            f"recall set: recall acc {num(value('recall_acc_after_recall_ablation'))} / reasoning {num(value('reasoning_acc_after_recall_ablation'))}; "
            f"reasoning set: recall {num(value('recall_acc_after_reasoning_ablation'))} / reasoning {num(value('reasoning_acc_after_reasoning_ablation'))} "
            f"(base {num(m.get('recall_acc_base'))} / {num(m.get('reasoning_acc_base'))})"
        )
        p = [v for v in (value("p_recall_set"), value("p_reasoning_set")) if v is not None]
        p_text = f"p = {', '.join(num(x, '.3f') for x in p)}" if p else "p n/a"
    return Summary(
        "Recall vs reasoning circuits",
        headline,
        f"double dissociation: {yes_no(dissociation)} ({method} ablation, held-out items, {p_text})",
        "Locate the components a factual-recall task needs and those a reasoning task needs (on one half of the items), ablate each set, and ask "
        "on the other half whether each hurts its own task more than the other task, and more than random sets of the same make-up do (a double dissociation).",
        _quick_caveat(run),
    )


@register_summary("scan_snap")
def _scan_snap(run: ResultsDir) -> Summary:
    m = run.metrics()
    verdicts = m.get("verdicts", {})
    held = [k for k, v in verdicts.items() if v]
    failed = [k for k, v in verdicts.items() if not v]
    headline = f"{len(held)} of {len(verdicts)} predictions hold"
    if failed:
        headline += f"; not: {', '.join(name.replace('_', ' ') for name in failed[:3])}" + (
            f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        )
    return Summary(
        "Scan and snap (1-layer attention dynamics)",
        headline,
        "all of the paper's predictions hold"
        if verdicts and not failed
        else f"{len(failed)} prediction(s) fail (see the page)",
        "Train one layer of attention on sequence classes and check Tian et al.'s (2023) predictions: attention first scans, "
        "shifting weight from common to distinctive tokens, then snaps (freezes) once the loss is small.",
        _quick_caveat(run),
    )


@register_summary("circuit")
def _circuit(run: ResultsDir) -> Summary:
    m = run.metrics()
    agreement = m.get("agreement", {})
    parts = [
        f"{method.upper()} Spearman {num(a.get('spearman'))}, recall@{a.get('k', 20)} {num(a.get('recall_at_20'))}"
        for method, a in agreement.items()
    ]
    curve = get(m, "faithfulness", "eap", default={}) or {}
    if curve:
        largest = max(curve, key=int)
        held = get(m, "heldout_faithfulness", "heldout", "eap", default={}) or {}
        held_text = f" (held-out pairs: {num(held[largest])})" if largest in held else ""
        parts.append(f"top {largest} EAP edges recover {num(curve[largest])} of the metric{held_text}")
    auc = m.get("planted_auc") or {}
    worst = min((a.get("spearman") for a in agreement.values() if isinstance(a.get("spearman"), float)), default=None)
    verdict = (
        "the approximate scores track exact edge patching on the edges they rank highest"
        if worst is not None and worst >= 0.9
        else "an approximate score disagrees with exact patching: check the top edges exactly"
    )
    if auc:
        verdict += "; planted circuit recovered: AUC " + ", ".join(f"{k} {num(v)}" for k, v in auc.items())
    return Summary(
        "Circuit discovery (edge attribution)",
        "; ".join(parts) or "no agreement measured",
        verdict,
        "Score every edge of the model's computation graph (embeddings, heads' q/k/v inputs, MLPs, logits) by how much "
        "patching it from a corrupted prompt changes the answer: EAP and EAP-IG from gradients, checked by exact edge patching.",
        _quick_caveat(run),
    )


@register_summary("reachability")
def _reachability(run: ResultsDir) -> Summary:
    m = run.metrics()
    acc = {k: m.get(f"acc_{k}") for k in ("continuous", "discrete_cot", "no_cot")}
    headline = f"held-out accuracy: continuous thought {num(acc['continuous'])}, discrete CoT {num(acc['discrete_cot'])}, no CoT {num(acc['no_cot'])}"
    if "construction_acc" in m:
        headline += f"; hand-set construction {num(m['construction_acc'])}"
    diff, z = m.get("continuous_minus_discrete"), m.get("continuous_minus_discrete_z", m.get("z"))
    if diff is None and None not in (acc["continuous"], acc["discrete_cot"]):
        diff = acc["continuous"] - acc["discrete_cot"]
    verdict = f"continuous beats discrete CoT: {yes_no(diff is not None and diff >= 0.05 and (z is None or z > 3))} (difference {num(diff)}{', z = ' + num(z, '.1f') if z is not None else ''})"
    return Summary(
        "Continuous chain of thought on graph reachability",
        headline,
        verdict,
        "Small transformers answer 'is node X reachable from the root?' with continuous thoughts (hidden states fed back), "
        "discrete chain-of-thought tokens, or no chain of thought; probes ask whether each thought holds the whole search frontier at once.",
        _quick_caveat(run),
    )
