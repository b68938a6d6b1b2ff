"""Figure builders against hand-made grids from real patching results on the tiny model; offline PNG export."""

from __future__ import annotations

import functools
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from interp import plots
from interp.errors import InterpError
from interp.hooks import run_with_hooks

CORRUPTED_POSITION = 1
SEQ_LEN = 6


def logit_diff(logits: torch.Tensor, answers: tuple[int, int]) -> float:
    return float(logits[0, -1, answers[0]] - logits[0, -1, answers[1]])


@functools.cache  # shared by test_plots and test_dashboards; callers must not mutate the tables
def patching_tables(model) -> dict[str, pd.DataFrame]:
    """Real results from the tiny model: residual-stream restoration per (layer, position), zero-ablation
    effect per (layer, head), and the clean-minus-corrupted MLP neuron activation at the last position."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, model.cfg.d_vocab, (1, SEQ_LEN), generator=generator)
    corrupted = clean.clone()
    corrupted[0, CORRUPTED_POSITION] = (clean[0, CORRUPTED_POSITION] + 7) % model.cfg.d_vocab
    answers = (3, 5)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted)
        clean_diff, corrupted_diff = logit_diff(clean_logits, answers), logit_diff(corrupted_logits, answers)
        rows = []
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.hook_resid_pre"
            for position in range(SEQ_LEN):

                def patch(act, hook, position=position, name=name):
                    act[:, position] = clean_cache[name][:, position]
                    return act

                diff = logit_diff(run_with_hooks(model, corrupted, [(name, patch)]), answers)
                rows.append(
                    {
                        "layer": layer,
                        "position": position,
                        "component": "resid_pre",
                        "restoration": (diff - corrupted_diff) / (clean_diff - corrupted_diff),
                    }
                )
        restoration = pd.DataFrame(rows)
        rows = []
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads):

                def zero(act, hook, head=head):
                    act[:, :, head] = 0
                    return act

                diff = logit_diff(run_with_hooks(model, clean, [(f"blocks.{layer}.attn.hook_z", zero)]), answers)
                rows.append({"layer": layer, "head": head, "effect": diff - clean_diff})
        heads = pd.DataFrame(rows)
        neuron_rows = [
            {"layer": layer, "neuron": n, "effect": float(v)}
            for layer in range(model.cfg.n_layers)
            for n, v in enumerate(
                clean_cache[f"blocks.{layer}.mlp.hook_post"][0, -1]
                - corrupted_cache[f"blocks.{layer}.mlp.hook_post"][0, -1]
            )
        ]
    tokens = [model.tokenizer.decode([t]) if model.tokenizer is not None else f"tok{t}" for t in clean[0].tolist()]
    return {"restoration": restoration, "heads": heads, "neurons": pd.DataFrame(neuron_rows), "tokens": tokens}


@pytest.fixture(scope="module")
def tables(tiny_model):
    return patching_tables(tiny_model)


def test_patching_data_is_real(tables):
    # layer 0 resid_pre is the embedding: only the corrupted position differs, and patching it restores everything
    layer0 = tables["restoration"].query("layer == 0").set_index("position")["restoration"]
    assert layer0[CORRUPTED_POSITION] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(layer0.drop(CORRUPTED_POSITION), 0.0, atol=1e-5)
    assert tables["heads"]["effect"].abs().max() > 0


def test_layer_position_heatmap_cells_ticks_and_scale(tables):
    df, tokens = tables["restoration"], tables["tokens"]
    fig = plots.layer_position_heatmap(df, "restoration", tokens=tokens)
    heatmap = fig.data[0]
    z = np.array(heatmap.z)
    assert z.shape == (3, SEQ_LEN)
    for row in df.itertuples():
        assert z[list(heatmap.y).index(row.layer), list(heatmap.x).index(row.position)] == row.restoration
    assert list(fig.layout.xaxis.ticktext) == [f"{tokens[p]!r} ({p})" for p in range(SEQ_LEN)]
    assert fig.layout.xaxis.title.text == "position" and fig.layout.yaxis.title.text == "layer"
    m = df["restoration"].abs().max()
    assert (heatmap.zmin, heatmap.zmax) == (-m, m)
    # RdBu (TransformerLens's convention): red for negative, white at 0 (the middle of the symmetric range), blue for positive
    from plotly.colors import get_colorscale

    assert [colour for _, colour in heatmap.colorscale] == [colour for _, colour in get_colorscale("RdBu")]
    assert (
        heatmap.colorscale[0][1] == "rgb(103,0,31)"
        and heatmap.colorscale[5] == (0.5, "rgb(247,247,247)")
        and heatmap.colorscale[-1][1] == "rgb(5,48,97)"
    )
    assert fig.layout.title.text


def test_layer_position_heatmap_rejects_bad_input(tables):
    df = tables["restoration"]
    with pytest.raises(InterpError, match=r"value='restoraton'.*Did you mean: 'restoration'"):
        plots.layer_position_heatmap(df, "restoraton")
    with pytest.raises(InterpError, match=r"tokens=.*2 tokens given"):
        plots.layer_position_heatmap(df, tokens=["a", "b"])
    doubled = pd.concat([df, df.assign(component="mlp_out")])
    with pytest.raises(InterpError, match=r"several rows share one \(layer, position\).*agg='mean'"):
        plots.layer_position_heatmap(doubled)
    averaged = plots.layer_position_heatmap(doubled, agg="mean")
    assert np.allclose(np.array(averaged.data[0].z), np.array(plots.layer_position_heatmap(df).data[0].z))
    with pytest.raises(InterpError, match="empty"):
        plots.layer_position_heatmap(df.iloc[:0])
    with pytest.raises(InterpError, match=r"value='component'.*expected numbers"):
        plots.layer_position_heatmap(df, "component")
    with pytest.raises(InterpError, match="expected a pandas DataFrame"):
        plots.layer_position_heatmap(df.to_dict())


def test_head_heatmap_matches_rows(tables):
    df = tables["heads"]
    heatmap = plots.head_heatmap(df).data[0]
    z = np.array(heatmap.z)
    expected = np.zeros((3, 4))
    for row in df.itertuples():
        expected[row.layer, row.head] = row.effect
    assert np.array_equal(z, expected)
    assert heatmap.zmin == -heatmap.zmax == -np.abs(expected).max()


def test_top_k_bars_picks_largest_magnitudes(tables):
    df = tables["neurons"]
    fig = plots.top_k_bars(df, "effect", k=5)
    by_hand = sorted(df.itertuples(), key=lambda r: -abs(r.effect))[:5]
    assert list(fig.data[0].x) == [r.effect for r in by_hand]
    assert list(fig.data[0].y) == [f"layer={r.layer} neuron={r.neuron}" for r in by_hand]
    with pytest.raises(InterpError, match=r"k=0"):
        plots.top_k_bars(df, k=0)
    with pytest.raises(InterpError, match=r"label\[1\]='neron'.*'neuron'"):
        plots.top_k_bars(df, label=("layer", "neron"))


def test_neuron_scatter_one_trace_per_layer(tables):
    df = tables["neurons"]
    fig = plots.neuron_scatter(df)
    assert [t.name for t in fig.data] == ["layer 0", "layer 1", "layer 2"]
    for layer, trace in enumerate(fig.data):
        assert np.array_equal(np.array(trace.y), df.query("layer == @layer")["effect"].to_numpy())


def test_bars_with_errors_mean_and_sem(tables):
    summary = tables["restoration"].groupby("layer")["restoration"].agg(["mean", "sem"]).reset_index()
    fig = plots.bars_with_errors(summary, x="layer", y="mean", err="sem")
    restoration = tables["restoration"]
    for layer in range(3):
        values = restoration.query("layer == @layer")["restoration"].to_numpy()
        assert fig.data[0].y[layer] == pytest.approx(values.mean())
        assert fig.data[0].error_y.array[layer] == pytest.approx(stats.sem(values))
    grouped = plots.bars_with_errors(
        restoration.assign(err=0.1), x="position", y="restoration", err="err", color="layer"
    )
    assert [t.name for t in grouped.data] == ["layer=0", "layer=1", "layer=2"]
    with pytest.raises(InterpError, match=r"err='mean'.*non-negative"):
        plots.bars_with_errors(summary.assign(mean=-summary["mean"].abs() - 1), x="layer", y="sem", err="mean")
    with pytest.raises(InterpError, match=r"color='lyer'.*'layer'"):
        plots.bars_with_errors(restoration.assign(err=0.1), x="position", y="restoration", err="err", color="lyer")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium not installed; run `make browser` (apt-get install chromium)"
)
def test_png_export_offline(tables, tmp_path):
    fig = plots.head_heatmap(tables["heads"])
    [path] = plots.write_pngs({tmp_path / "heads.png": fig}, width=400, height=300, scale=2)
    assert png_size(path.read_bytes()) == (800, 600)
    assert [p.name for p in tmp_path.iterdir()] == ["heads.png"]  # staging folders are gone


def test_png_export_without_browser_says_how_to_install(tables, tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(plots, "BROWSER_CANDIDATES", ("chromium", str(tmp_path / "no-chromium")))
    with pytest.raises(InterpError, match="make browser"):
        plots.write_pngs({tmp_path / "x.png": plots.head_heatmap(tables["heads"])})
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "missing"))
    with pytest.raises(InterpError, match=r"BROWSER_PATH=.*not an executable.*make browser"):
        plots.find_browser()
    assert not (tmp_path / "x.png").exists()
