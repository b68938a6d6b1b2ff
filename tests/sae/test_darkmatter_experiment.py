"""The dark-matter experiment end to end on the tiny random model; the notebook on the quick setting (slow)."""

import json
from dataclasses import replace
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

import experiments.dark_matter as dark_matter
from experiments.dark_matter import DarkMatterConfig, run, split_sequences
from sae.darkmatter import SyntheticSpec
from sae.darkmatter import saes as darkmatter_saes
from sae.io import load_sae
from sae.train import TrainConfig
from tests.conftest import TINY_GQA

SITE = "blocks.1.hook_resid_post"
REQUIRED = [
    "vector_r2",
    "norm_r2",
    "fvu_sae",
    "fvu_sae_plus_linear",
    "widths",
    "cross_width_norm_r2",
    "nonlinear_norm_gain",
    "pursuit_nonlinear_fvu_change",
    "earlier_layer_nonlinear_fvu_change",
    "ce_share_linear",
    "ce_share_nonlinear",
    "synthetic_corr",
]


def _tiny_config(cache: Path) -> DarkMatterConfig:
    return DarkMatterConfig(
        model=TINY_GQA,
        layer=1,
        n_tokens=32 * 96,
        seq_len=32,
        store_dtype="float32",
        fit_fraction=2 / 3,
        widths=(64, 128, 256),
        k=8,
        training=TrainConfig(
            steps=60,
            batch_size=256,
            lr=3e-3,
            warmup_steps=3,
            checkpoint_every=20,
            until_converged=True,
            min_steps=20,
            converge_tol=0.05,
        ),
        short_training=TrainConfig(steps=30, batch_size=256, lr=3e-3, warmup_steps=3, checkpoint_every=30),
        grid_widths=(64, 128),
        grid_positions_dropped=(1, 4, 16),
        grid_ks=(8, 16),
        grid_fit_tokens=512,
        extra_heldout_seqs=16,
        bootstrap=100,
        pursuit_tokens=512,
        downstream_seqs=4,
        synthetic=SyntheticSpec(n_tokens=2000),
        cache_dir=str(cache),
        png=False,
        threads=1,
    )


def _family_sae_dir(cache: Path, width: int) -> Path:
    """The family's SAE at `width` (k=8, trained until converged) among the grid's other SAEs of that width."""
    found = [
        d
        for d in cache.glob(f"*/saes/resid_L1-W{width}-k8-*")
        if json.loads((d / "sae" / "cfg.json").read_text())["interp_toolkit"]["train_config"]["until_converged"]
    ]
    assert len(found) == 1, found
    return found[0]


def test_tiny_run_writes_the_metrics_and_reuses_store_and_saes(tmp_path, tiny_model, monkeypatch):
    config = _tiny_config(tmp_path / "cache")
    out = run(config, tmp_path / "run")
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(key in metrics for key in REQUIRED), [k for k in REQUIRED if k not in metrics]
    assert metrics["widths"] == [64, 128, 256] and all(
        len(metrics[k]) == 3 for k in ("vector_r2", "norm_r2", "fvu_sae", "fvu_sae_plus_linear")
    )
    assert set(metrics["synthetic_corr"]) == {"activation_noise", "reconstruction_noise"}
    assert all(l0 <= 8 for l0 in metrics["l0"]) and "Claims of the paper" in (out / "dashboard.html").read_text()
    # one CI per width, from the per-sequence bootstrap that test_darkmatter_uncertainty checks against a slow loop
    assert len(metrics["norm_r2_ci"]) == len(metrics["norm_r2"]) and all(
        high > low for low, high in metrics["norm_r2_ci"]
    )
    assert (
        metrics["fit_tokens"] == 64 * 31 and metrics["eval_tokens"] == 32 * 31
    )  # position 0 of each sequence left out

    # fvu_sae on held-out tokens, recomputed from a fresh TransformerLens forward of the same sequences.
    sae = load_sae(_family_sae_dir(tmp_path / "cache", 64) / "sae")
    _, held_seqs = split_sequences(96, config.fit_fraction, config.seed)
    assert len(held_seqs) == 32
    held_out = torch.randint(0, 101, (96, 32), generator=torch.Generator().manual_seed(0))[held_seqs]
    with torch.no_grad():
        x = tiny_model.run_with_cache(held_out, names_filter=SITE)[1][SITE][:, 1:].reshape(-1, 64).double()
        expected = (x - sae(x.float()).double()).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert metrics["fvu_sae"][0] == pytest.approx(float(expected), rel=1e-4)

    def no_training(*args, **kwargs):
        raise AssertionError("a second run with the same settings must reuse the cached SAEs")

    _check_grid(metrics, out, config, tmp_path / "cache")
    monkeypatch.setattr(darkmatter_saes, "train_sae", no_training)
    again = json.loads((run(config, tmp_path / "run2") / "metrics.json").read_text())
    assert again["fvu_sae"] == metrics["fvu_sae"] and again["synthetic_corr"] == metrics["synthetic_corr"]


