import json

import pytest

from typer.testing import CliRunner

from experiments.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("models", "cache", "patch", "dashboard", "demo", "corpus", "run", "sae"):
        assert command in result.output


def test_models_lists_the_bundled_model(model):
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "SmolLM2-135M-Instruct" in result.output and "converted" in result.output


def test_patch_writes_a_results_dir_and_dashboard(model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {
            "clean": "The capital of France is",
            "corrupted": "The capital of Spain is",
            "answer": " Paris",
            "wrong": " Madrid",
        },
        {
            "clean": "The capital of Japan is",
            "corrupted": "The capital of Italy is",
            "answer": " Tokyo",
            "wrong": " Rome",
        },
    ]
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    result = runner.invoke(app, ["patch", str(pairs), "--out", str(tmp_path / "run"), "--sweep", "resid_pre"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / "dashboard.html").exists() and (run / "resid_pre.parquet").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    # patching the country token's residual at layer 0 restores the clean answer completely
    assert metrics["resid_pre_top"]["restoration"] > 0.99
    pages = runner.invoke(app, ["dashboard", str(run)])
    assert pages.exit_code == 0 and "index.html" in pages.output


def test_patch_bad_input_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["patch", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "does not exist" in result.output
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"clean": "a", "corrupted": "b", "answer": " c", "wrong": " d"}))
    result = runner.invoke(app, ["patch", str(pairs), "--out", str(tmp_path / "run"), "--sweep", "heds"])
    assert result.exit_code == 2 and "'heads'" in result.output


def test_cache_fills_a_store_that_matches_run_with_cache(model, tmp_path):
    import torch

    from interp.store import open_store

    corpus = tmp_path / "text.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    result = runner.invoke(
        app,
        [
            "cache",
            "--out",
            str(tmp_path / "store"),
            "--site",
            "blocks.2.hook_resid_post",
            "--n-tokens",
            "64",
            "--seq-len",
            "16",
            "--corpus",
            str(corpus),
        ],
    )
    assert result.exit_code == 0, result.output
    store = open_store(tmp_path / "store", model)
    tokens = store.tokens()
    acts = store.activations("blocks.2.hook_resid_post")
    _, cache = model.run_with_cache(tokens.view(-1, 16)[:2], names_filter="blocks.2.hook_resid_post")
    torch.testing.assert_close(acts[:32], cache["blocks.2.hook_resid_post"].reshape(32, -1), atol=1e-4, rtol=1e-4)


