"""The scan-and-snap verdict logic on hand-built tables: a base where every prediction holds, then each
clause broken alone (only its row may flip), and the thresholds at their boundary. Expected numbers are
computed here by hand or with numpy, never by the functions under test."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from circuits.scan_snap.predictions import (
    DRIFT_AFTER_SNAP_MAX,
    FIGURE4_REL_ERROR_MAX,
    FIGURE6_GAP_MAX,
    FIGURE6_Z_MAX,
    KENDALL_TAU_MIN,
    LOG_EXPONENT_MAX,
    MONOTONE_RISE_MAX,
    SNAP_SPREAD_MAX,
    TREND_FRACTION_MIN,
    _trend_fraction,
    common_mass_verdicts,
    entropy_sweep,
    figure4_verdict,
    figure6_comparison,
    figure6_seed_spread,
    figure6_verdicts,
    final_common_mass,
    paired_bootstrap_ci,
    theorem3_verdicts,
    verdicts,
)


def verdict_of(rows) -> dict[str, bool]:
    return {row[0]: bool(row[-1]) for row in rows}


def value_of(rows) -> dict[str, float]:
    return {row[0]: row[2] for row in rows}


# ---- common_mass_verdicts ----


def mass_table(changes: dict | None = None) -> pd.DataFrame:
    """Three eta_Y x four seeds where every common-mass prediction holds: the snap comes earlier and the frozen
    mass is higher at larger eta_Y (in every seed), the mass never rises, barely drifts, and every run snapped."""
    rows = []
    for e, eta in enumerate((1.0, 2.0, 5.0)):
        for seed in range(4):
            rows.append(
                dict(
                    eta_y=eta,
                    seed=seed,
                    snap_step=40.0 - 10 * e + seed,
                    settling_step=45 - 10 * e + seed,
                    mass_final=0.2 + 0.1 * e + 0.01 * seed,
                    mass_at_snap=0.21 + 0.1 * e,
                    drift_after_snap=0.01,
                    max_rise_before_snap=0.0,
                    still_moving_at_end=0,
                )
            )
    frame = pd.DataFrame(rows)
    for (eta, seed, column), value in (changes or {}).items():
        frame.loc[(frame.eta_y == eta) & (frame.seed == seed), column] = value
    return frame


COMMON_ROWS = [
    "common_mass_falls_monotonically_during_scan",
    "common_mass_freezes_at_snap",
    "snap_earlier_with_larger_eta_y",
    "frozen_mass_higher_with_larger_eta_y",
]


def test_common_mass_verdicts_all_hold_on_the_base_table():
    rows, metrics = common_mass_verdicts(mass_table())
    assert [row[0] for row in rows] == COMMON_ROWS
    assert all(verdict_of(rows).values())
    # paired differences: snap(eta 1) - snap(eta 5) = 20 in every seed; mass(5) - mass(1) = 0.2 in every seed
    assert metrics["snap_step_difference"] == pytest.approx(dict(mean=20.0, ci_low=20.0, ci_high=20.0))
    assert metrics["frozen_mass_difference"] == pytest.approx(dict(mean=0.2, ci_low=0.2, ci_high=0.2))
    assert metrics["seeds"] == 4 and metrics["all_snapped"] and metrics["snap_step_decreasing"]
    assert metrics["frozen_mass_increasing"] and metrics["max_rise_before_snap"] == 0.0
    assert metrics["max_drift_after_snap"] == pytest.approx(0.01)
    assert metrics["eta_y"]["2"]["snap_step"] == pytest.approx(31.5)  # mean of 30..33
    assert metrics["eta_y"]["5"]["mass_final"] == pytest.approx(0.415)


@pytest.mark.parametrize(
    "changes, broken",
    [
        ({(2.0, 1, "max_rise_before_snap"): 2 * MONOTONE_RISE_MAX}, "common_mass_falls_monotonically_during_scan"),
        ({(5.0, 3, "drift_after_snap"): DRIFT_AFTER_SNAP_MAX}, "common_mass_freezes_at_snap"),  # boundary: < fails
        ({(1.0, 0, "still_moving_at_end"): 1}, "common_mass_freezes_at_snap"),
        # the middle eta_Y snaps latest on average: the CI of the end-to-end difference stays > 0
        (
            {(2.0, s, "snap_step"): 60 for s in range(4)},
            "snap_earlier_with_larger_eta_y",
        ),
        # one seed where the smallest eta_Y snaps much earlier: the paired CI reaches below 0
        ({(1.0, 0, "snap_step"): -100}, "snap_earlier_with_larger_eta_y"),
        ({(2.0, s, "mass_final"): 0.9 for s in range(4)}, "frozen_mass_higher_with_larger_eta_y"),
        ({(5.0, 0, "mass_final"): -2.0}, "frozen_mass_higher_with_larger_eta_y"),
    ],
)
def test_common_mass_verdicts_each_clause_fails_alone(changes, broken):
    rows, _ = common_mass_verdicts(mass_table(changes))
    assert verdict_of(rows) == {name: name != broken for name in COMMON_ROWS}


def test_common_mass_verdicts_thresholds_at_the_boundary():
    # a rise of exactly the allowed float noise still holds (<=)
    rows, metrics = common_mass_verdicts(mass_table({(2.0, 1, "max_rise_before_snap"): MONOTONE_RISE_MAX}))
    assert verdict_of(rows)["common_mass_falls_monotonically_during_scan"]
    assert value_of(rows)["common_mass_falls_monotonically_during_scan"] == MONOTONE_RISE_MAX
    # the largest drift is reported (not the mean) and just below the limit holds
    rows, metrics = common_mass_verdicts(mass_table({(5.0, 3, "drift_after_snap"): 0.049}))
    assert verdict_of(rows)["common_mass_freezes_at_snap"] and metrics["max_drift_after_snap"] == pytest.approx(0.049)
    # equal snap steps at two eta_Y: "falls at every eta_Y step" does not hold
    rows, metrics = common_mass_verdicts(mass_table({(2.0, s, "snap_step"): 40 + s for s in range(4)}))
    assert not verdict_of(rows)["snap_earlier_with_larger_eta_y"] and not metrics["snap_step_decreasing"]


def test_common_mass_verdicts_mean_curve_rise_per_setting():
    curves = pd.DataFrame(
        dict(
            setting=["paper"] * 6 + ["other"] * 3,
            eta_y=[1.0] * 3 + [2.0] * 3 + [1.0] * 3,
            step=[0, 1, 2] * 3,
            mean=[0.9, 0.5, 0.52, 0.9, 0.8, 0.7, 0.9, 0.95, 0.2],
        )
    )
    _, metrics = common_mass_verdicts(mass_table(), curves.sample(frac=1.0, random_state=0))  # order restored by step
    assert metrics["max_rise_of_mean_curve"] == pytest.approx({"paper": 0.02, "other": 0.05})


def test_paired_bootstrap_ci_of_constant_and_spread_differences():
    assert paired_bootstrap_ci(np.zeros(5), np.full(5, 2.0)) == pytest.approx((2.0, 2.0, 2.0))
    diff = np.array([-1.0, 0.5, 2.0, 3.5, 5.0])
    mean, low, high = paired_bootstrap_ci(np.zeros(5), diff, seed=3)
    assert mean == pytest.approx(2.0)
    # a hand bootstrap with the same generator draws: the percentile interval of resampled means
    rng = np.random.default_rng(3)
    means = diff[rng.integers(0, 5, size=(2000, 5))].mean(-1)
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert -1.0 < low < mean < high < 5.0
    # a narrower level gives a narrower interval
    _, low90, high90 = paired_bootstrap_ci(np.zeros(5), diff, seed=3, level=0.9)
    assert low < low90 and high90 < high


# ---- figure 4 and figure 6 ----


def test_figure4_verdict_relative_errors_and_boundary():
    reference = {0: 2.0, 2: 1.0, 4: 0.5}
    row, errors = figure4_verdict({0: 2.1, 2: 0.95, 4: 0.5, 6: 9.0}, reference)  # step 6 not in the reference
    assert errors == pytest.approx({"0": 0.05, "2": 0.05, "4": 0.0})
    assert row[0] == "figure4_loss_curve" and row[2] == pytest.approx(0.05) and row[-1]
    row, _ = figure4_verdict({0: 2.0, 2: 1.0, 4: 0.5 * (1 + FIGURE4_REL_ERROR_MAX)}, reference)
    assert row[2] == pytest.approx(FIGURE4_REL_ERROR_MAX) and not row[-1]  # boundary: < fails
    row, _ = figure4_verdict({0: 2.0, 2: 1.0, 4: 0.5 * (1 - 0.099)}, reference)
    assert row[-1]


def comparison_table(gaps, zs, queries=1, seeds=10) -> pd.DataFrame:
    return pd.DataFrame(
        dict(
            n_queries=queries,
            eta_z=[0.5 * (i + 1) for i in range(len(gaps))],
            ratio=1.0,
            gap=gaps,
            gap_z=zs,
            seeds=seeds,
        )
    )


def spread_table(zs, shares) -> pd.DataFrame:
    return pd.DataFrame(dict(gap_z_all_seeds=zs, share_groups_within=shares, groups=10, group_size=10))


FIGURE6_ROWS = ["figure6_entropy_within_0.03", "figure6_gap_within_seed_noise", "figure6_many_seeds_within_seed_noise"]


@pytest.mark.parametrize(
    "gaps, zs, spread_zs, broken",
    [
        ([0.01, -0.02, 0.0], [0.5, -1.0, 0.1], [1.0, -2.0], None),
        ([0.01, -0.031, 0.0], [0.5, -1.0, 0.1], [1.0, -2.0], "figure6_entropy_within_0.03"),
        ([0.01, -0.02, 0.0], [0.5, -FIGURE6_Z_MAX, 0.1], [1.0, -2.0], "figure6_gap_within_seed_noise"),
        ([0.01, -0.02, 0.0], [0.5, -1.0, 0.1], [1.0, -FIGURE6_Z_MAX], "figure6_many_seeds_within_seed_noise"),
    ],
)
def test_figure6_verdicts_each_clause_fails_alone(gaps, zs, spread_zs, broken):
    other_queries = comparison_table([0.5], [9.0], queries=2)  # another query count: never judged here
    comparison = pd.concat([comparison_table(gaps, zs), other_queries], ignore_index=True)
    rows, metrics = figure6_verdicts(comparison, spread_table(spread_zs, [1.0, 0.6]), n_queries=1)
    assert verdict_of(rows) == {name: name != broken for name in FIGURE6_ROWS}
    worst = max(gaps, key=abs)
    assert value_of(rows)["figure6_entropy_within_0.03"] == pytest.approx(worst)  # signed gap of the worst cell
    assert metrics["max_abs_gap"] == pytest.approx(abs(worst)) and metrics["cells"] == 3
    assert metrics["cells_within"] == sum(abs(g) <= FIGURE6_GAP_MAX for g in gaps)
    assert metrics["max_gap_z"] == pytest.approx(max(abs(z) for z in zs))
    assert metrics["max_gap_z_many_seeds"] == pytest.approx(max(abs(z) for z in spread_zs))
    assert metrics["min_share_of_10_seed_groups_within"] == pytest.approx(0.6)
    assert f"eta_Z={comparison.eta_z[int(np.argmax(np.abs(gaps)))]:g}" in rows[0][1]


def test_figure6_gap_of_exactly_the_limit_holds():
    rows, _ = figure6_verdicts(
        comparison_table([FIGURE6_GAP_MAX, 0.0], [1.0, 0.0]), spread_table([0.0], [1.0]), n_queries=1
    )
    assert verdict_of(rows)["figure6_entropy_within_0.03"]


def test_figure6_seed_spread_against_a_hand_computation():
    # one cell, 6 seeds (2 classes each), groups of 3 seeds
    entropy = {0: (1.0, 1.2), 1: (1.4, 1.4), 2: (0.9, 1.1), 3: (1.2, 1.0), 4: (1.3, 1.5), 5: (0.8, 0.8)}
    measures = pd.DataFrame(
        [
            dict(n_queries=1, eta_z=0.5, ratio=2.0, seed=10 + s, cls=c, entropy=e)
            for s, pair in entropy.items()
            for c, e in enumerate(pair)
        ]
    )
    reference = {(1, 0.5, 2.0): (1.05, 0.2)}
    spread = figure6_seed_spread(measures, reference, group_size=3).iloc[0]
    per_seed = np.array([np.mean(p) for p in entropy.values()])  # 1.1, 1.4, 1.0, 1.1, 1.4, 0.8
    groups = per_seed.reshape(2, 3).mean(1)  # seeds in order, 3 per group
    assert spread["groups"] == 2 and spread["group_size"] == 3
    assert spread["all_seeds_mean"] == pytest.approx(per_seed.mean())
    assert spread["all_seeds_se"] == pytest.approx(per_seed.std(ddof=1) / math.sqrt(6))
    assert spread["group_mean_std"] == pytest.approx(groups.std(ddof=1))
    assert spread["gap_all_seeds"] == pytest.approx(per_seed.mean() - 1.05)
    se = math.sqrt(per_seed.var(ddof=1) / 6 + 0.2**2 / 10)
    assert spread["gap_z_all_seeds"] == pytest.approx((per_seed.mean() - 1.05) / se)
    assert spread["share_groups_within"] == pytest.approx(np.mean(np.abs(groups - 1.05) <= FIGURE6_GAP_MAX))
    assert spread["authors"] == 1.05 and spread["authors_std"] == 0.2


# ---- the sweep: entropy trends ----


def sweep_means(values: dict[tuple, float]) -> pd.Series:
    index = pd.MultiIndex.from_tuples(list(values), names=["n_queries", "eta_z", "ratio"])
    return pd.Series(list(values.values()), index=index)


def test_trend_fraction_counts_cells_with_the_predicted_sign():
    values = {}
    for q in (1, 2):
        for ratio in (1.0, 2.0):
            for eta_z in (0.5, 1.0, 2.0):
                # falls with eta_Z except (q=2, ratio=2) where it rises; (q=1, ratio=2) constant (left out)
                if (q, ratio) == (1, 2.0):
                    values[(q, eta_z, ratio)] = 3.0
                elif (q, ratio) == (2, 2.0):
                    values[(q, eta_z, ratio)] = eta_z
                else:
                    values[(q, eta_z, ratio)] = 5.0 - eta_z
    means = sweep_means(values)
    assert _trend_fraction(means, "eta_z", ["n_queries", "ratio"], -1) == pytest.approx(2 / 3)
    assert _trend_fraction(means, "eta_z", ["n_queries", "ratio"], +1) == pytest.approx(1 / 3)
    flat = sweep_means({(1, 0.5, 1.0): 1.0, (1, 1.0, 1.0): 1.0})
    assert math.isnan(_trend_fraction(flat, "eta_z", ["n_queries", "ratio"], -1))


def test_entropy_sweep_nests_the_seed_and_class_means():
    measures = pd.DataFrame(
        dict(
            n_queries=[1, 1, 1, 2],
            eta_z=[0.5, 0.5, 1.0, 0.5],
            ratio=[2.0, 2.0, 2.0, 1.0],
            entropy=[1.0, 2.0, 4.0, 8.0],
        )
    )
    assert entropy_sweep(measures) == {"1": {"0.5": {"2": 1.5}, "1": {"2": 4.0}}, "2": {"0.5": {"1": 8.0}}}


def test_final_common_mass_uses_the_last_step_of_the_paper_setting_only():
    rows = []
    for step in (0, 10):
        for setting in ("paper", "zero_init"):
            for eta in (1.0, 2.0):
                for cls in (0, 1):
                    for kind, c in (("common", 0.1 * eta + 0.05 * cls), ("common", 0.2), ("distinct", 0.5)):
                        rows.append(dict(step=step, setting=setting, eta_y=eta, **{"class": cls}, kind=kind, c=c))
    small = pd.DataFrame(rows)
    small.loc[(small.step == 0) | (small.setting == "zero_init"), "c"] = 99.0  # must be ignored
    expected = np.mean([0.1 * eta + 0.05 * cls + 0.2 for eta in (1.0, 2.0) for cls in (0, 1)])
    assert final_common_mass(small) == pytest.approx(expected)


# ---- the main verdict table ----


def verdict_inputs(**broken) -> dict[str, pd.DataFrame]:
    """Inputs where every prediction of `verdicts` holds; `broken` names one to break."""
    small_rows = []
    for step in (0, 5):
        for setting in ("paper", "zero_init"):
            for eta in (1.0, 2.0):
                for cls in (0, 1):
                    for rank, prob in enumerate((0.1, 0.2, 0.3, 0.4)):
                        c = prob if not broken.get("ranking") else 0.4 - prob  # reversed: tau = -1
                        if setting != "paper" or step != 5:
                            c = 0.25  # ties everywhere else: must not be read
                        small_rows.append(
                            dict(
                                step=step, setting=setting, eta_y=eta, kind="distinct", prob=prob, c=c, **{"class": cls}
                            )
                        )
    small = pd.DataFrame(small_rows)
    sweep_rows = []
    for q in (1, 2):
        for eta_z in (0.5, 1.0, 2.0):
            for ratio in (1.0, 2.0, 4.0):
                entropy = 3.0 - eta_z + 0.1 * ratio
                if broken.get("eta_z") and q == 1:
                    entropy = 3.0 + eta_z + 0.1 * ratio  # rises with eta_Z in 3 of 6 cells: 0.5 < 0.75
                if broken.get("ratio") and q == 2:
                    entropy = 3.0 - eta_z - 0.1 * ratio
                sweep_rows += [dict(n_queries=q, eta_z=eta_z, ratio=ratio, seed=s, entropy=entropy) for s in (0, 1)]
    sweep = pd.DataFrame(sweep_rows)
    theorem3 = pd.DataFrame(dict(holds=[True] * 9 + [not broken.get("bounds")]))
    snap_rows = []
    for eta in (1.0, 2.0, 4.0):
        t_snap = 10.0 / eta if not (broken.get("snap") and eta == 4.0) else 10.0  # snap at t0 (or t = 10 at eta 4)
        for t_over_t0 in (0.5, 1.0, 2.0, 10.0, 20.0):
            t = t_over_t0 * 10.0 / eta
            exponent = 2.0 if t < t_snap else 0.2
            if t_over_t0 == 10.0 and broken.get("log") and eta == 2.0:
                exponent = LOG_EXPONENT_MAX
            snap_rows.append(dict(eta_y=eta, t=t, t_over_t0=t_over_t0, growth_exponent=exponent))
    snap = pd.DataFrame(snap_rows)
    tf_rows = []
    for variant in ("sgd", "adam"):
        for step in (0, 50):
            common = 0.6 if step == 0 else 0.3
            if broken.get("scan") and variant == "adam":
                common = 0.3 if step == 0 else 0.6
            tf_rows += [
                dict(
                    variant=variant,
                    step=step,
                    kind="common",
                    attention=common / 2,
                    distinct_rank=-1,
                    attention_per_occurrence=0.0,
                )
            ] * 2
            for rank in range(3):
                per = 0.1 * (rank + 1) if not (broken.get("tf_ranking") and variant == "sgd") else 0.3 - 0.1 * rank
                tf_rows.append(
                    dict(
                        variant=variant,
                        step=step,
                        kind="distinct",
                        attention=per,
                        distinct_rank=rank,
                        attention_per_occurrence=per,
                    )
                )
    transformer = pd.DataFrame(tf_rows)
    return dict(small=small, sweep=sweep, theorem3=theorem3, snap=snap, transformer=transformer)


MAIN_ROWS = [
    "distinct_ranked_by_probability",
    "entropy_falls_with_eta_z",
    "entropy_rises_with_ratio",
    "theorem3_bounds",
    "snap_time_scales_as_predicted",
    "logarithmic_after_snap",
    "transformer_adam_scan",
    "transformer_adam_ranking",
    "transformer_sgd_scan",
    "transformer_sgd_ranking",
]


def test_verdicts_all_hold_on_the_base_tables_with_hand_values():
    extra = [("extra_row", "from common_mass_verdicts", 1.0, "x", False)]
    table = verdicts(**verdict_inputs(), extra_rows=extra)
    assert list(table.columns) == ["prediction", "measure", "value", "criterion", "holds"]
    assert list(table.prediction) == MAIN_ROWS + ["extra_row"]
    holds = dict(zip(table.prediction, table.holds))
    assert all(holds[name] for name in MAIN_ROWS) and not holds["extra_row"]
    value = dict(zip(table.prediction, table.value))
    assert value["distinct_ranked_by_probability"] == pytest.approx(1.0)
    assert value["entropy_falls_with_eta_z"] == pytest.approx(1.0) and value["entropy_rises_with_ratio"] == 1.0
    assert value["theorem3_bounds"] == 1.0
    assert value["snap_time_scales_as_predicted"] == pytest.approx(0.0, abs=1e-12)
    assert value["logarithmic_after_snap"] == pytest.approx(0.2)
    assert value["transformer_sgd_scan"] == pytest.approx(0.3)  # 0.6 - 0.3 of common attention
    assert value["transformer_sgd_ranking"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "broken, row",
    [
        ("ranking", "distinct_ranked_by_probability"),
        ("eta_z", "entropy_falls_with_eta_z"),
        ("ratio", "entropy_rises_with_ratio"),
        ("bounds", "theorem3_bounds"),
        ("snap", "snap_time_scales_as_predicted"),
        ("log", "logarithmic_after_snap"),
        ("scan", "transformer_adam_scan"),
        ("tf_ranking", "transformer_sgd_ranking"),
    ],
)
def test_verdicts_each_prediction_fails_alone(broken, row):
    table = verdicts(**verdict_inputs(**{broken: True}))
    holds = dict(zip(table.prediction, table.holds))
    assert holds == {name: name != row for name in MAIN_ROWS}


def test_verdict_values_when_broken_match_hand_computations():
    value = lambda **b: dict(zip(*(lambda t: (t.prediction, t.value))(verdicts(**verdict_inputs(**b)))))  # noqa: E731
    assert value(ranking=True)["distinct_ranked_by_probability"] == pytest.approx(-1.0)
    assert value(eta_z=True)["entropy_falls_with_eta_z"] == pytest.approx(0.5)
    assert value(bounds=True)["theorem3_bounds"] == pytest.approx(0.9)
    # first recorded t with exponent < 1, times eta_Y: 10 x 1, 5 x 2, and at eta_Y 4 (snap delayed to t = 10) the
    # first recorded t past it is 10 x 2.5 = 25, so 100; coefficient of variation std(ddof=1) / mean
    scaled = np.array([10.0, 10.0, 100.0])
    assert value(snap=True)["snap_time_scales_as_predicted"] == pytest.approx(scaled.std(ddof=1) / scaled.mean())
    assert value(log=True)["logarithmic_after_snap"] == pytest.approx(LOG_EXPONENT_MAX)
    assert value(scan=True)["transformer_adam_scan"] == pytest.approx(-0.3)
    tau = kendalltau([0, 1, 2], [0.3, 0.2, 0.1]).statistic
    assert value(tf_ranking=True)["transformer_sgd_ranking"] == pytest.approx(tau)


def test_verdict_thresholds_are_the_documented_constants():
    assert (KENDALL_TAU_MIN, TREND_FRACTION_MIN, SNAP_SPREAD_MAX, LOG_EXPONENT_MAX) == (0.8, 0.75, 0.1, 0.35)
    table = verdicts(**verdict_inputs())
    criteria = dict(zip(table.prediction, table.criterion))
    assert criteria["distinct_ranked_by_probability"] == ">= 0.8" and criteria["theorem3_bounds"] == "== 1"
    assert criteria["snap_time_scales_as_predicted"] == "< 0.1" and criteria["logarithmic_after_snap"] == "< 0.35"


def test_theorem3_verdicts_metrics_on_a_hand_table():
    frame = pd.DataFrame(
        dict(
            holds=[True, True, False, False],
            bound_violated=["none", "none", "lower", "upper"],
            distinct_rank=[0, 1, 0, 1],
            holds_B_top_token=[True, False, False, False],
            lower=[1.0, 1.0, 3.0, 1.0],
            r=[2.0, 2.0, 2.0, 4.0],
            run=[0, 0, 1, 1],
            cls=[0, 0, 0, 0],
            r2_structure=[0.9, 0.9, 0.5, 0.5],
            B_ratio_least_to_top=[0.2, 0.2, 0.4, 0.4],
        )
    )
    rows, metrics = theorem3_verdicts({"ode": frame})
    assert rows[0][0] == "theorem3_bounds_ode" and rows[0][2] == 0.5 and not rows[0][-1]
    m = metrics["ode"]
    assert (m["share_inside"], m["share_below_lower"], m["share_above_upper"]) == (0.5, 0.25, 0.25)
    assert m["share_inside_B_top_token"] == 0.25
    assert m["largest_shortfall_below_lower"] == pytest.approx(0.5)  # lower / r - 1 = 3 / 2 - 1
    assert m["median_shortfall_where_below"] == pytest.approx(0.5)
    assert m["r2_structure"] == pytest.approx(0.7) and m["B_ratio_least_to_top"] == pytest.approx(0.3)
    assert m["share_inside_by_distinct_rank"] == {"0": 0.5, "1": 0.5}


# ---- boundaries and the clauses that must fail with the other clause of their row holding ----


@pytest.mark.parametrize(
    "changes, row, holds",
    [
        # the lowest seed pair disagrees: CI low <= 0 < CI high while the means still fall / rise at every step
        ({(1.0, 0, "snap_step"): 10}, "snap_earlier_with_larger_eta_y", False),
        ({(5.0, 0, "mass_final"): 0.1}, "frozen_mass_higher_with_larger_eta_y", False),
        # three seeds with no difference: the CI's low end is exactly 0 ("> 0" fails)
        (
            {**{(1.0, s, "snap_step"): 20 + s for s in range(3)}, **{(2.0, s, "snap_step"): 20 + s for s in range(3)}},
            "snap_earlier_with_larger_eta_y",
            False,
        ),
        # every seed 0.5 earlier: CI (0.5, 0.5), "> 0" holds (not "> 1")
        (
            {
                **{(1.0, s, "snap_step"): 20.5 + s for s in range(4)},
                **{(2.0, s, "snap_step"): 20.25 + s for s in range(4)},
            },
            "snap_earlier_with_larger_eta_y",
            True,
        ),
        # equal mean frozen masses at two neighbouring eta_Y: "rises at every step" fails
        ({(2.0, s, "mass_final"): 0.2 + 0.01 * s for s in range(4)}, "frozen_mass_higher_with_larger_eta_y", False),
        (
            {
                **{(5.0, s, "mass_final"): 0.2 + 0.01 * s for s in range(3)},
                **{(2.0, s, "mass_final"): 0.2 + 0.01 * s for s in range(3)},
            },
            "frozen_mass_higher_with_larger_eta_y",
            False,
        ),
    ],
)
def test_common_mass_verdicts_ci_clauses(changes, row, holds):
    rows, _ = common_mass_verdicts(mass_table(changes))
    verdict = verdict_of(rows)
    assert verdict[row] is holds
    assert all(verdict[name] for name in COMMON_ROWS if name != row)


def test_common_mass_verdict_rows_state_the_values_they_judge():
    rows, metrics = common_mass_verdicts(mass_table({(1.0, 0, "snap_step"): 10, (5.0, 0, "mass_final"): 0.5}))
    snap = metrics["snap_step_difference"]
    assert rows[2][1] == (
        "snap step at eta_Y=1 minus at eta_Y=5 (paired over seeds), "
        f"95% CI [{snap['ci_low']:.2f}, {snap['ci_high']:.2f}]"
    )
    assert rows[2][2] == pytest.approx(12.5) and snap["mean"] == pytest.approx(12.5)  # (-10 + 20 + 20 + 20) / 4
    assert rows[2][3] == "CI > 0 and mean snap step falls at every eta_Y step"
    mass = metrics["frozen_mass_difference"]
    assert rows[3][1] == (
        f"frozen common mass at eta_Y=5 minus at eta_Y=1, 95% CI [{mass['ci_low']:.3f}, {mass['ci_high']:.3f}]"
    )
    assert mass["ci_low"] < mass["mean"] < mass["ci_high"]  # seed 0's difference is 0.3, the others' 0.2
    assert rows[3][2] == pytest.approx(0.225) and rows[3][3] == "CI > 0 and mean frozen mass rises at every eta_Y step"
    assert rows[0][1] == "largest one-step rise of the common mass before the snap (all eta_Y, seeds)"
    assert rows[0][3] == "<= 0.0001"
    assert rows[1][1] == "largest |mass(end) - mass(snap)| / total drop; every run snapped before the last step"
    assert rows[1][3] == "< 0.05 and all snapped"


def test_paired_bootstrap_ci_default_seed_and_fine_grained_values():
    diff = np.random.default_rng(5).normal(size=7)
    rng = np.random.default_rng(0)  # the documented default seed
    means = diff[rng.integers(0, 7, size=(2000, 7))].mean(-1)
    mean, low, high = paired_bootstrap_ci(np.zeros(7), diff)
    assert (mean, low, high) == pytest.approx((diff.mean(), *np.quantile(means, [0.025, 0.975])), rel=1e-12)


def test_figure4_relative_error_of_exactly_the_limit_fails():
    row, errors = figure4_verdict({0: 11.0}, {0: 10.0})  # (11 - 10) / 10 = 0.1 exactly
    assert errors == {"0": FIGURE4_REL_ERROR_MAX} and not row[-1]
    assert (
        row[1] == "largest relative error of the seed-mean loss vs the authors' figure_4.log at iterations 0,2,...,10"
    )
    assert row[3] == "< 0.1"


def test_figure6_limits_and_row_text():
    comparison = comparison_table([FIGURE6_GAP_MAX, 0.0, 0.01], [1.0, 0.0, 2.0], seeds=7)
    comparison.loc[1, "seeds"] = 3  # the text reports the first cell's seed count
    rows, metrics = figure6_verdicts(
        comparison,
        pd.DataFrame(dict(gap_z_all_seeds=[0.5], share_groups_within=[1.0], groups=[4], group_size=[5])),
        n_queries=1,
    )
    assert metrics["cells_within"] == 3  # a gap of exactly 0.03 is within (<=)
    assert (
        rows[0][1]
        == "largest |ours - authors| over the 3 cells of 1 query (7 seeds, their settings); worst eta_Z=0.5, ratio=1"
    )
    assert rows[1][1] == "largest |gap| / standard error (3 cells, our 10 seeds vs their 10)"
    assert rows[2][1] == "largest |our mean over 20 seeds - authors| / standard error"
    assert [row[3] for row in rows] == ["|gap| <= 0.03", "< 3", "< 3"]


def test_figure6_comparison_columns_and_cells_missing_from_the_reference():
    measures = pd.DataFrame(
        [
            dict(n_queries=q, eta_z=eta_z, ratio=2.0, seed=s, cls=c, entropy=base + 0.1 * s + 0.01 * c)
            for q, eta_z, base in ((1, 0.5, 1.0), (1, 1.0, 2.0), (2, 0.5, 3.0))
            for s in range(3)
            for c in range(2)
        ]
    )
    reference = {(1, 0.5, 2.0): (1.0, 0.3), (2, 0.5, 2.0): (3.5, 0.1)}  # (1, 1.0, 2.0) has no authors' number
    table = figure6_comparison(measures, reference)
    assert list(table.columns) == [
        "n_queries",
        "eta_z",
        "ratio",
        "ours",
        "ours_std",
        "seeds",
        "authors",
        "authors_std",
        "gap",
        "gap_se",
        "gap_z",
    ]
    assert table[["n_queries", "eta_z", "ratio"]].values.tolist() == [[1, 0.5, 2.0], [2, 0.5, 2.0]]
    per_seed = np.array([1.005, 1.105, 1.205])  # mean over the two classes
    first = table.iloc[0]
    assert first["ours"] == pytest.approx(per_seed.mean()) and first["ours_std"] == pytest.approx(per_seed.std(ddof=1))
    assert first["seeds"] == 3 and first["authors"] == 1.0 and first["authors_std"] == 0.3
    se = math.sqrt(0.3**2 / 10 + per_seed.var(ddof=1) / 3)
    assert first["gap"] == pytest.approx(per_seed.mean() - 1.0) and first["gap_se"] == pytest.approx(se)
    assert first["gap_z"] == pytest.approx((per_seed.mean() - 1.0) / se)
    assert table.iloc[1]["gap"] == pytest.approx(3.105 - 3.5)


def test_figure6_seed_spread_keeps_cells_apart():
    rows = []
    for q, eta_z, ratio, base in ((1, 0.5, 2.0, 1.0), (1, 0.5, 4.0, 5.0), (2, 1.0, 2.0, 9.0)):
        for s in range(4):
            rows.append(dict(n_queries=q, eta_z=eta_z, ratio=ratio, seed=s, cls=0, entropy=base + 0.01 * s))
    measures = pd.DataFrame(rows)
    reference = {(1, 0.5, 2.0): (1.005, 0.1), (1, 0.5, 4.0): (5.0, 0.1), (2, 1.0, 2.0): (9.5, 0.1)}
    spread = figure6_seed_spread(measures, reference, group_size=2)
    assert spread[["n_queries", "eta_z", "ratio"]].values.tolist() == [[1, 0.5, 2.0], [1, 0.5, 4.0], [2, 1.0, 2.0]]
    assert spread["all_seeds_mean"].tolist() == pytest.approx([1.015, 5.015, 9.015])
    # groups of 2 seeds: means base + 0.005 and base + 0.025; within 0.03 of the authors' number or not
    assert spread["share_groups_within"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    exact = figure6_seed_spread(
        pd.DataFrame(dict(n_queries=1, eta_z=0.5, ratio=2.0, seed=[0, 1], cls=0, entropy=[0.03, 0.5])),
        {(1, 0.5, 2.0): (0.0, 0.1)},
        group_size=1,
    )
    assert exact["share_groups_within"].iloc[0] == 0.5  # a gap of exactly 0.03 is within (<=)


def boundary_sweep(agreeing_cells: int, factor: str) -> pd.DataFrame:
    """2 queries x 2 eta_Z x 2 ratios. factor "eta_z": of the 4 (queries, ratio) cells `agreeing_cells` have entropy
    falling in eta_Z, and it rises in the ratio everywhere; factor "ratio": of the 4 (queries, eta_Z) cells
    `agreeing_cells` have it rising in the ratio, and it falls in eta_Z everywhere (the other factor's small term
    never changes the main one's sign)."""
    rows = []
    for q in (1, 2):
        for j, eta_z in enumerate((0.5, 1.0)):
            for k, ratio in enumerate((1.0, 2.0)):
                if factor == "eta_z":
                    sign = -1 if 2 * (q - 1) + k < agreeing_cells else 1
                    entropy = 0.01 * sign * eta_z + ratio
                else:
                    sign = 1 if 2 * (q - 1) + j < agreeing_cells else -1
                    entropy = -eta_z + 0.01 * sign * ratio
                rows.append(dict(n_queries=q, eta_z=eta_z, ratio=ratio, seed=0, entropy=entropy))
    return pd.DataFrame(rows)


def test_verdict_boundaries_hold_at_the_documented_limits():
    inputs = verdict_inputs()
    # 3 of 4 cells agree: exactly the 0.75 share, which holds (>=)
    inputs["sweep"] = boundary_sweep(3, "eta_z")
    # 99 of 100 trajectory points inside the bounds: not 1, so "== 1" fails
    inputs["theorem3"] = pd.DataFrame(dict(holds=[True] * 99 + [False]))
    table = verdicts(**inputs)
    holds, value = dict(zip(table.prediction, table.holds)), dict(zip(table.prediction, table.value))
    assert value["entropy_falls_with_eta_z"] == 0.75 and holds["entropy_falls_with_eta_z"]
    assert value["entropy_rises_with_ratio"] == 1.0
    inputs["sweep"] = boundary_sweep(3, "ratio")
    table = verdicts(**inputs)
    holds, value = dict(zip(table.prediction, table.holds)), dict(zip(table.prediction, table.value))
    assert value["entropy_rises_with_ratio"] == 0.75 and holds["entropy_rises_with_ratio"]
    assert value["entropy_falls_with_eta_z"] == 1.0
    assert value["theorem3_bounds"] == 0.99 and not holds["theorem3_bounds"]
    # snap time x eta_Y of 9, 10, 11: coefficient of variation exactly 0.1, which fails (<)
    inputs = verdict_inputs()
    inputs["snap"] = pd.DataFrame(
        [
            dict(eta_y=eta, t=t, t_over_t0=t_over, growth_exponent=exponent)
            for eta, snap_t in ((1.0, 9.0), (2.0, 5.0), (4.0, 2.75))
            for t, t_over, exponent in ((snap_t / 2, 0.5, 2.0), (snap_t, 1.0, 0.2), (10 * snap_t, 10.0, 0.2))
        ]
    )
    table = verdicts(**inputs)
    row = table.set_index("prediction").loc["snap_time_scales_as_predicted"]
    assert row["value"] == pytest.approx(SNAP_SPREAD_MAX, abs=1e-15) and not row["holds"]
    assert row["measure"] == "coefficient of variation of measured snap time x eta_Y (t0 = K ln M / eta_Y)"


def test_verdict_transformer_rows_read_the_first_and_last_records_only():
    inputs = verdict_inputs()
    tf = inputs["transformer"]
    middle = tf[tf.step == 50].assign(step=25)
    middle.loc[middle.kind == "common", "attention"] = 5.0  # a middle record: neither first nor last
    first = tf[tf.step == 0].copy()
    first.loc[first.kind == "distinct", "attention_per_occurrence"] *= -1  # ranking reversed at the first record
    inputs["transformer"] = pd.concat([first, middle, tf[tf.step == 50]], ignore_index=True)
    table = verdicts(**inputs).set_index("prediction")
    assert table.loc["transformer_sgd_scan", "value"] == pytest.approx(0.3)
    assert table.loc["transformer_sgd_ranking", "value"] == pytest.approx(1.0)
    # no drop at all: "> 0" fails
    flat = verdict_inputs()
    flat["transformer"].loc[flat["transformer"].kind == "common", "attention"] = 0.2
    table = verdicts(**flat).set_index("prediction")
    assert table.loc["transformer_adam_scan", "value"] == 0.0 and not table.loc["transformer_adam_scan", "holds"]
    assert table.loc["transformer_adam_scan", "criterion"] == "> 0"


def test_verdict_row_texts():
    table = verdicts(**verdict_inputs()).set_index("prediction")
    assert table.loc["distinct_ranked_by_probability", "measure"] == (
        "Kendall tau of c_{l|n} vs P(l|n) over distinct tokens (small case)"
    )
    assert table.loc["entropy_falls_with_eta_z", "measure"] == (
        "share of (queries, ratio) cells where entropy decreases with eta_Z"
    )
    assert table.loc["entropy_rises_with_ratio", "measure"] == (
        "share of (queries, eta_Z) cells where entropy increases with eta_Y/eta_Z"
    )
    assert table.loc["theorem3_bounds", "measure"] == (
        "share of (time, token) points of the reduced ODE inside the Theorem 3 bounds (exact B)"
    )
    assert table.loc["logarithmic_after_snap", "measure"] == "largest d ln B / d ln t at t = 10 t0 (2 before the snap)"
    assert table.loc["entropy_falls_with_eta_z", "criterion"] == ">= 0.75"


def test_theorem3_share_of_exactly_the_limit_holds():
    frame = pd.DataFrame(
        dict(
            holds=[True] * 99 + [False],
            bound_violated=["none"] * 99 + ["upper"],
            distinct_rank=0,
            holds_B_top_token=True,
            lower=1.0,
            r=2.0,
            run=0,
            cls=0,
            r2_structure=1.0,
            B_ratio_least_to_top=1.0,
        )
    )
    rows, _ = theorem3_verdicts({"sgd": frame})
    assert rows[0][2] == 0.99 and rows[0][-1]


def test_trend_fraction_cells_with_two_distinct_values_count():
    means = sweep_means({(1, 0.5, 1.0): 2.0, (1, 1.0, 1.0): 1.0, (1, 2.0, 1.0): 1.0})  # two distinct values
    assert _trend_fraction(means, "eta_z", ["n_queries", "ratio"], -1) == 1.0


# ---- the tables built from trained runs ----


def test_final_measures_and_composition_frame_from_trained_runs():
    import torch

    from circuits.scan_snap.data import SequenceClasses
    from circuits.scan_snap.measures import slot_composition
    from circuits.scan_snap.model import RunSpec, TrainSettings, train_runs
    from circuits.scan_snap.predictions import composition_frame, final_measures

    runs = [
        RunSpec(SequenceClasses(n_queries=1, next_per_query=2, n_common=2, n_distinct=3), 0, 2.0, 1.0),
        RunSpec(SequenceClasses(n_queries=2, next_per_query=2, n_common=2, n_distinct=3), 1, 1.0, 0.5),
    ]
    trained = train_runs(runs, TrainSettings(steps=3, batch_size=8, seq_len=9, record_every=2))
    layout = trained.layout
    measures = final_measures(trained, runs)
    assert list(measures.columns) == [
        "run",
        "n_queries",
        "seed",
        "eta_y",
        "eta_z",
        "ratio",
        "cls",
        "common_mass",
        "entropy",
        "kendall_tau",
        "final_loss",
    ]
    assert len(measures) == sum(r.classes.n_classes for r in runs)
    for row in measures.itertuples():
        run = runs[row.run]
        c = slot_composition(trained.class_logits[-1, row.run], trained.probs[row.run], layout)[row.cls]
        distinct = c[layout.n_common :].double().numpy()
        distinct = distinct / distinct.sum()
        assert (row.n_queries, row.seed, row.eta_y, row.eta_z) == (
            run.classes.n_queries,
            run.seed,
            run.eta_y,
            run.eta_z,
        )
        assert row.ratio == pytest.approx(run.eta_y / run.eta_z)
        assert row.common_mass == pytest.approx(float(c[: layout.n_common].sum()), abs=1e-6)
        assert row.entropy == pytest.approx(float(-(distinct * np.log(distinct)).sum()), abs=1e-6)
        assert row.kendall_tau == pytest.approx(kendalltau(np.arange(layout.n_distinct), distinct).statistic)
        assert row.final_loss == pytest.approx(float(trained.loss[-1, row.run]))
    assert measures.final_loss.nunique() == 2 and float(trained.loss[-1, 0]) != float(trained.loss[-2, 0])

    frame = composition_frame(trained, runs, {"label": ["a", "b"]})
    assert trained.record_steps == [0, 2, 3]
    n_slots = layout.n_common + layout.n_distinct
    assert len(frame) == len(trained.record_steps) * sum(r.classes.n_classes for r in runs) * n_slots
    assert set(frame.step) == {0, 2, 3} and set(frame.label) == {"a", "b"}
    for row in frame.sample(25, random_state=0).itertuples():
        i = trained.record_steps.index(row.step)
        c = slot_composition(trained.class_logits[i, row.run], trained.probs[row.run], layout)[getattr(row, "_3")]
        assert row.c == pytest.approx(float(c[row.slot]), abs=1e-6)
        token = int(layout.slot_to_token(torch.tensor([row.slot]), torch.tensor([[getattr(row, "_3")]]))[0, 0])
        assert row.z == pytest.approx(float(trained.class_logits[i, row.run, getattr(row, "_3"), token]))
        assert row.prob == pytest.approx(float(trained.probs[row.run, getattr(row, "_3"), token]))
        assert row.kind == ("common" if row.slot < layout.n_common else "distinct")
        assert row.distinct_rank == (row.slot - layout.n_common if row.kind == "distinct" else -1)
        assert row.label == ["a", "b"][row.run]


def test_figure6_comparison_gap_z_is_nan_without_spread():
    measures = pd.DataFrame(dict(n_queries=1, eta_z=0.5, ratio=2.0, seed=[0, 1], cls=0, entropy=[1.0, 1.0]))
    table = figure6_comparison(measures, {(1, 0.5, 2.0): (1.2, 0.0)})  # no spread on either side: se = 0
    assert table["gap_se"].iloc[0] == 0.0 and math.isnan(table["gap_z"].iloc[0])
