"""AtP* GradDrop node scores and the subsampling false-negative bound (interp.attribution.graddrop), checked
against exact node patching and finite differences of plain hooks on the tiny GQA model."""

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from interp.attribution.graddrop import attribute_nodes, false_negative_bound, patch_node_sets, patch_nodes
from interp.errors import InterpError
from interp.graph import ComputationGraph, circuit_metric
from interp.models import load_model
from tests.conftest import TINY_GQA
from tests.test_graph import make_task, small_patch_task


@pytest.fixture(scope="module")
def task(tiny_model):
    return make_task(tiny_model)


def test_exact_node_patch_is_every_out_edge_patched(task):
    """Patching a node = every edge out of it carrying the corrupted output (interp.graph's circuit patching)."""
    graph = ComputationGraph(task.model)
    nodes = patch_nodes(task, graph)
    for name in ("embed", "a0.h1", "m0", "a1.h3", "m2"):
        keep = graph.edges.index[graph.edges["upstream"] != name].tolist()
        expected = circuit_metric(task, graph, [keep])[0] - task.clean_metric
        assert nodes.set_index("node").loc[name, "effect"] == pytest.approx(expected, abs=2e-5)
    both = patch_node_sets(task, graph, [["a0.h1", "m1"]])[0] - task.clean_metric
    keep = graph.edges.index[~graph.edges["upstream"].isin(["a0.h1", "m1"])].tolist()
    assert both == pytest.approx(circuit_metric(task, graph, [keep])[0] - task.clean_metric, abs=2e-5)


def _frozen_layer_metric(task, node_hook, head, delta, eps, frozen_layer, clean_cache):
    """The metric with eps * delta added to one node and layer `frozen_layer`'s attention and MLP outputs held at
    their clean values (plain hooks, no autograd)."""
    model = task.model

    def add(act, hook):
        act = act.clone()
        if head is None:
            act += eps * delta
        else:
            act[:, :, head] += eps * delta[:, :, head]
        return act

    hooks = [(node_hook, add)]
    for name in (f"blocks.{frozen_layer}.hook_attn_out", f"blocks.{frozen_layer}.hook_mlp_out"):
        hooks.append((name, lambda act, hook: clean_cache[hook.name]))
    with torch.no_grad():
        logits = model.run_with_hooks(task.clean_tokens, fwd_hooks=hooks)
    return float(task.score(logits[:, -1:])[0])


def test_graddrop_terms_are_derivatives_with_one_layer_frozen(task):
    """AtP_l(n) is the derivative of the metric along n's corrupted - clean direction in the model whose layer l
    outputs are constants: central finite differences of plain hooks (independent of autograd's hook surgery)."""
    model = task.model
    scores = attribute_nodes(task).set_index("node")
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean_tokens)
        _, corrupted = model.run_with_cache(task.corrupted_tokens)
    eps = 1e-2
    for node, hook, head in (("embed", "blocks.0.hook_resid_pre", None), ("a0.h2", "blocks.0.attn.hook_z", 2),
                             ("m0", "blocks.0.hook_mlp_out", None), ("a1.h1", "blocks.1.attn.hook_z", 1)):  # fmt: skip
        delta = corrupted[hook] - clean[hook]
        for layer in range(model.cfg.n_layers):
            if hook == "blocks.0.hook_resid_pre" or int(hook.split(".")[1]) < layer:
                up = _frozen_layer_metric(task, hook, head, delta, eps, layer, clean)
                down = _frozen_layer_metric(task, hook, head, delta, -eps, layer, clean)
                expected = (up - down) / (2 * eps)
            elif int(hook.split(".")[1]) == layer:
                expected = 0.0  # its own output is dropped
            else:
                expected = scores.loc[node, "effect"]  # a later layer: no path from n through it
            assert scores.loc[node, f"graddrop_l{layer}"] == pytest.approx(expected, abs=2e-3), (node, layer)
    per_layer = scores[[f"graddrop_l{layer}" for layer in range(model.cfg.n_layers)]].abs().sum(1)
    np.testing.assert_allclose(scores["score"], per_layer / (model.cfg.n_layers - 1))


