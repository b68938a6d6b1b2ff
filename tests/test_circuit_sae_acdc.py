"""experiments/circuit.py's ACDC on a restricted graph (the top EAP edges) and SAE-feature nodes with their
top-activating contexts, on the planted model, and the circuit page's sections for both: checked against separate
computations (EAP ranking, the dense circuit metric, a plain capture of the SAE's latents)."""

import dataclasses

import numpy as np
import pytest
import torch

from dashboards import sections_for
from experiments.circuit import CircuitConfig, acdc_model_results, sae_results
from interp.errors import InterpError
from interp.graph import ComputationGraph, attribute_edges, circuit_metric
from interp.graph.planted import PLANTED_EDGES, planted_model, planted_task
from interp.hooks import capture
from interp.results import ResultsDir
from sae.models import TopKConfig, TopKSae

HOOK = "blocks.0.hook_mlp_out"


@pytest.fixture(scope="module")
def planted():
    model = planted_model(0.1)
    return planted_task(model, seed=0), planted_task(model, seed=1), ComputationGraph(model)


@pytest.fixture(scope="module")
def config():
    return dataclasses.replace(CircuitConfig.quick(), acdc_candidates=30, sae_top_latents=3, sae_contexts=2, k=5)


@pytest.fixture(scope="module")
def sae(planted):
    torch.manual_seed(0)
    sae = TopKSae(TopKConfig(d_in=planted[2].model.cfg.d_model, d_sae=48, k=4, seed=0))
    with torch.no_grad():
        sae.b_enc.add_(0.05)
    return sae


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(1, 101, (12, 10), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def acdc_run(planted, config):
    rank, held, graph = planted
    return acdc_model_results(config, rank, held, graph)


def test_acdc_inside_the_top_eap_edges(planted, config, acdc_run):
    rank, held, graph = planted
    result, tables = acdc_run
    eap = attribute_edges(rank, graph, method="eap")
    candidates = set(eap["effect"].abs().sort_values(ascending=False, kind="stable").index[:30])
    circuit = tables["acdc_model_circuit"]
    assert set(circuit.index) <= candidates and result["n_candidates"] == 30
    assert result["n_edges"] == len(circuit) > 0
    found = set(zip(circuit["upstream"], circuit["downstream"]))
    assert {("a1.h2", "logits"), ("embed", "m0")} <= found  # the strongest planted edges survive pruning
    assert len(found & set(PLANTED_EDGES)) >= 4
    # every circuit's metric in the table is the dense circuit metric (separate code from ACDC's candidate-set path)
    table = tables["acdc_model"].set_index(["split", "circuit"])
    dense = circuit_metric(held, graph, [circuit.index.tolist()])[0]
    assert table.loc[("heldout", "acdc"), "metric"] == pytest.approx(dense, abs=1e-5)
    gap = held.clean_metric - held.corrupted_metric
    assert table.loc[("heldout", "acdc"), "recovered"] == pytest.approx((dense - held.corrupted_metric) / gap)
    assert table.loc[("insample", "acdc"), "recovered"] >= 1 - 3 * config.acdc_tau * len(circuit)
    assert table.loc[("heldout", "eap top-n"), "n_edges"] == len(circuit)
    assert set(result["recovered"]["heldout"]) == {
        "acdc", "eap top-n", "eap-ig top-n", "candidates", "random-n mean", "random-n range"
    }  # fmt: skip
    random = table.loc["heldout"].filter(like="random-n", axis=0)
    assert len(random) == 5 and (random["n_edges"] == len(circuit)).all()
    assert result["recovered"]["heldout"]["random-n mean"] == pytest.approx(random["recovered"].mean(), abs=1e-4)


def test_sae_nodes_with_top_activating_contexts(planted, config, sae, tokens, tmp_path):
    rank, _, graph = planted
    metrics, tables = sae_results(config, rank, graph, sae, HOOK, tokens, tmp_path / "pass.pt")
    assert metrics["node"] == "m0" and metrics["n_changed_latents"] > 3
    nodes = tables["sae_nodes"].set_index("kind")
    assert metrics["error_share_exact"] == pytest.approx(nodes.loc["error", "exact"] / nodes.loc["node", "exact"])
    contexts = tables["sae_contexts"]
    latents = tables["sae_nodes"].query("kind == 'latent'")
    top = latents.loc[latents["exact"].abs().sort_values(ascending=False).index[:3], "latent"].tolist()
    assert list(dict.fromkeys(contexts["latent"])) == top
    # the top-activating context of each latent is where a plain capture + encode over the tokens peaks
    with torch.no_grad():
        f = sae.encode(capture(rank.model, tokens, [HOOK])[HOOK])
    for latent in top:
        first = contexts[contexts["latent"] == latent].iloc[0]
        peak = f[..., latent]
        if peak.max() <= 0:
            assert first["context"].startswith("(never active")
            continue
        seq, pos = divmod(int(peak.argmax()), tokens.shape[1])
        assert (first["seq"], first["pos"]) == (seq, pos)
        assert first["activation"] == pytest.approx(float(peak.max()), rel=1e-5)
        assert f"[<{int(tokens[seq, pos])}>]" in first["context"]  # the peak token, bracketed


def test_circuit_page_shows_acdc_and_sae_contexts(planted, config, sae, tokens, acdc_run, tmp_path):
    rank, _, graph = planted
    out = ResultsDir.create(tmp_path / "run", config, title="circuit page with SAE nodes")
    metrics = {"acdc_model": acdc_run[0]}
    for name, table in acdc_run[1].items():
        out.save_table(name, table)
    metrics["sae"], tables = sae_results(config, rank, graph, sae, HOOK, tokens, tmp_path / "pass.pt")
    for name, table in tables.items():
        out.save_table(name, table)
    out.write_metrics(metrics, merge=False)
    sections = {s.title: s for s in sections_for(out)}
    shown = sections["SAE-feature nodes at m0: top-activating corpus contexts"].table
    assert list(shown["context"]) == list(tables["sae_contexts"]["context"])
    assert any("[<" in c for c in shown["context"])
    split = sections["SAE-feature nodes at m0: exact vs EAP"]
    assert f"error node alone {metrics['sae']['error_exact']:.3g}" in split.text
    assert set(split.table["kind"]) == {"latent", "error", "latents", "node"}
    acdc = sections["ACDC on the model (restricted graph)"]
    assert f"ACDC keeps {acdc_run[0]['n_edges']} edges" in acdc.text
    assert len(sections["ACDC circuit"].table) == acdc_run[0]["n_edges"]


def test_sae_config_and_sites_are_checked(planted, config, sae, tokens, tmp_path):
    from experiments.circuit import load_circuit_sae
    from sae.io import save_sae

    rank, _, graph = planted
    with pytest.raises(InterpError, match="acdc_candidates=-1"):
        CircuitConfig(acdc_candidates=-1)
    with pytest.raises(InterpError, match="sae_contexts=0"):
        CircuitConfig(sae_contexts=0)
    with pytest.raises(InterpError, match="blocks.1.hook_resid_post.*no node of the graph"):
        sae_results(config, rank, graph, sae, "blocks.1.hook_resid_post", tokens, tmp_path / "p.pt")
    wrong = TopKSae(TopKConfig(d_in=32, d_sae=48, k=4))
    with pytest.raises(InterpError, match="d_in is 32 but node 'm0' writes 64"):
        sae_results(config, rank, graph, wrong, HOOK, tokens, tmp_path / "p.pt")
    save_sae(sae, tmp_path / "saved" / "sae", hook_name=HOOK)
    loaded, hook, fvu = load_circuit_sae(str(tmp_path / "saved"))
    assert hook == HOOK and fvu is None
    np.testing.assert_array_equal(loaded.W_dec.detach().numpy(), sae.W_dec.detach().numpy())


def test_run_refuses_an_sae_that_does_not_fit_before_the_long_run(tmp_path, sae):
    """The bundled model's m1 writes 576 values per token; an SAE with d_in 64 is refused before any scoring."""
    from experiments.circuit import run
    from sae.io import save_sae

    save_sae(sae, tmp_path / "small" / "sae", hook_name="blocks.1.hook_mlp_out")
    config = dataclasses.replace(CircuitConfig.quick(), sae=str(tmp_path / "small"))
    with pytest.raises(InterpError, match="d_in is 64 but node 'm1' writes 576 values per token"):
        run(config, tmp_path / "out")
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_circuit_command_refuses_a_missing_or_residual_sae(tmp_path, sae):
    """`interp circuit --sae DIR`: no SAE there, or an SAE on the residual stream (no node of the graph), is a clear
    error before any scoring, and no results are written."""
    from typer.testing import CliRunner

    from experiments.cli import app
    from sae.io import save_sae

    runner = CliRunner()
    missing = runner.invoke(app, ["circuit", "--quick", "--out", str(tmp_path / "a"), "--sae", str(tmp_path / "none")])
    text = " ".join(missing.output.replace("│", " ").split())  # the error box wraps lines
    assert missing.exit_code == 2 and "Invalid value for '--sae'" in text and "does not exist" in text
    big = TopKSae(TopKConfig(d_in=576, d_sae=64, k=4))
    save_sae(big, tmp_path / "resid" / "sae", hook_name="blocks.6.hook_resid_post")
    resid = runner.invoke(app, ["circuit", "--quick", "--out", str(tmp_path / "b"), "--sae", str(tmp_path / "resid")])
    assert resid.exit_code != 0 and "no node of the graph" in resid.output
    assert not (tmp_path / "a" / "metrics.json").exists() and not (tmp_path / "b" / "metrics.json").exists()
