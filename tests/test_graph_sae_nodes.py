"""SAE-feature nodes with an error node (interp.graph.sae_nodes): the latents' and the error's EAP scores add up to
the replaced node's own EAP score (interp.graph.attribute_edges, separate code), for the toolkit's SAE and the same
SAE opened by SAELens's own loader."""

import numpy as np
import pytest
import torch

from interp.errors import InterpError
from interp.graph import ComputationGraph, attribute_edges
from interp.graph.sae_nodes import check_decomposition, latent_node_scores, sae_edge_scores
from sae.models import TopKConfig, TopKSae
from tests.test_graph import make_task


@pytest.fixture(scope="module")
def setup(tiny_model):
    task = make_task(tiny_model)
    graph = ComputationGraph(tiny_model)
    torch.manual_seed(0)
    sae = TopKSae(TopKConfig(d_in=tiny_model.cfg.d_model, d_sae=96, k=6, seed=0))
    with torch.no_grad():
        sae.b_enc.add_(0.1)
    return task, graph, sae


@pytest.mark.parametrize("node", ["m0", "m1", "embed"])
def test_latents_plus_error_add_up_to_the_node(setup, node):
    task, graph, sae = setup
    split = sae_edge_scores(task, node, sae, graph)
    assert split.attrs["n_changed_latents"] > 0
    assert check_decomposition(task, node, sae, graph) < 1e-5
    summed = split.groupby("downstream")["effect"].sum()
    whole = attribute_edges(task, graph, method="eap").query("upstream == @node").set_index("downstream")["effect"]
    assert set(summed.index) == set(whole.index)
    np.testing.assert_allclose(summed[whole.index], whole, atol=1e-5 * max(1.0, whole.abs().max()))
    # without the error node the latents alone do not account for the node (the SAE is not exact)
    latents_only = split[split["latent"] >= 0].groupby("downstream")["effect"].sum()
    assert np.abs(latents_only[whole.index] - whole).max() > 1e-3
    ranking = latent_node_scores(split, top=5)
    assert len(ranking) == 5 and ranking["abs_effect"].is_monotonic_decreasing


def test_sae_lens_loader_gives_the_same_scores(setup, tmp_path):
    from sae_lens import SAE

    from sae.io import save_sae

    task, graph, sae = setup
    save_sae(sae, tmp_path / "sae", hook_name="blocks.1.hook_mlp_out")
    theirs = SAE.load_from_disk(str(tmp_path / "sae"))
    ours = sae_edge_scores(task, "m1", sae, graph)
    lens = sae_edge_scores(task, "m1", theirs, graph)
    np.testing.assert_allclose(lens["effect"], ours["effect"], atol=1e-5)


def test_bad_sae_or_node_is_refused(setup):
    task, graph, _ = setup
    wrong = TopKSae(TopKConfig(d_in=32, d_sae=64, k=4))
    with pytest.raises(InterpError, match="d_in is 32 but node 'm1' writes 64"):
        sae_edge_scores(task, "m1", wrong, graph)
    with pytest.raises(InterpError, match="a head's output"):
        sae_edge_scores(task, "a0.h1", wrong, graph)
    with pytest.raises(InterpError, match="upstream='m7'"):
        sae_edge_scores(task, "m7", wrong, graph)
    with pytest.raises(InterpError, match="encode"):
        sae_edge_scores(task, "m1", object(), graph)