def test_atp_node_estimate_is_the_derivative_of_exact_node_patching():
    """In a small patch, AtP of every node approaches its exact effect (error shrinking with the patch)."""
    errors = []
    for eps in (0.2, 0.02):
        task = small_patch_task(eps)
        exact = patch_nodes(task)["effect"].to_numpy()
        atp = attribute_nodes(task, method="atp")["effect"].to_numpy()
        errors.append(np.abs(atp - exact).max() / np.abs(exact).max())
    assert errors[1] < 0.25 * errors[0] and errors[1] < 0.02, errors


def cancelling_model():
    """The tiny model with its last MLP's output scaled by s, s solved so that the embeddings' direct and indirect
    gradients cancel: AtP(embed) = 0 although patching the embeddings moves the metric (a planted cancellation)."""
    model = load_model(TINY_GQA, seed=0)
    w_out = model.blocks[2].mlp.W_out.detach().clone()

    def atp_embed(s):
        with torch.no_grad():
            model.blocks[2].mlp.W_out.copy_(w_out * s)
        return float(attribute_nodes(make_task(model), method="atp").set_index("node").loc["embed", "effect"])

    s = brentq(atp_embed, 0.0, 0.5, xtol=1e-12)
    atp_embed(s)
    return model


def test_graddrop_catches_a_planted_cancellation_that_atp_misses():
    task = make_task(cancelling_model())
    graph = ComputationGraph(task.model)
    exact = patch_nodes(task, graph).set_index("node")["effect"].abs()
    atp = attribute_nodes(task, graph, method="atp").set_index("node")["score"]
    gd = attribute_nodes(task, graph, method="atp+graddrop").set_index("node")["score"]
    rank = {name: int((s >= s["embed"]).sum()) for name, s in (("exact", exact), ("atp", atp), ("gd", gd))}
    assert atp["embed"] < 1e-6  # the gradient cancels
    assert exact["embed"] > 0.5 * exact.max() and rank["exact"] <= 4  # but the embeddings matter
    assert rank["atp"] == len(atp)  # plain AtP ranks them last
    assert rank["gd"] <= rank["exact"]  # GradDrop ranks them with the nodes that matter
    assert gd["embed"] > 0.5 * exact["embed"]


def test_bound_covers_every_unverified_node_where_effects_add():
    """Small patch (effects add, AtP signs right): the bound of each unverified node covers its exact effect."""
    task = small_patch_task(0.05)
    graph = ComputationGraph(task.model)
    exact = patch_nodes(task, graph)["effect"]
    bounded = false_negative_bound(task, attribute_nodes(task, graph), graph, verify_top=4, n_subsets=12)
    assert bounded["verified"].sum() == 4
    np.testing.assert_allclose(bounded.loc[bounded["verified"], "exact_effect"], exact[bounded["verified"]], atol=1e-6)
    rest = ~bounded["verified"]
    assert bounded.loc[rest, "bound"].notna().all()
    assert (bounded.loc[rest, "bound"] >= exact[rest].abs() - 1e-6).all()
    assert bounded.attrs["max_bound"] >= exact[rest].abs().max() - 1e-6
    assert bounded.attrs["max_bound"] < exact.abs().max()  # and it is informative: below the largest effect


def test_bound_with_everything_verified_and_bad_input(task):
    graph = ComputationGraph(task.model)
    scores = attribute_nodes(task, graph, method="atp")
    full = false_negative_bound(task, scores, graph, verify_top=len(scores))
    assert full["bound"].isna().all() and full.attrs["max_bound"] == 0.0
    with pytest.raises(InterpError, match="include_probability"):
        false_negative_bound(task, scores, graph, include_probability=0.0)
    with pytest.raises(InterpError, match="scores"):
        false_negative_bound(task, scores.drop(columns="score"), graph)
    with pytest.raises(InterpError, match="method"):
        attribute_nodes(task, graph, method="graddrop")
    with pytest.raises(InterpError, match="out of range"):
        patch_nodes(task, graph, [99])
    with pytest.raises(InterpError, match="upstream='a9.h0'"):
        patch_nodes(task, graph, ["a9.h0"])
