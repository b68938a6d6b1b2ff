"""Dashboard page of a recall-vs-reasoning run (config.json analysis = "recall_reasoning")."""

from __future__ import annotations

from dashboards.sections import Section, default_sections, register_sections
from interp.results import ResultsDir

_NOT_RECORDED = "(not recorded in this run's metrics.json: a run from before the method text was saved)"


def _method_text(m: dict, key: str) -> str:
    """The set rule / design text the run recorded (circuits.recall_reasoning's SET_RULE and DESIGN when it ran)."""
    return m.get("method_text", {}).get(key, _NOT_RECORDED)


_LIST_COLUMNS = ["random_recall_drop_ci95", "random_reasoning_drop_ci95"]


def _display(table):
    """Lists and dicts as text, so the table renders."""
    return table.drop(columns=[c for c in _LIST_COLUMNS if c in table]).assign(
        **{
            c: table[c].map(lambda v: ", ".join(map(str, v)) if hasattr(v, "__len__") and not isinstance(v, str) else v)
            for c in table.columns
            if table[c].dtype == object
        }
    )


def _subset_text(m: dict) -> str:
    parts = [
        f"Construct validity: {m.get('reasoning_answer_in_prompt_fraction', float('nan')):.2f} of the evaluated reasoning items "
        f"({m.get('reasoning_answer_in_prompt_fraction_all', float('nan')):.2f} of all built ones) have their answer verbatim in the prompt, so an "
        "in-context copy head could answer them."
    ]
    if "no_copy" in m:
        parts.append(
            f"On the {m.get('n_reasoning_no_copy_evaluation', 0)} evaluated reasoning items whose answer is not in the prompt (the *_no_copy "
            f"families: an in-context binding, then a recalled fact): {m['no_copy']['verdict']}"
        )
    if "copy" in m:
        parts.append(f"On the reasoning items whose answer is in the prompt: {m['copy']['verdict']}")
    return " ".join(parts)


def _reference_text(m: dict) -> str:
    """Where mean / resample took their values from, and how much the chosen sets' drops depend on which prompts the reference cells hold."""
    if m.get("reference") != "template":
        return (
            f"References: {m['reference'].replace('_', ' ')} (one reference per token length)."
            if "reference" in m
            else ""
        )
    text = (
        f"References: each evaluated item's own template and token length, prompts about non-evaluated entities only ({m['reference_cells']} cells, "
        f"{m['reference_cell_min']}-{m['reference_cell_max']} prompts each, median {m['reference_cell_median']:.0f}; cells below "
        f"{m['min_reference_prompts']} dropped {m.get('n_recall_no_reference', 0)} recall and {m.get('n_reasoning_no_reference', 0)} reasoning items)."
    )
    if "reference_half_max_abs_drop_change" in m:
        text += (
            f" With either random half of every cell instead of the whole cell, the chosen sets' drops move by at most "
            f"{m['reference_half_max_abs_drop_change']:.3f} (mean {m['reference_half_mean_abs_drop_change']:.3f})."
        )
    return text


