"""Mutation testing of the core modules with mutmut: which planted bugs do their fast tests kill?

    python benchmarks/mutation.py                         # every module below (make mutation)
    python benchmarks/mutation.py --only sae/sparse_ops.py --minutes 10
    python benchmarks/mutation.py --only interp/store --retest   # survivors again, after adding tests
    python benchmarks/mutation.py --retest --quick        # make mutation: the largest modules on a 30% sample

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

from mutation_equivalents import EQUIVALENT  # the hand-judged equivalent mutants (run as a script from benchmarks/)

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
    "circuits/recall_reasoning/verdicts.py": [
        "tests/circuits/test_dissociation_clauses.py",
        "tests/circuits/test_dissociation_mutants.py",
        "tests/circuits/test_recall_reasoning_heldout.py",
        "tests/circuits/test_recall_reasoning.py",
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
        "tests/test_attribution_paths.py",
        # sharded_effects' world > 1 branch runs only in spawned ranks: mutmut maps the test to it through the
        # one-process reference the test computes first, and the ranks inherit MUTANT_UNDER_TEST, so the mutant is
        # live in them (its slow parametrizations stay deselected, as in CI)
        "tests/test_distributed_commands.py::test_atp_sweep_sharded_over_prompts_equals_one_process",
    ],
    "interp/patching": [
        "tests/test_patching.py",
        "tests/test_patching_mutants.py",
        "tests/test_patching_mutants2.py",
        "tests/test_engine_batches.py",
        "tests/test_patching_floor.py",
        "tests/test_patching_ragged.py",
        "tests/test_path_patching.py",
        "tests/test_patching_distributed.py",  # patch_sites' torchrun branch, in spawned ranks (see attribution)
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
# --quick (make mutation): the two largest modules tested on a systematic 30% sample (mutant numbers ending in 1, 4 or
# 7, across every function), with the kill rate's Wilson interval, so that a fresh run of every module fits in about
# 45 minutes on 2 idle cores (~80 CPU minutes; all of them: ~150). make mutation-full tests every mutant.
QUICK_SAMPLE = {"interp/patching": "147", "interp/attribution": "147"}
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the sample of QUICK_SAMPLE for the largest modules (a fresh run of every module in ~45 min on 2 cores)",
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
        digits = args.sample_digits or (QUICK_SAMPLE.get(module, "") if args.quick else "")
        if digits:
            patterns = [f"*__mutmut_*{digit}" for digit in digits]
            names = [n for n in names if any(n.endswith(d) for d in digits)] if names else patterns
            if not names:
                print(f"{module}: no sampled survivors to test again", flush=True)
                continue
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