def _check_grid(metrics, out, config, cache):
    """The grid's rows, per-width CE CIs, and one cell recomputed independently with numpy."""
    import numpy as np
    import pandas as pd

    grid = metrics["norm_r2_grid"]
    assert len(grid) == 2 * 3 * 2 * 2 and metrics["norm_r2_grid_missing"] == 0
    assert {(r["width"], r["positions_dropped"], r["training"], r["k"]) for r in grid} == {
        (w, p, t, k) for w in (64, 128) for p in (1, 4, 16) for t in ("short", "converged") for k in (8, 16)
    }
    assert all(r["ci_low"] <= r["norm_r2"] <= r["ci_high"] and r["status"] == "done" for r in grid)
    assert all(r["steps"] == 30 for r in grid if r["training"] == "short") and all(
        r["steps"] <= 60 for r in grid if r["training"] == "converged"
    )
    for key in ("ce_share_nonlinear_ci", "ce_share_linear_ci"):
        assert len(metrics[key]) == 3 and all(low <= high for low, high in metrics[key])
        assert all(low <= v <= high for v, (low, high) in zip(metrics[key.removesuffix("_ci")], metrics[key]))
    assert metrics["norm_baseline_r2"]["l0"] is None and "not applicable" in metrics["norm_baseline_l0"]
    claims = pd.read_parquet(out / "claims.parquet")
    assert (
        claims.claim.str.contains("CHOSEN AFTER LOOKING").any()
        and claims.claim.str.contains("closest to the paper").any()
    )
    page = (out / "dashboard.html").read_text()
    assert "Norm R^2 grid" in page and "eval_seqs" in page and "norm_r2_extra_heldout" in page
    # the CE shares' CIs on the page, one row per width with its interval as the metrics have it
    low, high = metrics["ce_share_nonlinear_ci"][0]
    assert "CE shares with bootstrap CIs" in page and f"[{low:.2f}, {high:.2f}]" in page
    wide = [r for r in grid if (r["ci_high"] - r["ci_low"]) / 2 > config.grid_ci_target]
    assert (
        len(metrics["norm_r2_grid_more_tokens"]) == len(wide) > 0
        and "on more tokens" in (out / "dashboard.html").read_text()
    )

    # W64 k8 short, first 4 positions dropped: numpy lstsq on the first grid_fit_tokens fit rows at positions >= 4, judged on held-out rows
    # there: the store's held-out sequences and the 16 extra ones past the store (the seeded random corpus continued), pooled
    fit_seqs, held_seqs = split_sequences(96, config.fit_fraction, config.seed)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 101, (96, 32), generator=generator)
    extra_tokens = torch.randint(0, 101, (16, 32), generator=generator)
    short = [
        d
        for d in cache.glob("*/saes/resid_L1-W64-k8-*")
        if json.loads((d / "sae" / "cfg.json").read_text())["interp_toolkit"]["steps_trained"] == 30
    ]
    assert len(short) == 1
    sae = load_sae(short[0] / "sae")
    with torch.no_grad():
        model = dark_matter.load_model(TINY_GQA)
        acts = {
            name: model.run_with_cache(seqs, names_filter=SITE)[1][SITE][:, 4:].reshape(-1, 64).double()
            for name, seqs in (("fit", tokens[fit_seqs]), ("held", tokens[held_seqs]), ("extra", extra_tokens))
        }
        sq = {name: (x - sae(x.float()).double()).pow(2).sum(-1).numpy() for name, x in acts.items()}
    x_fit, y_fit = acts["fit"].numpy()[:512], sq["fit"][:512]
    solution = np.linalg.lstsq(x_fit, y_fit, rcond=None)[0]
    residual = sq["held"] - acts["held"].numpy() @ solution
    expected = 1 - (residual**2).sum() / ((sq["held"] - sq["held"].mean()) ** 2).sum()
    y_all = np.concatenate([sq["held"], sq["extra"]])
    x_all = np.concatenate([acts["held"].numpy(), acts["extra"].numpy()])
    pooled = 1 - ((y_all - x_all @ solution) ** 2).sum() / ((y_all - y_all.mean()) ** 2).sum()
    row = next(r for r in grid if (r["width"], r["positions_dropped"], r["training"], r["k"]) == (64, 4, "short", 8))
    assert row["norm_r2"] == pytest.approx(pooled, abs=1e-4) and row["norm_r2_store_heldout"] == pytest.approx(
        expected, abs=1e-4
    )
    assert row["eval_seqs"] == 32 + 16 and row["eval_tokens"] == len(y_all)
    assert all(r["store_heldout_ci"][0] <= r["norm_r2_store_heldout"] <= r["store_heldout_ci"][1] for r in grid)

    # the same cell judged also on the fit rows its probe did not see (rows 512.. at positions >= 4), alone and pooled with the held-out rows
    from sae.darkmatter.data import cache_folder, load_split
    from sae.darkmatter.grid import GridCell, norm_r2_on_more_tokens

    more = norm_r2_on_more_tokens(
        config, cache_folder(config), load_split(model, config, cache_folder(config)), GridCell("short", 64, 8), 4
    )

    def r2_of(y, x):
        return 1 - ((y - x @ solution) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    y_unused, x_unused = sq["fit"][512:], acts["fit"].numpy()[512:]
    assert more["held_out"] == pytest.approx(expected, abs=1e-4) and more["fit_unused_tokens"] == len(y_unused)
    assert more["fit_unused"] == pytest.approx(r2_of(y_unused, x_unused), abs=1e-4)
    assert more["pooled"] == pytest.approx(
        r2_of(np.concatenate([sq["held"], y_unused]), np.concatenate([acts["held"].numpy(), x_unused])), abs=1e-4
    )
    assert all(more[f"{k}_ci"][0] <= more[k] <= more[f"{k}_ci"][1] for k in ("held_out", "fit_unused", "pooled"))


def test_a_run_out_of_budget_writes_the_grid_so_far_and_resumes(tmp_path, tiny_model):
    config = replace(_tiny_config(tmp_path / "cache"), budget_minutes=0.0)
    out = run(config, tmp_path / "partial")
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["partial"]
        and metrics["norm_r2_grid_missing"] == 24
        and all(r["norm_r2"] is None and r["status"].startswith("missing") for r in metrics["norm_r2_grid"])
    )
    assert (
        any("family analyses" in m for m in metrics["missing"])
        and "Partial run" in (out / "dashboard.html").read_text()
    )
    done = json.loads((run(replace(config, budget_minutes=None), tmp_path / "whole") / "metrics.json").read_text())
    assert not done.get("partial") and done["norm_r2_grid_missing"] == 0


