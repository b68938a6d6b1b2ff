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
    with pytest.raises(InterpError, match="one head.s output"):
        sae_edge_scores(task, "a0.h1", wrong, graph)
    with pytest.raises(InterpError, match="upstream='m7'"):
        sae_edge_scores(task, "m7", wrong, graph)
    with pytest.raises(InterpError, match="encode"):
        sae_edge_scores(task, "m1", object(), graph)


# ------------------------------------------------------------------ exact effects of SAE-feature nodes


def _loop_effect(task, hook, change):
    """One whole forward of the model with `change` added at `hook` (plain TransformerLens hook), metric - clean."""
    model = task.model

    def add(act, hook):
        return act + change.to(act.dtype)

    with torch.no_grad():
        logits = model.run_with_hooks(task.clean_tokens, attention_mask=task.clean_mask, fwd_hooks=[(hook, add)])
    return float(task.score(logits[:, -1:])[0]) - task.clean_metric


@pytest.mark.parametrize("node", ["m1", "embed", "a1"])
def test_latent_node_effects_match_a_plain_loop_and_node_patching(setup, node):
    from interp.attribution.graddrop import patch_node_sets
    from interp.graph.sae_nodes import sae_node_effects, sae_split, site_hook
    from interp.hooks import capture

    task, graph, sae = setup
    frame = sae_node_effects(task, node, sae, graph)
    latents = frame[frame["kind"] == "latent"]
    assert len(latents) == frame.attrs["n_changed_latents"] > 3
    # exact: a plain full forward per latent with its change added at the site hook (separate code)
    hook = site_hook(graph, node)
    acts = {
        run: capture(task.model, tokens, [hook], attention_mask=mask)[hook]
        for run, tokens, mask in (
            ("clean", task.clean_tokens, task.clean_mask),
            ("corrupted", task.corrupted_tokens, task.corrupted_mask),
        )
    }
    f_clean, _ = sae_split(sae, acts["clean"])
    f_corrupted, _ = sae_split(sae, acts["corrupted"])
    for latent in latents["latent"].iloc[:3]:
        change = (f_corrupted[..., latent] - f_clean[..., latent])[..., None] * sae.W_dec[latent]
        row = frame.set_index("latent").loc[latent]
        assert row["exact"] == pytest.approx(_loop_effect(task, hook, change), abs=1e-5)
    # the whole node (latents + error) is the node's own exact patch: graddrop's node patching (separate code)
    nodes = [f"a1.h{h}" for h in range(graph.n_heads)] if node == "a1" else [node]
    whole = patch_node_sets(task, graph, [nodes])[0] - task.clean_metric
    assert frame.set_index("kind").loc["node", "exact"] == pytest.approx(whole, abs=1e-5)
    # a latent's EAP node score is the sum of its EAP edge scores (per-receiver gradients, separate einsum)
    edges = sae_edge_scores(task, node, sae, graph).groupby("latent")["effect"].sum()
    by_latent = frame.set_index("latent")["eap"]
    np.testing.assert_allclose(by_latent[edges.index], edges, atol=1e-6 * max(1.0, edges.abs().max()))
    # the latents and the error add up to the node under EAP (linear), not under exact patching in general
    eap = frame.set_index("kind")["eap"]
    assert eap["latents"] + eap["error"] == pytest.approx(eap["node"], abs=1e-6)
    assert frame.attrs["error_share_eap"] == pytest.approx(eap["error"] / eap["node"])


def test_attention_layer_site_splits_the_layers_heads(setup):
    """An SAE on blocks.1.hook_attn_out replaces all of layer 1's heads: its latents + error add up, per receiver, to
    the EAP scores of the layer's head edges (interp.graph.attribute_edges, separate code)."""
    task, graph, sae = setup
    split = sae_edge_scores(task, "a1", sae, graph).groupby("downstream")["effect"].sum()
    heads = attribute_edges(task, graph, method="eap")
    heads = heads[heads["upstream"].str.startswith("a1.h")].groupby("downstream")["effect"].sum()
    assert set(split.index) == set(heads.index)
    np.testing.assert_allclose(split[heads.index], heads, atol=1e-5 * max(1.0, heads.abs().max()))


def test_bad_sites_and_latents_are_refused(setup):
    from interp.graph.sae_nodes import sae_node_effects

    task, graph, sae = setup
    with pytest.raises(InterpError, match="attention layer 7 is out of range.*layers 0..2"):
        sae_node_effects(task, "a7", sae, graph)
    with pytest.raises(InterpError, match="latents: \\[96\\] are out of range.*d_sae=96"):
        sae_node_effects(task, "m1", sae, graph, latents=[96])
    with pytest.raises(InterpError, match="one head's output"):
        sae_node_effects(task, "a1.h0", sae, graph)