def _model_sections(run: ResultsDir, m: dict, prefix: str, label: str) -> list[Section]:
    figures = set(run.figure_names())
    named = lambda *names: [f"{prefix}{n}" for n in names if f"{prefix}{n}" in figures]  # noqa: E731
    verdicts = run.load_table(f"{prefix}verdicts")
    counts = (
        f"{m['n_recall_items']} recall and {m['n_reasoning_items']} reasoning items answered correctly before any intervention "
        f"({m['n_recall_dropped']} and {m['n_reasoning_dropped']} dropped). Base accuracy against same-type distractors: recall {m['recall_acc_base']:.3f}, "
        f"reasoning {m['reasoning_acc_base']:.3f}; by first token (top-1): {m['recall_acc_first_token_base']:.3f} and {m['reasoning_acc_first_token_base']:.3f}."
    )
    held_out = (
        f"Held-out design: {m.get('n_recall_localisation', '?')} recall / {m.get('n_reasoning_localisation', '?')} reasoning items chose the sets, "
        f"{m.get('n_recall_evaluation', '?')} / {m.get('n_reasoning_evaluation', '?')} other items (other entities) judged them. {_reference_text(m)} {_method_text(m, 'design')}"
    )
    sections = [
        Section(f"{label}: verdict", text=f"{m['verdict']} {counts}", table=_display(verdicts)),
        Section(
            f"{label}: dissociation matrix",
            text="Accuracy drop on the held-out items of each task (columns) after ablating each chosen set (rows), "
            "with 95% item-bootstrap intervals; one matrix per ablation method (mean is the headline). " + held_out,
            figures=named(*[f"matrix_{x}" for x in ("mean", "zero", "resample")]),
        ),
        Section(
            f"{label}: matched random sets",
            text="Each chosen set against its matched random sets (same number of heads / MLP layers / neurons, same layer band, "
            "units outside the set): histograms of their own-task drop and selectivity (own - cross drop); the red line is the chosen set. "
            "Empirical p = (1 + #random >= chosen) / (1 + #random).",
            figures=named(*[f"random_{x}" for x in ("mean", "zero", "resample")]),
        ),
        Section(f"{label}: construct validity", text=_subset_text(m)),
        Section(
            f"{label}: accuracy after ablation",
            text="Bars: accuracy (against same-type distractors) with binomial standard errors; random sets: the mean over sets, "
            "error bars spanning 95% of the sets.",
            figures=named("accuracy"),
        ),
        Section(
            f"{label}: patching per task",
            text="Restoration of the logit difference when one unit (a head's z at every position, or a whole MLP layer) is patched clean -> corrupted.",
            figures=named("units_recall", "units_reasoning", "positions_recall", "positions_reasoning"),
        ),
        Section(
            f"{label}: the recall and reasoning sets",
            text=f"Recall set: {', '.join(m['recall_set']) or 'empty'}. Reasoning set: {', '.join(m['reasoning_set']) or 'empty'}. Rule: {_method_text(m, 'set_rule')}",
            figures=named("sets"),
        ),
    ]
    if "neurons" in m:
        n = m["neurons"]
        sections.append(
            Section(
                f"{label}: MLP neuron sets",
                text=f"{n['verdict']} Recall neuron set: {', '.join(n['recall_set']) or 'empty'}. "
                f"Reasoning neuron set: {', '.join(n['reasoning_set']) or 'empty'}. Neurons (mlp.hook_post) are estimated by AtP, the top candidates "
                "of each task patched exactly, and the sets chosen by the same rule as the head/MLP-layer sets; random baselines are neuron sets of the same size.",
                table=_display(run.load_table(f"{prefix}neuron_verdicts")),
                figures=named(
                    "neuron_matrix_mean", "neuron_random_mean", "neuron_accuracy", "neurons_recall", "neurons_reasoning"
                ),
            )
        )
    if f"{prefix}screen_summary" in run.table_names():
        sections.append(
            Section(
                f"{label}: correlational screen",
                text="Mann-Whitney U, Benjamini-Hochberg, Cohen's d at the last token; 'length_matched' pads recall prompts with neutral filler to the reasoning prompts' lengths.",
                table=run.load_table(f"{prefix}screen_summary"),
                figures=named("screen"),
            )
        )
    return sections


@register_sections("recall_reasoning")
def recall_reasoning_sections(run: ResultsDir) -> list[Section]:
    m = run.metrics()
    sections = _model_sections(run, m, "", m.get("model", "model"))
    if "synthetic" in m:
        sections += _model_sections(run, m["synthetic"], "synthetic_", "Synthetic model")
        s = m["synthetic"]
        held_out = (
            (
                f"Held-out accuracy (top-1): recall {s['held_out_recall_acc']:.3f} on every memorised fact, 2-hop reasoning {s['held_out_reasoning_acc']:.3f} "
                f"and 1-hop lookup {s['held_out_lookup_acc']:.3f} on 1,024 new problems each; {s['seconds_training']:.0f} s of training. "
            )
            if "held_out_recall_acc" in s
            else ""
        )
        sections.append(
            Section(
                "Synthetic model: training",
                text=held_out + "Curves: accuracy on each training batch.",
                figures=["synthetic_training"],
            )
        )
    if "controls" in m:
        c = m["controls"]
        text = (
            f"Positive control (facts planted in one MLP of an attention-only 2-hop reasoner): the dissociation was declared in {c['planted_detections']} of "
            f"{c['planted_n_seeds']} seeds (rate {c['planted_detection_rate']:.2f}, 95% CI {c['planted_detection_ci95'][0]:.2f}..{c['planted_detection_ci95'][1]:.2f}). "
            f"Negative control (the same items, task labels shuffled): {c['shuffled_detections']} of {c['shuffled_n_seeds']} "
            f"(rate {c['shuffled_detection_rate']:.2f}). See circuits/recall_reasoning/controls.py."
        )
        sections.append(
            Section(
                "Controls: planted circuit and shuffled labels",
                text=text,
                table=_display(run.load_table("controls")),
                figures=["controls"],
            )
        )
    return [*sections, *default_sections(run)]
