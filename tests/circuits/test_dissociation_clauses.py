"""The double-dissociation rules on hand-built tables where each clause fails alone (issue 22).

Quantiles, p values and CIs are computed here by hand (linear-interpolation quantile, the empirical-p
formula, a normal-theory bootstrap width), and the tables are built so that taking a quantile from
the wrong task or set size, or dropping any one clause, flips a verdict. The sentence and the
dashboard summary read from the same tables must say the same thing.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from circuits.recall_reasoning.verdicts import held_out_verdict, verdict_text, verdicts
from circuits.recall_reasoning.pipeline import verdict_text as held_out_text
from dashboards.summaries import summarise
from interp.results import ResultsDir

# ---- the table rule (verdicts.verdicts): recall set of 3 units, reasoning set of 5 --------------

R_SIZE, Q_SIZE, N_RANDOM = 3, 5, 20
RANDOM_BASE = {
    ("recall", R_SIZE): 0.10,
    ("reasoning", R_SIZE): 0.20,
    ("recall", Q_SIZE): 0.30,
    ("reasoning", Q_SIZE): 0.05,
}


def q975(base: float) -> float:
    """97.5th percentile (linear interpolation) of base + 0.001 * (0..19), by hand: position 0.975 * 19 = 18.525."""
    return base + 0.001 * (18 + 0.525)


Q_R3, Q_Q3, Q_R5, Q_Q5 = (
    q975(RANDOM_BASE[k]) for k in (("recall", 3), ("reasoning", 3), ("recall", 5), ("reasoning", 5))
)


def table(recall_set: tuple[float, float], reasoning_set: tuple[float, float]) -> pd.DataFrame:
    """Drops (on recall, on reasoning) of each chosen set; random sets of each size with distinct drops per task."""
    rows = [
        dict(method="mean", ablated="none", set_index=-1, set_size=0, task=t, drop=0.0) for t in ("recall", "reasoning")
    ]
    rows += [
        dict(method="mean", ablated="recall_set", set_index=-1, set_size=R_SIZE, task=t, drop=d)
        for t, d in zip(("recall", "reasoning"), recall_set)
    ]
    rows += [
        dict(method="mean", ablated="reasoning_set", set_index=-1, set_size=Q_SIZE, task=t, drop=d)
        for t, d in zip(("recall", "reasoning"), reasoning_set)
    ]
    for (task, size), base in RANDOM_BASE.items():
        rows += [
            dict(
                method="mean",
                ablated=f"random_{size}",
                set_index=i,
                set_size=size,
                task=task,
                drop=base + 0.001 * ((7 * i) % N_RANDOM),
            )
            for i in range(N_RANDOM)
        ]
    return pd.DataFrame(rows)


# (recall set's drops on recall, reasoning), (reasoning set's drops on recall, reasoning), expected clauses
CASES = {
    # every clause holds, each with a margin that a quantile of another task or set size would not give
    "all_hold": ((0.20, 0.15), (0.25, 0.35), dict(recall=True, reasoning=True, no_cross=True)),
    "recall_below_its_baseline": ((0.11, 0.05), (0.25, 0.35), dict(recall=False, reasoning=True, no_cross=True)),
    "recall_set_hurts_reasoning_more": ((0.20, 0.21), (0.25, 0.35), dict(recall=False, reasoning=True, no_cross=True)),
    "reasoning_below_its_baseline": ((0.20, 0.15), (0.05, 0.06), dict(recall=True, reasoning=False, no_cross=True)),
    "reasoning_set_hurts_recall_more": ((0.20, 0.15), (0.31, 0.30), dict(recall=True, reasoning=False, no_cross=True)),
    "recall_set_cross_effect": ((0.30, 0.22), (0.25, 0.35), dict(recall=True, reasoning=True, no_cross=False)),
    "reasoning_set_cross_effect": ((0.20, 0.15), (0.32, 0.35), dict(recall=True, reasoning=True, no_cross=False)),
    "reasoning_just_above_its_baseline": ((0.20, 0.15), (0.05, 0.10), dict(recall=True, reasoning=True, no_cross=True)),
}


def test_hand_quantiles_separate_the_cases():
    # the cases sit between the right quantile and every wrong one
    assert 0.06 < Q_Q5 < 0.10 and 0.11 < Q_R3 < 0.15 and 0.21 < Q_Q3 < 0.22 and 0.31 < Q_R5 < 0.32
    assert np.quantile(np.array([RANDOM_BASE["recall", 3] + 0.001 * i for i in range(20)]), 0.975) == pytest.approx(
        Q_R3
    )


@pytest.mark.parametrize("case", list(CASES))
def test_each_clause_of_the_table_rule_fails_alone(case):
    recall_set, reasoning_set, want = CASES[case]
    row = verdicts(table(recall_set, reasoning_set), R_SIZE, Q_SIZE).iloc[0]
    got = dict(
        recall=row["recall_set_specific"], reasoning=row["reasoning_set_specific"], no_cross=row["no_cross_effect"]
    )
    assert got == want
    assert row["double_dissociation"] == all(want.values())
    assert row["random_recall_drop_q975"] == pytest.approx(Q_R3) and row["random_reasoning_drop_q975"] == pytest.approx(
        Q_Q5
    )
    # p: (1 + #random sets of the recall set's size dropping recall at least as much) / 21
    expected_p = (1 + sum(RANDOM_BASE["recall", R_SIZE] + 0.001 * i >= recall_set[0] for i in range(20))) / 21
    assert row["p_recall_set"] == pytest.approx(expected_p)
    text = verdict_text(row, "M")
    assert text.startswith(
        "M shows a double dissociation" if all(want.values()) else "M does NOT show a double dissociation"
    )
    assert f"the recall set drops recall accuracy by {recall_set[0]:.3f} and reasoning by {recall_set[1]:.3f}" in text
    assert f"the reasoning set drops reasoning by {reasoning_set[1]:.3f} and recall by {reasoning_set[0]:.3f}" in text


def test_an_empty_set_is_never_specific():
    row = verdicts(table(*CASES["all_hold"][:2]), 0, Q_SIZE).iloc[0]
    assert not row["recall_set_specific"] and row["reasoning_set_specific"] and not row["double_dissociation"]


@dataclass(frozen=True)
class HandBuilt:
    case: str


# ---- the held-out rule (verdicts.held_out_verdict): p own, p selectivity per set, CI of the interaction ----

N_ITEMS, N_R = 40, 39  # p resolution 1/40: one random set at least as extreme gives p = 2/40 = alpha, not below it


def correctness(recall_set, reasoning_set, random_recall, random_reasoning) -> dict[str, np.ndarray]:
    """[conditions, items] correctness: none, recall set, reasoning set, 39 + 39 random sets. Each condition is given by its
    drops (on recall, on reasoning); a drop of d breaks the first round(40 d) items (offset per condition so they differ)."""
    conditions = [(0.0, 0.0), recall_set, reasoning_set, *random_recall, *random_reasoning]
    correct = {task: np.ones((len(conditions), N_ITEMS), dtype=bool) for task in ("recall", "reasoning")}
    for c, drops in enumerate(conditions):
        for t, (task, d) in enumerate(zip(("recall", "reasoning"), drops)):
            broken = int(round(d * N_ITEMS))
            start = (c * 7 + t * 20) % N_ITEMS
            correct[task][c, [(start + j) % N_ITEMS for j in range(broken)]] = False
    return correct


def held_out(recall_set, reasoning_set, random_recall=None, random_reasoning=None):
    random_recall = random_recall or [(0.1, 0.1)] * N_R
    random_reasoning = random_reasoning or [(0.1, 0.1)] * N_R
    c = correctness(recall_set, reasoning_set, random_recall, random_reasoning)
    return c, held_out_verdict(c, {"recall_set": N_R, "reasoning_set": N_R}, alpha=0.05, n_boot=2000, seed=3)


def one_extreme(drops):
    return [drops] + [(0.1, 0.1)] * (N_R - 1)


HELD_OUT_CASES = {  # drops are (on recall, on reasoning); selectivity of each chosen set 0.25
    "all_hold": dict(args=((0.5, 0.25), (0.25, 0.5)), p=(1, 1, 1, 1), specific=(True, True), ci_above_0=True),
    "recall_own_drop_matched_by_a_random_set": dict(
        args=((0.5, 0.25), (0.25, 0.5), one_extreme((0.5, 0.5))),
        p=(2, 1, 1, 1),
        specific=(False, True),
        ci_above_0=True,
    ),
    "recall_selectivity_matched_by_a_random_set": dict(
        args=((0.5, 0.25), (0.25, 0.5), one_extreme((0.3, 0.0))),
        p=(1, 2, 1, 1),
        specific=(False, True),
        ci_above_0=True,
    ),
    "reasoning_own_drop_matched_by_a_random_set": dict(
        args=((0.5, 0.25), (0.25, 0.5), None, one_extreme((0.5, 0.5))),
        p=(1, 1, 2, 1),
        specific=(True, False),
        ci_above_0=True,
    ),
    "reasoning_selectivity_matched_by_a_random_set": dict(
        args=((0.5, 0.25), (0.25, 0.5), None, one_extreme((0.0, 0.3))),
        p=(1, 1, 1, 2),
        specific=(True, False),
        ci_above_0=True,
    ),
    # both sets beat random sets that hurt the other task much more, but their own selectivity is ~0: the CI spans 0
    "interaction_ci_spans_zero": dict(
        args=((0.1, 0.075), (0.1, 0.1), [(0.0, 0.5)] * N_R, [(0.5, 0.0)] * N_R),
        p=(1, 1, 1, 1),
        specific=(True, True),
        ci_above_0=False,
    ),
}


@pytest.mark.parametrize("case", list(HELD_OUT_CASES))
def test_each_clause_of_the_held_out_rule_fails_alone(case, tmp_path):
    spec = HELD_OUT_CASES[case]
    correct, out = held_out(*spec["args"])
    p = (
        out["recall_set_p_own"],
        out["recall_set_p_selectivity"],
        out["reasoning_set_p_own"],
        out["reasoning_set_p_selectivity"],
    )
    assert p == pytest.approx(tuple(k / 40 for k in spec["p"]))
    assert (out["recall_set_specific"], out["reasoning_set_specific"]) == spec["specific"]
    low, high = out["interaction_ci95"]
    assert (low > 0) == spec["ci_above_0"]
    assert out["double_dissociation"] == (all(spec["specific"]) and spec["ci_above_0"])
    # the percentile-bootstrap CI against its normal approximation: the interaction is a difference of item means
    u_recall = correct["recall"][2].astype(float) - correct["recall"][1]  # (selectivity terms on recall items)
    u_reasoning = correct["reasoning"][1].astype(float) - correct["reasoning"][2]
    se = np.sqrt(u_recall.var() / N_ITEMS + u_reasoning.var() / N_ITEMS)
    assert out["interaction"] == pytest.approx(u_recall.mean() + u_reasoning.mean())
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.15) and (low + high) / 2 == pytest.approx(
        out["interaction"], abs=0.2 * se + 1e-12
    )
    # the sentence and the dashboard's summary say the same as the rule
    text = held_out_text(out, "M", "mean")
    assert text.startswith(
        "M shows a double dissociation" if out["double_dissociation"] else "M does NOT show a double dissociation"
    )
    assert f"interaction {out['interaction']:.3f} (95% item-bootstrap CI {low:.3f}..{high:.3f})" in text
    run = ResultsDir.create(tmp_path / case, HandBuilt(case), analysis="recall_reasoning", title="hand-built")
    run.write_metrics({**out, "verdict_method": "mean", "verdict": text})
    summary = summarise(run)
    assert summary.verdict.startswith(
        "double dissociation: yes" if out["double_dissociation"] else "double dissociation: no"
    ), summary.verdict
    assert f"interaction {out['interaction']:.2f}, 95% CI [{low:.2f}, {high:.2f}]" in summary.headline