def test_sae_train_then_eval(model, tmp_path):
    import pandas as pd

    out = tmp_path / "sae"
    args = [
        "sae",
        "train",
        "--out",
        str(out),
        "--site",
        "blocks.3.hook_resid_post",
        "--n-tokens",
        "4096",
        "--batch-size",
        "1024",
        "--d-sae",
        "576",
        "--k",
        "8",
        "--eval-tokens",
        "512",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "sae" / "cfg.json").exists()
    # probing and absorption (on by default) have their own tests (tests/sae/test_evals.py); off here to stay fast
    result = runner.invoke(app, ["sae", "eval", str(out), "--n-tokens", "512", "--no-probing", "--no-absorption"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["l0"] == 8.0 and metrics["tokens"] == 512
    per_token = pd.read_parquet(out / "eval" / "per_token.parquet")
    assert len(per_token) == 512
    bad = runner.invoke(app, ["sae", "train", "--out", str(tmp_path / "bad"), "--d-sae", "8", "--k", "8"])
    assert bad.exit_code == 2 and "k must be an integer with 0 < k < d_sae=8" in bad.output, bad.output


def test_sae_train_select_dtype(model, tmp_path):
    """--select-dtype reaches the SAE's config (and so its resume check); refused for other architectures and for
    dtypes the config does not know, with the reason."""
    out = tmp_path / "sae"
    args = ["sae", "train", "--out", str(out), "--n-tokens", "2048", "--batch-size", "1024", "--d-sae", "576"]
    args += ["--k", "8", "--eval-tokens", "256", "--select-dtype", "bfloat16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sae" / "cfg.json").read_text())  # SAELens format; ours under interp_toolkit
    assert saved["interp_toolkit"]["sae_config"]["select_dtype"] == "bfloat16"
    changed = runner.invoke(app, args[:-1] + ["float16"])  # resuming the same folder with another selection
    assert changed.exit_code == 2 and "select_dtype" in changed.output, changed.output
    relu = runner.invoke(
        app, ["sae", "train", "--out", str(tmp_path / "r"), "--architecture", "relu", "--select-dtype", "bfloat16"]
    )
    assert relu.exit_code == 2 and "only the topk architecture" in relu.output, relu.output
    bad = runner.invoke(app, ["sae", "train", "--out", str(tmp_path / "b"), "--select-dtype", "int8"])
    assert bad.exit_code == 2 and "select_dtype='int8'" in bad.output, bad.output


def test_patch_with_attribution_estimates(model, tmp_path):
    import pandas as pd

    pairs = tmp_path / "pairs.csv"
    pd.DataFrame(
        [
            {
                "clean": "The capital of France is",
                "corrupted": "The capital of Spain is",
                "answer": " Paris",
                "wrong": " Madrid",
            }
        ]
    ).to_csv(pairs, index=False)
    result = runner.invoke(
        app, ["patch", str(pairs), "--out", str(tmp_path / "run"), "--sweep", "resid_pre", "--method", "atp"]
    )
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(tmp_path / "run" / "resid_pre.parquet")
    assert (df["method"] == "atp").all() and len(df) == 30 * 5
    exact = runner.invoke(app, ["patch", str(pairs), "--out", str(tmp_path / "exact"), "--sweep", "resid_pre"])
    assert exact.exit_code == 0, exact.output
    both = df.merge(
        pd.read_parquet(tmp_path / "exact" / "resid_pre.parquet"), on=["layer", "position"], suffixes=("_atp", "_exact")
    )
    # positions the corruption leaves unchanged: clean - corrupted is 0, so both are 0 (up to batching round-off)
    assert both.loc[both.position < 3, ["restoration_atp", "restoration_exact"]].abs().max().max() < 1e-5
    # late layers at the last token are nearly linear: the estimate is close to the exact effect there
    late = both[(both.position == 4) & (both.layer >= 25)]
    assert (late.restoration_atp - late.restoration_exact).abs().max() < 0.25
    bad = runner.invoke(app, ["patch", str(pairs), "--out", str(tmp_path / "bad"), "--method", "atpp"])
    assert bad.exit_code == 2 and "'atp'" in bad.output


PAIR = {
    "clean": "The capital of France is",
    "corrupted": "The capital of Spain is",
    "answer": " Paris",
    "wrong": " Madrid",
}


def test_patch_refuses_another_config_and_degenerate_pairs_before_the_sweep(model, tmp_path):
    from experiments.patching_sweep import PatchingSweepConfig
    from interp.results import ResultsDir

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(PAIR))
    run = tmp_path / "run"
    ResultsDir.create(run, PatchingSweepConfig(pairs=(PAIR,), sweeps=("resid_pre",)), title="Activation patching")
    other = runner.invoke(app, ["patch", str(pairs), "--out", str(run), "--sweep", "attn_out"])
    assert other.exit_code == 2 and "differs in sweeps" in other.output and "--overwrite" in other.output, other.output
    assert json.loads((run / "config.json").read_text())["config"]["sweeps"] == ["resid_pre"]
    # answer == wrong: logit_diff is 0 on clean and corrupted alike, refused before the sweep
    same = tmp_path / "same.jsonl"
    same.write_text(json.dumps({**PAIR, "wrong": " Paris"}))
    refused = runner.invoke(app, ["patch", str(same), "--out", str(tmp_path / "degenerate")])
    assert (
        refused.exit_code == 2
        and "give the same logit_diff" in refused.output
        and not (tmp_path / "degenerate").exists()
    )
    lengths = tmp_path / "lengths.jsonl"
    lengths.write_text(json.dumps({**PAIR, "corrupted": "The capital city of Spain is"}))
    refused = runner.invoke(app, ["patch", str(lengths), "--out", str(tmp_path / "lengths")])
    assert refused.exit_code == 2 and "pass --align" in refused.output and "align=True" not in refused.output


@pytest.mark.slow
def test_patch_reruns_resume_and_overwrite_replaces(model, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(PAIR))
    run = tmp_path / "run"
    first = runner.invoke(app, ["patch", str(pairs), "--out", str(run), "--sweep", "resid_pre"])
    assert first.exit_code == 0, first.output
    (run / "metrics.json").write_text("{corrupt")  # a damaged earlier attempt: the same settings redo the run
    again = runner.invoke(app, ["patch", str(pairs), "--out", str(run), "--sweep", "resid_pre"])
    assert (
        again.exit_code == 0 and json.loads((run / "metrics.json").read_text())["resid_pre_top"]["restoration"] > 0.99
    )
    replaced = runner.invoke(app, ["patch", str(pairs), "--out", str(run), "--sweep", "attn_out", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not (run / "resid_pre.parquet").exists() and (run / "attn_out.parquet").exists()


def test_circuit_command_refuses_bad_input_before_any_work(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(app, ["circuit", "--out", str(tmp_path / "a"), "--method", "eapp"])
    assert (
        bad.exit_code == 2
        and "'eapp' is not an edge scoring method" in bad.output
        and "Did you mean: 'eap'" in bad.output
    )
    missing = runner.invoke(app, ["circuit", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "b")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