def test_config_round_trips_through_the_results_dir(tmp_path):
    from interp.results import ResultsDir

    config = replace(DarkMatterConfig.quick(), layer=4)
    results = ResultsDir.create(tmp_path / "r", config, analysis=config.analysis)
    assert results.config(DarkMatterConfig) == config
    full = DarkMatterConfig()
    assert (
        len(full.widths) >= 5
        and max(full.widths) / min(full.widths) >= 16
        and full.n_tokens >= 500_000
        and full.downstream_seqs >= 512
    )


@pytest.mark.slow  # the quick setting on the bundled model: minutes on 2 cores the first time (the store and SAEs are cached after)
def test_notebook_runs_on_the_quick_setting():
    notebooks = Path(__file__).resolve().parents[2] / "notebooks"
    nb = nbformat.read(notebooks / "04_dark_matter.ipynb", as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(notebooks)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("vector_r2" in o.get("text", "") for o in outputs)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(layer=0), "layer=0"),
        (dict(widths=(64, 128)), "at least 3"),
        (dict(k=64), "k=64"),
        (dict(focus_width=100), "focus_width=100"),
        (dict(fit_fraction=1.0), "fit_fraction"),
        (dict(skip_positions=127), "skip_positions"),
    ],
)
def test_bad_config_names_the_field(tmp_path, fields, message):
    from interp.errors import InterpError

    with pytest.raises(InterpError, match=message):
        replace(_tiny_config(tmp_path), **fields)


def test_a_different_split_retrains_the_saes(tmp_path, tiny_model):
    config = _tiny_config(tmp_path / "cache")
    run(config, tmp_path / "a")
    run(replace(config, seed=1), tmp_path / "b")  # same store, another split and SAE seed
    run(replace(config, fit_fraction=0.5), tmp_path / "c")  # same store, other fit rows
    saes = sorted(
        p.name
        for p in (tmp_path / "cache").glob("*/saes/resid_L1-W64-k8-*")
        if json.loads((p / "sae" / "cfg.json").read_text())["interp_toolkit"]["train_config"]["until_converged"]
    )  # the family's, not the grid's
    assert len(saes) == 3, saes


def test_a_family_stage_out_of_budget_leaves_the_ce_width_missing_and_says_so(tmp_path, tiny_model):
    """Spliced losses not cached start only with ce_minutes_per_width left: that width's CE shares are None and listed, the rest is complete."""
    config = _tiny_config(tmp_path / "cache")
    whole = json.loads((run(config, tmp_path / "whole") / "metrics.json").read_text())
    [cached] = (tmp_path / "cache").glob(
        "*/downstream/W256-*.parquet"
    )  # the widest width: not a grid width, so measured in the family stage
    cached.unlink()
    out = run(replace(config, budget_minutes=60.0, ce_minutes_per_width=61.0), tmp_path / "partial")
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["partial"]
        and metrics["missing"] == [m for m in metrics["missing"] if m.startswith("CE shares at width 256")]
        and len(metrics["missing"]) == 1
    )
    assert metrics["ce_share_nonlinear"][2] is None and metrics["ce_share_nonlinear_ci"][2] is None
    assert (
        metrics["ce_share_nonlinear"][:2] == whole["ce_share_nonlinear"][:2] and metrics["fvu_sae"] == whole["fvu_sae"]
    )
    claims = pd.read_parquet(out / "claims.parquet").set_index("claim")
    assert (
        claims.filter(like="proportional share", axis=0)
        .criterion.str.contains("not measured at widths \\[256\\]")
        .all()
    )
    page = (out / "dashboard.html").read_text()
    assert "Partial run" in page and "Claims of the paper" in page
