"""Mutation testing of the core modules with mutmut: which planted bugs do their fast tests kill?

    python benchmarks/mutation.py                         # every module below (make mutation)
    python benchmarks/mutation.py --only sae/sparse_ops.py --minutes 10
    python benchmarks/mutation.py --only interp/store --retest   # survivors again, after adding tests

For each module (or package) a copy of the tree (tracked and untracked-not-ignored files) is kept under
--work, mutmut is pointed at that module and at the module's fast tests, and its results are read back:
killed / survived / timeout / other per module, the surviving mutants by name (`mutmut show NAME` in that
copy prints the diff), and the kill rate. Writes benchmarks/results/mutation.json. Not part of CI.

Fast: each mutant runs only the tests that call the mutated function (mutmut's per-function selection,
measured in one traced run of the module's tests), the slow tests of a module's files are deselected
(`--deselect` in MODULES: engine tests on SmolLM2 and subprocess tests, covered by tiny-model tests), and
mutants fork from a server that has already imported torch, TransformerLens and the test modules
(mutmut's forkserver with collect warm-up), not from a bare interpreter.
Resumable: a rerun keeps the copy and mutmut's results in its mutants/ dir, refreshes the changed files,
and tests only the mutants without a result (and the functions whose code changed); a time-boxed run
(--minutes) stops the whole process group and counts what it got. A changed test list keeps the results
(new tests are traced and added; mutmut would otherwise drop every result); --retest runs the survivors
again against the current tests; --fresh starts over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# module (or package) -> the fast tests that exercise it
MODULES: dict[str, list[str]] = {
    "sae/sparse_ops.py": ["tests/sae/test_sparse_ops.py"],
    "sae/darkmatter/regression.py": [
        "tests/sae/test_darkmatter.py",
        "tests/sae/test_darkmatter_equivalence.py",
        "tests/sae/test_darkmatter_regression_edges.py",
        "tests/test_chunked.py",
    ],
    "circuits/recall_reasoning/dissociation.py": [
        "tests/circuits/test_dissociation_clauses.py",
        "tests/circuits/test_dissociation_mutants.py",
        "tests/circuits/test_recall_reasoning_heldout.py",
        "tests/circuits/test_recall_reasoning.py",
        "tests/circuits/test_recall_reasoning_neurons.py",
        # 13 s a mutant (the whole experiment on a tiny model): its dissociation calls are checked one by one above
        "--deselect",
        "tests/circuits/test_recall_reasoning_heldout.py::test_the_experiment_runs_on_a_tiny_random_model",
    ],
    "circuits/scan_snap/predictions.py": [
        "tests/circuits/test_scan_snap_verdicts.py",
        "tests/circuits/test_scan_snap_bounds.py",
        "tests/circuits/test_scan_snap_replication.py",
        "tests/circuits/test_scan_snap.py",
    ],
    "interp/store": [
        "tests/test_store.py",
        "tests/test_store_mutants.py",
        "tests/test_robustness.py::test_store_manifest_is_cross_checked_against_the_shards",
        "tests/test_robustness.py::test_an_edited_shard_token_count_is_caught",
        "tests/test_robustness.py::test_token_ids_out_of_range_are_refused",
        "tests/test_robustness.py::test_a_second_writer_is_refused_naming_the_first",
        "tests/test_robustness.py::test_manifest_reader_on_random_bytes_and_json_raises_an_interp_error",
        "tests/test_robustness.py::test_manifest_reader_on_a_randomly_edited_field_opens_or_raises_an_interp_error",
        # SmolLM2 loads (one in a subprocess killed mid-run): tests/test_store_mutants.py covers resume and
        # the default-corpus path on the tiny model
        "--deselect",
        "tests/test_store.py::test_resume_after_sigkill_gives_identical_shards",
        "--deselect",
        "tests/test_store.py::test_round_trip_bundled_model_on_default_corpus",
    ],
    "interp/attribution": [
        "tests/test_attribution.py",
        "tests/test_attribution_qk_summed.py",
        "tests/test_attribution_graddrop.py",
        "tests/test_attribution_mutants.py",
    ],
    "interp/patching": [
        "tests/test_patching.py",
        "tests/test_patching_mutants.py",
        "tests/test_engine_batches.py",
        "tests/test_patching_floor.py",
        "tests/test_path_patching.py",
        "tests/circuits/test_recall_reasoning_heldout.py::test_batched_ablation_equals_one_forward_per_ablation",
        "tests/test_robustness.py::test_bad_pairs_files_are_one_line_errors",
        "tests/test_robustness.py::test_good_pairs_files_read_the_same_from_csv_and_jsonl",
        "tests/test_robustness.py::test_pairs_reader_on_random_bytes_returns_pairs_or_an_interp_error",
        "tests/test_robustness.py::test_pairs_reader_on_random_json_returns_valid_pairs_or_an_interp_error",
        "tests/test_robustness.py::test_pairs_that_cannot_measure_anything_are_refused",
        # SmolLM2 (seconds to half a minute a run): tests/test_patching_mutants.py runs the same checks on the tiny
        # model with a tokenizer (align with unequal lengths in batches of 2-3 variants, the input errors)
        *(
            arg
            for name in (
                "test_patching.py::test_resid_pre_layer_position_matches_transformer_lens",
                "test_patching.py::test_heads_all_positions_match_transformer_lens",
                "test_patching.py::test_heads_by_position_match_transformer_lens_also_in_small_batches",
                "test_patching.py::test_align_left_pads_and_matches_unpadded_runs",
                "test_patching.py::test_different_token_lengths_error_unless_aligned",
                "test_patching.py::test_bad_prompts_and_answers",
                "test_patching.py::test_bad_sites_and_options",
                "test_engine_batches.py::test_align_with_unequal_corrupted_lengths_in_batches_matches_unpadded_runs",
            )
            for arg in ("--deselect", f"tests/{name}")
        ),
    ],
}
# Mutants that no test can kill because the mutated program behaves the same, each with the reason (read by hand
# with `mutmut show NAME` in the module's copy). They are counted apart and left out of `kill_rate_judged`.
EQUIVALENT: dict[str, str] = {
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_67": "ones column in float32: torch.cat promotes it to float64 "
    "and 1.0 is exact in both",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_70": "same as _67 (dtype argument dropped)",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_81": "driver None is gelsy on CPU: like gelsd it returns the "
    "minimum-norm solution of the (square, possibly singular) normal equations",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_84": "same as _81 (driver argument dropped)",
    "sae.darkmatter.regression.x_fit_linear_map__mutmut_86": "torch.linalg.lstsq reads the driver name case-insensitively",
    "sae.darkmatter.regression.x_group_mean_r2__mutmut_39": "one more group slot than ids: the extra slot is never indexed",
    "sae.darkmatter.regression.x_r2_per_dimension__mutmut_64": 'float("NAN") is NaN',
    # `... if ctx.needs_input_grad[i] or True`: the gradient is computed for an input that does not need one and
    # autograd discards it: slower, same results (tests/sae/test_sparse_ops.py checks every subset of inputs)
    # scan-and-snap verdicts (tests/circuits/test_scan_snap_verdicts.py)
    "circuits.scan_snap.predictions.x__trend_fraction__mutmut_13": "no cell with a trend: np.mean([]) is NaN too (with a RuntimeWarning)",
    "circuits.scan_snap.predictions.x__trend_fraction__mutmut_18": 'float("NAN") is NaN',
    "circuits.scan_snap.predictions.x_composition_frame__mutmut_21": "unsqueeze(+1) of a 1-D arange is unsqueeze(-1)",
    "circuits.scan_snap.predictions.x_composition_frame__mutmut_72": "to_frame(index=None) keeps the MultiIndex; reset_index(drop=True) drops it at the end",
    "circuits.scan_snap.predictions.x_composition_frame__mutmut_73": "same as _72",
    "circuits.scan_snap.predictions.x_figure6_comparison__mutmut_115": 'float("NAN") is NaN',
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_6": "np.asarray without dtype: the difference with a float64 array is float64",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_8": "same as _6",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_10": "same as _6 (the other operand)",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_12": "same as _6 (the other operand)",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_20": "rng.integers(n) draws from [0, n) exactly as rng.integers(0, n), same stream",
    "circuits.scan_snap.predictions.x_paired_bootstrap_ci__mutmut_24": "mean over axis +1 of a 2-D array is the mean over axis -1",
    "circuits.scan_snap.predictions.x_figure6_seed_spread__mutmut_18": "group labels as floats (0.0, 1.0, ...) instead of ints: the same groups",
    "circuits.scan_snap.predictions.x_verdicts__mutmut_163": "tau >= 0.8 vs > 0.8: scipy computes tau as (C - D) / sqrt(n0 - ties) / sqrt(n0 - ties), "
    "which never lands on the float 0.8 (8 of 10 pairs gives 0.7999999999999999), so the two agree on every reachable value",
    "circuits.scan_snap.predictions.x_verdicts__mutmut_201": "same as _163 (the transformer's tau)",
    "sae.sparse_ops.xǁSparseDecodeǁbackward__mutmut_4": "gradient computed when not needed, discarded by autograd",
    "sae.sparse_ops.xǁSparseDecodeǁbackward__mutmut_14": "gradient computed when not needed, discarded by autograd",
    "sae.sparse_ops.xǁTopKEncodeǁbackward__mutmut_8": "gradient computed when not needed, discarded by autograd",
    "sae.sparse_ops.xǁTopKEncodeǁbackward__mutmut_18": "gradient computed when not needed, discarded by autograd",
}
# the activation store (tests/test_store_mutants.py)
EQUIVALENT.update(
    {
        "interp.store.writer.x__read_manifest__mutmut_5": 'decode("UTF-8"): Python codec names are case-insensitive',
        "interp.store.writer.x_build_store__mutmut_5": 'default encoding "UTF-8": codec names are case-insensitive',
        "interp.store.reader.xǁActivationStoreǁiter_batches__mutmut_51": 'rest_index starts as "" instead of None: '
        "it is read only after rest_acts is set, and the two are always assigned together",
        "interp.store.writer.x__site_shapes__mutmut_8": "a probe of 2 sequences instead of 1: only the shape after "
        "[batch, pos] is read",
        "interp.store.writer.x__site_shapes__mutmut_13": "no stop_at_layer: the whole model runs, the captured "
        "activations are the same (layers after the deepest site computed for nothing)",
        "interp.store.writer.x__forward__mutmut_4": "same as _site_shapes_13 (stop_at_layer=None)",
        "interp.store.writer.x__forward__mutmut_7": "same as _site_shapes_13 (stop_at_layer dropped)",
        "interp.store.writer.x__forward__mutmut_11": "capture_hook(clone=None) is clone=False (falsy)",
        "interp.store.writer.x__forward__mutmut_15": "capture_hook's default clone=True: a copy of the same values "
        "(more memory; nothing writes to the activation)",
        "interp.store.writer.x__forward__mutmut_17": "same as _15 (clone=True)",
        "interp.store.writer.x__resume_or_start__mutmut_1": "mkdir(parents=None): build_store made the directory "
        "with its parents before, and exist_ok=True",
        "interp.store.writer.x__resume_or_start__mutmut_3": "same as _1 (parents dropped)",
        "interp.store.writer.x__resume_or_start__mutmut_5": "same as _1 (parents=False)",
        "interp.store.writer.x_build_store__mutmut_169": "stop_at_layer None: the whole model runs, the captured "
        "activations are the same",
        "interp.store.writer.x_build_store__mutmut_214": "same as _169",
        "interp.store.writer.x_build_store__mutmut_201": "return instead of break on an empty batch: unreachable "
        "(Tensor.split and token_batches yield no empty batch, and the loop stops at the target first)",
        "interp.store.writer.x_build_store__mutmut_246": "without the at-target write inside the loop the next "
        "(empty) slice ends the loop and the write after it writes the same shard, manifest entry and order",
        "interp.store.writer.x_build_store__mutmut_296": "no model check on the store just written from this model "
        "(its settings, model fingerprint included, were already compared)",
        "interp.store.writer.x_build_store__mutmut_298": "same as _296",
    }
)
# the recall/reasoning dissociation (tests/circuits/test_dissociation_mutants.py)
EQUIVALENT.update(
    {
        f"circuits.recall_reasoning.dissociation.x_{name}": reason
        for name, reason in {
            "ablated_scores__mutmut_17": "zero ablation given a reference it never reads (the mutant builds one)",
            "ablated_scores__mutmut_20": "same as _17",
            "ablated_scores__mutmut_21": "same as _17",
            "dissociation__mutmut_42": "the unablated base: ablated_scores returns before reading sites (None or [])",
            "dissociation__mutmut_43": "the unablated base: no sites, so the method is never read",
            "dissociation__mutmut_48": "same as _43",
            "dissociation__mutmut_49": "same as _43",
            "dissociation__mutmut_80": "an empty set ablated is the unablated model: ablated_scores(sites=[]) gives "
            "the base scores the original reuses",
            "dissociation__mutmut_86": "no shared reference cache: each ablation computes its reference itself, "
            "the same numbers (slower)",
            "_q975__mutmut_11": 'float("NAN") is NaN',
            "_empirical_p__mutmut_14": 'float("NAN") is NaN',
            "empirical_p__mutmut_16": 'float("NAN") is NaN',
            "held_out_verdict__mutmut_141": 'float("NAN") is NaN',
            "verdicts__mutmut_3": "groupby(sort=None) keeps the table's order, as sort=False",
            "verdicts__mutmut_55": "mean_ci95 of no drops is (NaN, NaN, NaN) too (numpy warns on the empty mean)",
            "matched_random_sets__mutmut_45": "Site is a dataclass(order=True) on (layer, component, head, neuron): "
            "on units of one kind per component its own order is the key's",
            "matched_random_sets__mutmut_47": "same as _45",
            "empirical_p__mutmut_3": "np.asarray of a numeric null without dtype: comparisons and isfinite agree",
            "empirical_p__mutmut_5": "same as _3",
            "held_out_verdict__mutmut_71": "an empty set's baseline of 2 NaNs instead of 1: every statistic of it is "
            "NaN either way",
            "held_out_verdict__mutmut_115": "the bootstrap reads conditions 0..3 instead of 0..2: only drops of "
            "conditions 1 and 2 enter the interaction",
            "mean_ci95__mutmut_3": "np.asarray of numeric values without dtype: the mean, std and t-interval agree",
            "mean_ci95__mutmut_5": "same as _3",
            "mean_ci95__mutmut_12": "std(ddof=2) == 0 exactly when std(ddof=1) == 0 (n > 2); at n = 2 equal values "
            "give a half-width of 0 either way",
            "_score_chunk__mutmut_35": "log_softmax(+1) of a 2-D [rows, vocab] tensor is log_softmax(-1)",
            "_score_chunk__mutmut_37": "gather(+1, ...) on a 2-D tensor is gather(-1, ...)",
            "_score_chunk__mutmut_40": "stacking 1-D scores on dim +1 of a 2-D result is dim -1",
            "evaluate_conditions__mutmut_67": 'the reference cache "" instead of None under zero ablation, which '
            "never reads it",
            "bootstrap_interaction__mutmut_12": "rng.integers(n) draws from [0, n) exactly as rng.integers(0, n), same "
            "stream",
            "dissociation__mutmut_92": "same as _86 (reference_cache dropped)",
            "bootstrap_interaction__mutmut_24": "drops from condition 1 instead of 0: the interaction (the two "
            "selectivities summed) does not depend on the unablated accuracy, which cancels, so the draws are equal",
            "evaluate_conditions__mutmut_76": "no precomputed reference cache: ablated_last_logits computes the same "
            "reference activations itself (slower)",
            "evaluate_conditions__mutmut_107": "same as _76 (reference_cache=None)",
            "evaluate_conditions__mutmut_114": "same as _76 (reference_cache dropped)",
            "evaluate_conditions__mutmut_97": "zero ablation given a reference it never reads",
            "evaluate_conditions__mutmut_100": "same as _97",
            "evaluate_conditions__mutmut_101": "same as _97",
            "evaluate_conditions__mutmut_109": "progress=None is falsy like False",
            "evaluate_conditions__mutmut_116": "progress dropped: ablated_last_logits defaults to no progress bar",
            "evaluate_conditions__mutmut_115": "memory_budget dropped: ablated_last_logits defaults to the same "
            "DEFAULT_MEMORY_BUDGET (the one call passes `memory_budget or DEFAULT_MEMORY_BUDGET`); only batching "
            "would change, not the numbers",
            "evaluate_conditions__mutmut_66": "break instead of continue when no condition is ablated: `ablated` "
            "depends on the conditions only, so it is empty for every length group alike",
        }.items()
    }
)

EQUIVALENT.update(
    {
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_61": "patch_node_sets given graph None builds the "
        "task model's graph again: the same senders and edges as the graph already checked against the task",
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_103": "same as _61 (the subsets' patch)",
        "interp.attribution.graddrop.x_false_negative_bound__mutmut_92": "rng.random() <= p instead of < p: differs "
        "only when a draw equals p exactly (probability 2**-53 per draw)",
        "interp.attribution.atp.x_attribution_sweep__mutmut_20": "method None for the effects: the method changes an "
        "effect only at q / k sites (AtP*'s QK fix) and no named sweep holds one; the table still gets the method",
        "interp.patching.engine.x_patch_sites__mutmut_44": "world >= 1 instead of > 1: in one process the batches are "
        "dealt to a single rank (all of them, reordered by cost) and each value is stored by its site index",
    }
)
# Survivors left on purpose: a device move (`.to(model.cfg.device)` -> `.to(None)` or dropped) is a no-op on a
# CPU-only machine and kills only where the model sits on a GPU (store: _site_shapes 4/7, build_store 219/229/231;
# dissociation: _reference_tokens 2, evaluate_conditions 56). They count as survivors, not as equivalent.
STATUS = {
    0: "survived",
    1: "killed",
    3: "killed",
    24: "timeout",
    36: "timeout",
    152: "timeout",
    255: "timeout",
    33: "no_tests",
    34: "skipped",
    35: "suspicious",
}


def tracked_copy(dest: Path) -> None:
    """The working tree's files (tracked, and untracked ones git does not ignore) copied to dest where they differ.

    copy2 keeps each file's mtime, which mutmut compares with its mutated copy's to see a changed source file.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        src, dst = ROOT / name.decode(), dest / name.decode()
        if not src.is_file():
            continue
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def test_selection_hash(tests: list[str]) -> str:
    """mutmut's fingerprint of pytest_add_cli_args_test_selection (mutmut.configuration.Config.config_fingerprint)."""
    return hashlib.sha256(repr(tuple(tests)).encode()).hexdigest()[:12]


