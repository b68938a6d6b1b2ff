"""Every CLI subcommand run as a user runs it: `python -m experiments.cli ...` in a subprocess, with tiny settings.

Kept in its own file so the CLI's entry point can be retargeted in one place (INTERP below). The runs
that take minutes (`interp run ... --quick`, `interp demo`) are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from interp.corpus import default_corpus_dir

REPO = Path(__file__).resolve().parents[1]
INTERP = [sys.executable, "-m", "experiments.cli"]  # the `interp` console script's module
COMMANDS = ("models", "corpus", "cache", "patch", "dashboard", "run", "sae", "demo")
RUN_COMMANDS = ("scan-snap", "sae", "recall-reasoning", "dark-matter", "reachability")


def interp(*args: str, timeout: int = 600, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRITON_INTERPRET": "1",
    }
    command = (prefix or INTERP) + [str(a) for a in args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result.stdout


def test_help_lists_every_command_and_run_subcommand():
    top = ok(interp("--help"))
    assert all(name in top for name in COMMANDS), top
    assert all(name in ok(interp("run", "--help")) for name in RUN_COMMANDS)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["cache", "--out", "{tmp}/store", "--site", "blocks.0.hook_resid_post", "--n-tokens", "0"],
            "--n-tokens 0: must be a positive integer",
        ),
        (["patch", "{tmp}/missing.jsonl", "--out", "{tmp}/run"], "does not exist"),
        (["dashboard", "{tmp}"], "no results directory to build"),
        (
            ["sae", "train", "--out", "{tmp}/sae", "--d-sae", "16", "--batch-size", "-3"],
            "--batch-size -3: must be a positive integer",
        ),
        (
            ["sae", "train", "--out", "{tmp}/sae", "--store", "{tmp}"],
            "no manifest.json there, so it is not an activation store",
        ),
        (["sae", "eval", "{tmp}/nothing"], "not a folder"),
        (["run", "scan-snap", "--out", "{tmp}/file.txt"], "--out"),
        (
            ["demo", "--out", "{tmp}/demo", "--only", "scan_snapp"],
            "'scan_snapp' is not a demo step. Did you mean: 'scan_snap'",
        ),
    ],
    ids=["cache", "patch", "dashboard", "sae-train", "sae-train-store", "sae-eval", "run", "demo"],
)
def test_bad_input_exits_2_with_one_line_naming_it(tmp_path, args, message):
    (tmp_path / "file.txt").write_text("not a folder")
    result = interp(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, (result.stdout, result.stderr[-2000:])
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_models_lists_the_bundled_model():
    assert "SmolLM2-135M-Instruct" in ok(interp("models"))


@pytest.mark.skipif(
    not (default_corpus_dir() / "manifest.json").exists(),
    reason="the corpus is not cached; `interp corpus fetch` would need the registries",
)
def test_corpus_fetch_of_a_cached_corpus_touches_no_network(tmp_path):
    log = tmp_path / "net.log"
    out = ok(
        interp(
            "corpus",
            "fetch",
            prefix=[sys.executable, str(REPO / "tests" / "net_guard.py"), str(log), "-m", "experiments.cli"],
        )
    )
    assert out.strip() == f"corpus: {default_corpus_dir()}"
    assert not log.exists() or log.read_text() == ""


@pytest.mark.slow  # loads the model in a fresh process: ~50 s on a loaded 2-core machine
def test_patch_with_align_metric_and_atp_star_then_dashboard_index(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "clean": "The capital of France is",
            "corrupted": "The capital of Italy is",
            "answer": " Paris",
            "wrong": " Rome",
        },
        {
            "clean": "The capital city of Spain is",
            "corrupted": "The capital city of Japan is",
            "answer": " Madrid",
            "wrong": " Tokyo",
        },
    ]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    refused = interp("patch", pairs, "--out", tmp_path / "refused", "--sweep", "heads")
    assert refused.returncode == 2 and "pass --align" in refused.stderr
    out = tmp_path / "run"
    ok(
        interp(
            "patch", pairs, "--out", out, "--sweep", "heads", "--align", "--metric", "answer_prob", "--method", "atp*"
        )
    )
    heads = pd.read_parquet(out / "heads.parquet")
    assert (
        (heads["method"] == "atp*").all() and len(heads) == 30 * 9 and heads["reliable"].isna().all()
    )  # z has no softmax to fix
    assert json.loads((out / "config.json").read_text())["config"]["align"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "answer_prob" and metrics["method"] == "atp*" and metrics["n_pairs"] == 2
    assert (
        0 < metrics["corrupted_metric"] < metrics["clean_metric"]
    )  # the clean prompts give their answer a higher probability
    index = tmp_path / "index.html"
    pages = ok(interp("dashboard", out, "--index", index)).split()
    assert str(index) in pages and str(out / "dashboard.html") in pages
    assert "Activation patching" in index.read_text() and "atp*" in (out / "dashboard.html").read_text()


@pytest.mark.slow  # two fresh processes that load the model: ~60 s on a loaded 2-core machine
def test_cache_then_sae_train_from_the_store(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    store = tmp_path / "store"
    ok(
        interp(
            "cache",
            "--out",
            store,
            "--site",
            "blocks.2.hook_resid_post",
            "--n-tokens",
            "512",
            "--seq-len",
            "32",
            "--corpus",
            corpus,
        )
    )
    out = tmp_path / "sae"
    ok(
        interp(
            "sae",
            "train",
            "--out",
            out,
            "--site",
            "blocks.2.hook_resid_post",
            "--store",
            store,
            "--n-tokens",
            "512",
            "--batch-size",
            "128",
            "--d-sae",
            "64",
            "--k",
            "4",
            "--eval-tokens",
            "128",
            "--checkpoint-every",
            "2",
        )
    )
    assert json.loads((out / "sae" / "cfg.json").read_text())["d_sae"] == 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["l0"] <= 4, metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN_COMMANDS)
def test_run_quick(tmp_path, name):
    out = tmp_path / name
    printed = ok(interp("run", name, "--out", out, "--quick", timeout=1800))
    assert "dashboard:" in printed and (out / "dashboard.html").exists() and (out / "metrics.json").exists()


@pytest.mark.slow
def test_demo_one_step(tmp_path):
    printed = ok(interp("demo", "--out", tmp_path / "demo", "--only", "scan_snap", "--workers", "1", timeout=1800))
    assert "dashboard:" in printed and (tmp_path / "demo" / "index.html").exists()
