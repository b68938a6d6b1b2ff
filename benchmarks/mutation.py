"""Mutation testing of the core modules with mutmut: which planted bugs do their fast tests kill?

    python benchmarks/mutation.py                         # every module below (make mutation)
    python benchmarks/mutation.py --only sae/sparse_ops.py --minutes 10

For each module (or package) a fresh copy of the tracked tree is made under --work, mutmut is pointed at
that module and at the module's fast tests, and its results are read back: killed / survived / timeout /
other per module, the surviving mutants by name (`mutmut show NAME` in that copy prints the diff), and
the kill rate. Writes benchmarks/results/mutation.json. Not part of CI: minutes per module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
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
        "tests/circuits/test_recall_reasoning_heldout.py",
        "tests/circuits/test_recall_reasoning.py",
        "tests/circuits/test_recall_reasoning_neurons.py",
    ],
    "circuits/scan_snap/predictions.py": [
        "tests/circuits/test_scan_snap_verdicts.py",
        "tests/circuits/test_scan_snap_bounds.py",
        "tests/circuits/test_scan_snap_replication.py",
        "tests/circuits/test_scan_snap.py",
    ],
    "interp/store": ["tests/test_store.py", "tests/test_chunked.py"],
    "interp/attribution": ["tests/test_attribution.py", "tests/test_attribution_qk_summed.py"],
    "interp/patching": ["tests/test_patching.py", "tests/test_engine_batches.py"],
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
    """The tracked files of the working tree (as committed or modified) copied to dest."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            (dest / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name.decode())


def configure(copy: Path, module: str, tests: list[str]) -> None:
    text = (copy / "pyproject.toml").read_text()
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
    )
    (copy / "pyproject.toml").write_text(text)


def results_of(copy: Path) -> dict:
    counts: dict[str, int] = {}
    survived: list[str] = []
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
        "survivors": sorted(survived),
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
        if args.rescore:
            if (copy / "mutants").is_dir():
                kept = {
                    k: v
                    for k, v in report.get("modules", {}).get(module, {}).items()
                    if k in ("seconds", "finished", "tests")
                }
                report.setdefault("modules", {})[module] = {**results_of(copy), **kept}
                args.out.write_text(json.dumps(report, indent=1) + "\n")
            continue
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        tracked_copy(copy)
        configure(copy, module, MODULES[module])
        start = time.time()
        try:
            subprocess.run(
                [str(mutmut), "run"],
                cwd=copy,
                env=env,
                timeout=args.minutes * 60,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            finished = True
        except subprocess.TimeoutExpired:
            finished = False
        result = {
            **results_of(copy),
            "seconds": round(time.time() - start, 1),
            "finished": finished,
            "tests": MODULES[module],
        }
        report.setdefault("modules", {})[module] = result
        print(
            f"{module}: killed {result.get('killed', 0)}, survived {result.get('survived', 0)}, timeout {result.get('timeout', 0)}, "
            f"kill rate {result['kill_rate']}, {result['seconds']:.0f} s{'' if finished else ' (stopped: time box)'}",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