def keep_results_when_tests_change(copy: Path, tests: list[str]) -> None:
    """mutmut resets every result when the test selection changes; keep them: it traces the new tests itself.

    A new test only adds kills, so a killed mutant stays killed; --retest runs the survivors again.
    """
    stats = copy / "mutants" / "mutmut-stats.json"
    if stats.is_file():
        data = json.loads(stats.read_text())
        if data.get("config_fingerprint", {}).get("test_selection") not in (None, test_selection_hash(tests)):
            data["config_fingerprint"]["test_selection"] = test_selection_hash(tests)
            stats.write_text(json.dumps(data, indent=4))
    # mutants no test reached are looked at again: a test added since may reach them (mutmut keeps "no tests")
    for meta in (copy / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        if 33 in data["exit_code_by_key"].values():
            data["exit_code_by_key"] = {k: None if v == 33 else v for k, v in data["exit_code_by_key"].items()}
            meta.write_text(json.dumps(data, indent=4))


def configure(copy: Path, module: str, tests: list[str]) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    also = [
        p
        for p in ("interp", "circuits", "sae", "dashboards", "experiments", "tests", "benchmarks")
        if (copy / p).exists()
    ]
    text += (
        "\n[tool.mutmut]\n"
        f"source_paths = [{json.dumps(module)}]\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        f"also_copy = {json.dumps(also)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]\n'
        # mutants fork from a server that has run `pytest --collect-only` (torch, TransformerLens, the test
        # modules imported once), not from mutmut's bare main process
        'process_isolation = "forkserver"\n'
        'forkserver_warmup = "collect"\n'
    )
    (copy / "pyproject.toml").write_text(text)


def exit_codes(copy: Path) -> dict[str, int | None]:
    """mutmut's result per mutant of the copy (None: not run yet)."""
    codes: dict[str, int | None] = {}
    for meta in (copy / "mutants").rglob("*.meta"):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def wilson(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """95% Wilson score interval of successes / n."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def results_of(copy: Path) -> dict:
    counts: dict[str, int] = {}
    survived: list[str] = []
    no_tests: list[str] = []
    equivalent: list[str] = []
    for meta in (copy / "mutants").rglob("*.meta"):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = "not_run" if code is None else STATUS.get(code, "killed" if code else "survived")
            if status == "survived" and name in EQUIVALENT:
                status = "equivalent"
                equivalent.append(name)
            counts[status] = counts.get(status, 0) + 1
            if status == "survived":
                survived.append(name)
            if status == "no_tests":
                no_tests.append(name)
    judged = counts.get("killed", 0) + counts.get("survived", 0) + counts.get("timeout", 0)
    with_equivalent = judged + counts.get("equivalent", 0)
    return {
        **counts,
        "total": sum(counts.values()),
        # among the mutants some selected test reaches; kill_rate_strict also counts the ones no selected test runs
        # ("no_tests": code the module's fast tests never call) as surviving
        "kill_rate": round((counts.get("killed", 0) + counts.get("timeout", 0)) / with_equivalent, 4)
        if with_equivalent
        else None,
        "kill_rate_strict": round(
            (counts.get("killed", 0) + counts.get("timeout", 0)) / (with_equivalent + counts.get("no_tests", 0)), 4
        )
        if with_equivalent + counts.get("no_tests", 0)
        else None,
        # the measure: killed among the mutants a test reaches, equivalent mutants (listed by hand) left out
        "kill_rate_judged": round((counts.get("killed", 0) + counts.get("timeout", 0)) / judged, 4) if judged else None,
        # 95% Wilson interval of kill_rate_judged: the judged mutants as a sample of the module's (a partial or
        # --sample-digits run)
        "kill_rate_judged_ci95": wilson(counts.get("killed", 0) + counts.get("timeout", 0), judged) if judged else None,
        "survivors": sorted(survived),
        "no_tests_mutants": sorted(no_tests),
        "equivalent_mutants": {name: EQUIVALENT[name] for name in sorted(equivalent)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="modules to run (keys of MODULES)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/interp-mutation"))
    parser.add_argument(
        "--minutes", type=float, default=45.0, help="per module, then its run is stopped and counted as far as it got"
    )
    parser.add_argument(
        "--rescore", action="store_true", help="read the results already in --work again (after editing EQUIVALENT)"
    )
    parser.add_argument("--fresh", action="store_true", help="delete a module's copy and its results first")
    parser.add_argument(
        "--retest",
        action="store_true",
        help="run the survivors and no-test mutants again against the current tests (and those not run yet)",
    )
    parser.add_argument(
        "--retest-timeouts",
        action="store_true",
        help="with --retest, also the mutants that timed out (a timeout counts as a kill, so a run starved of CPU can "
        "overstate the kill rate: rerun them on a quiet machine)",
    )
    parser.add_argument(
        "--sample-digits",
        default="",
        help="test only the mutants whose number ends in one of these digits (e.g. 147: a systematic 30%% sample across "
        "every function), for a module too large for the time at hand; the kill rate then comes with its Wilson CI",
    )
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.json")
    args = parser.parse_args()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "INTERP_SHAPECHECK": "0",
    }  # mutmut's trampolines sit where jaxtyping's hook would
    mutmut = Path(sys.executable).with_name("mutmut")
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report.update(
        machine=platform.platform(),
        cpus=os.cpu_count(),
        command="python benchmarks/mutation.py " + " ".join(sys.argv[1:]),
    )
    for module in args.only or list(MODULES):
        copy = args.work / module.replace("/", "_")
        previous = report.get("modules", {}).get(module, {})
        if args.rescore:
            if (copy / "mutants").is_dir():
                kept = {
                    k: v
                    for k, v in previous.items()
                    if k in ("seconds", "seconds_runs", "cpu_seconds", "cpu_seconds_runs", "finished", "tests", "load")
                }
                report.setdefault("modules", {})[module] = {**results_of(copy), **kept}
                args.out.write_text(json.dumps(report, indent=1) + "\n")
            continue
        if args.fresh:
            shutil.rmtree(copy, ignore_errors=True)
        resumed = (copy / "mutants" / "mutmut-stats.json").is_file()
        copy.mkdir(parents=True, exist_ok=True)
        tracked_copy(copy)
        configure(copy, module, MODULES[module])
        keep_results_when_tests_change(copy, MODULES[module])
        names: list[str] = []
        if args.retest and resumed and exit_codes(copy):
            # the survivors and the mutants no test reached, against the current tests, and those not run yet
            again = (
                None,
                0,
                33,
                *([code for code, status in STATUS.items() if status == "timeout"] if args.retest_timeouts else []),
            )
            names = [name for name, code in exit_codes(copy).items() if code in again]
            if not names:
                print(f"{module}: no survivors to test again", flush=True)
                continue
        if args.sample_digits:
            patterns = [f"*__mutmut_*{digit}" for digit in args.sample_digits]
            names = [n for n in names if any(n.endswith(d) for d in args.sample_digits)] if names else patterns
        start, load_before = time.time(), os.getloadavg()[0]
        log = open(copy / "mutmut.log", "a")
        process = subprocess.Popen(
            [str(mutmut), "run", "--max-children", str(args.children), *names],
            cwd=copy,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a time box stops the workers and the fork server too
        )
        # wait4: the CPU time of mutmut and every process it waited for (workers, fork server), which on an idle
        # machine is what the run would take in wall time times the cores it keeps busy
        finished, usage = False, None
        while time.time() - start < args.minutes * 60:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                finished = os.waitstatus_to_exitcode(status) == 0
                break
            time.sleep(2)
        else:
            os.killpg(process.pid, signal.SIGTERM)
            time.sleep(20)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, _, usage = os.wait4(process.pid, 0)
        process.returncode = 0  # reaped above
        log.close()
        seconds = round(time.time() - start, 1)
        cpu = round(usage.ru_utime + usage.ru_stime, 1)
        runs = (previous.get("seconds_runs", []) if resumed else []) + [seconds]
        cpu_runs = (previous.get("cpu_seconds_runs", []) if resumed else []) + [cpu]
        result = {
            **results_of(copy),
            "seconds": round(sum(runs), 1),  # all the runs this copy's results took (a resumed module: several)
            "seconds_runs": runs,
            # CPU seconds (user + sys) of the mutmut process tree: the machine's load does not inflate them
            "cpu_seconds": round(sum(cpu_runs), 1),
            "cpu_seconds_runs": cpu_runs,
            "finished": finished,
            "tests": MODULES[module],
            "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # 1-minute load average, start / end
        }
        if result.get("not_run"):
            result["finished"] = False
        report.setdefault("modules", {})[module] = result
        print(
            f"{module}: killed {result.get('killed', 0)}, survived {result.get('survived', 0)}, timeout {result.get('timeout', 0)}, "
            f"not run {result.get('not_run', 0)}, judged {result['kill_rate_judged']}, {seconds:.0f} s ({cpu:.0f} CPU s)"
            f"{'' if finished else ' (stopped: time box)'}",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
