"""interp.graph: the computation graph, exact edge patching, EAP and EAP-IG, each checked against an
independent computation on the tiny random GQA model (a slow per-edge loop of plain TransformerLens
hooks that recomputes the receiver's q / k / v / MLP input by hand, finite differences of that loop)."""

import numpy as np
import pandas as pd
import pytest
import torch

from interp.errors import InterpError
from interp.graph import ComputationGraph, agreement, attribute_edges, patch_edges, score_edges
from interp.models import load_model
from interp.patching.task import PatchingTask
from tests.conftest import TINY_GQA


def make_task(model, seed=0, n=3, seq=8, position=2, metric="logit_diff"):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.cfg.d_vocab, (n, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, position] = torch.randint(1, model.cfg.d_vocab, (n,), generator=g)
    answers = torch.randint(1, model.cfg.d_vocab, (n,), generator=g)
    return PatchingTask(
        model, clean, corrupted, answers=answers, wrong_answers=(answers + 1) % model.cfg.d_vocab, metric=metric
    )


@pytest.fixture(scope="module")
def task(tiny_model):
    return make_task(tiny_model)


@pytest.fixture(scope="module")
def graph(tiny_model):
    return ComputationGraph(tiny_model)


# ------------------------------------------------------------------ the independent slow loop


def rms(norm, x):
    """RMSNorm by hand (RMSNormPre: the weight folded into the next layer, so none here)."""
    x = x / (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    return x * norm.w if hasattr(norm, "w") else x


def sender_outputs_by_hand(model, tokens):
    """{sender name: output [batch, pos, d_model]} from one run_with_cache with per-head results."""
    before = model.cfg.use_attn_result
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(before)
    out = {"embed": cache["hook_embed"]}  # rotary model: the embedding is all that enters block 0
    for layer in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = cache[f"blocks.{layer}.attn.hook_result"][:, :, h]
        out[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out, cache


def slow_edge_metric(model, task, clean_cache, delta, receiver, scale=1.0, embed=None):
    """The metric with `scale * delta` added to one receiver's input, by a plain hook that recomputes
    that input's projection (q, k, v of one head, or the MLP's normalised input) by hand.
    embed: replaces the embeddings (then clean_cache must come from a run with the same embeddings)."""
    d = scale * delta
    hooks = [] if embed is None else [("hook_embed", lambda act, hook: embed)]
    if receiver == "logits":
        hooks.append((f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", lambda act, hook: act + d))
    elif receiver.startswith("m"):
        layer = int(receiver[1:])
        block = model.blocks[layer]
        hooks.append(
            (
                f"blocks.{layer}.ln2.hook_normalized",
                lambda act, hook: rms(block.ln2, clean_cache[f"blocks.{layer}.hook_resid_mid"] + d),
            )
        )
    else:
        name, head, kind = receiver.split(".")
        layer, head = int(name[1:]), int(head.lstrip("hkv"))
        attn = model.blocks[layer].attn
        x = rms(model.blocks[layer].ln1, clean_cache[f"blocks.{layer}.hook_resid_pre"] + d)
        w, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn._W_K, attn._b_K), "v": (attn._W_V, attn._b_V)}[kind]
        new = x @ w[head] + b[head]

        def hook(act, hook):
            act = act.clone()
            act[:, :, head] = new
            return act

        hooks.append((f"blocks.{layer}.attn.hook_{kind}", hook))
    with torch.no_grad():
        logits = model.run_with_hooks(task.clean_tokens, fwd_hooks=hooks)
    return float(task.score(logits[:, -1:])[0])


@pytest.fixture(scope="module")
def slow(tiny_model, task):
    clean, clean_cache = sender_outputs_by_hand(tiny_model, task.clean_tokens)
    corrupted, _ = sender_outputs_by_hand(tiny_model, task.corrupted_tokens)

    def run(upstream, downstream, scale=1.0):
        return slow_edge_metric(tiny_model, task, clean_cache, corrupted[upstream] - clean[upstream], downstream, scale)

    return run


# ------------------------------------------------------------------ the graph


def test_graph_counts_and_gqa_sharing(tiny_model, graph):
    cfg = tiny_model.cfg
    L, H, G = cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads
    assert len(graph.senders) == 1 + L * (H + 1)
    assert len(graph.receivers) == L * (H + 2 * G + 1) + 1
    # closed form: attention inputs of layer n read 1 + n(H+1) senders, the MLP of layer n 1 + n(H+1) + H, logits all
    expected = sum((H + 2 * G) * (1 + n * (H + 1)) + (1 + n * (H + 1) + H) for n in range(L)) + 1 + L * (H + 1)
    assert len(graph.edges) == expected == 190
    kv = graph.edges[graph.edges["component"].isin(["k", "v"])]
    assert set(kv["query_heads"]) == {"0,1", "2,3"}  # 4 query heads read 2 kv heads
    assert (kv.loc[kv["head"] == 1, "query_heads"] == "2,3").all()
    # every edge runs forward: the sender sits in an earlier layer, or is a head of the MLP's own layer
    heads_into_mlp = graph.edges[
        (graph.edges["component"] == "mlp_in") & (graph.edges["upstream_layer"] == graph.edges["layer"])
    ]
    assert set(heads_into_mlp["upstream_component"]) == {"head"}
    attn = graph.edges[graph.edges["component"].isin(["q", "k", "v"]) & graph.edges["upstream_layer"].notna()]
    assert (attn["upstream_layer"] < attn["layer"]).all()


def test_bad_edges_name_the_argument(tiny_model, task, graph):
    with pytest.raises(InterpError, match="downstream='a1.h7.q'.*query heads 0..3"):
        graph.edge_ids([("embed", "a1.h7.q")])
    with pytest.raises(InterpError, match="upstream='a9.h0'"):
        graph.edge_ids([("a9.h0", "logits")])
    with pytest.raises(InterpError, match="not upstream"):
        graph.edge_ids([("a2.h0", "a1.h0.q")])
    with pytest.raises(InterpError, match="edges is empty"):
        patch_edges(task, graph, [])
    with pytest.raises(InterpError, match="method='eapp'.*Did you mean"):
        attribute_edges(task, graph, method="eapp")
    with pytest.raises(InterpError, match="steps=0"):
        attribute_edges(task, graph, method="eap-ig", steps=0)
    with pytest.raises(InterpError, match="graph: built for another model"):
        patch_edges(task, ComputationGraph(load_model(TINY_GQA, seed=1)))
    with pytest.raises(InterpError, match="verify_top"):
        score_edges(task, "eap", graph, verify_top=1)


def test_constant_metric_is_refused(tiny_model, graph):
    with pytest.raises(InterpError, match="piecewise constant"):
        attribute_edges(make_task(tiny_model, metric="accuracy"), graph)
    with pytest.raises(
        InterpError, match="kl_div.*zero gradient"
    ):  # KL(clean || clean) has its minimum at the clean run
        attribute_edges(make_task(tiny_model, metric="kl_div"), graph)


# ------------------------------------------------------------------ exact edge patching


def test_exact_edge_patching_matches_a_slow_loop_of_plain_hooks(task, graph, slow):
    rng = np.random.default_rng(0)
    kinds = graph.edges.groupby("component").sample(n=4, random_state=0, replace=False)  # every kind of input
    chosen = pd.concat([kinds, graph.edges.iloc[rng.choice(len(graph.edges), 8, replace=False)]])
    frame = patch_edges(task, graph, chosen, memory_budget=1 << 16)  # small budget: several batches per layer
    assert list(frame.index) == list(chosen.index)
    expected = np.array([slow(u, v) for u, v in zip(chosen["upstream"], chosen["downstream"])])
    np.testing.assert_allclose(frame["metric"].to_numpy(), expected, atol=2e-5)
    assert np.abs(frame["effect"]).max() > 0.05  # the patch matters somewhere: the check is not vacuous
    np.testing.assert_allclose(frame["effect"], expected - task.clean_metric, atol=2e-5)
    assert (frame["method"] == "exact").all()


def test_exact_edge_patching_batches_agree_with_one_at_a_time(task, graph):
    whole = patch_edges(task, graph)
    some = graph.edges.iloc[[5, 60, 150, 189]]
    alone = pd.concat([patch_edges(task, graph, some.iloc[[i]]) for i in range(len(some))])
    np.testing.assert_allclose(whole.loc[some.index, "metric"], alone["metric"], atol=1e-5)


def test_no_corruption_no_effect(tiny_model, graph):
    tokens = torch.randint(1, 101, (2, 6), generator=torch.Generator().manual_seed(3))
    same = PatchingTask(tiny_model, tokens, tokens.clone(), answers=[1, 2], wrong_answers=[3, 4])
    np.testing.assert_allclose(patch_edges(same, graph)["effect"], 0, atol=1e-5)


# ------------------------------------------------------------------ EAP and EAP-IG


def test_eap_is_the_derivative_of_the_exact_patch(task, graph, slow):
    """EAP's effect equals d/ds metric(s * delta_u added to v's input) at s=0, by central differences of the slow loop."""
    eap = attribute_edges(task, graph)
    top = eap.reindex(eap["effect"].abs().sort_values(ascending=False).index).groupby("component").head(2)
    eps = 1e-2
    for u, v, effect in zip(top["upstream"], top["downstream"], top["effect"]):
        derivative = (slow(u, v, eps) - slow(u, v, -eps)) / (2 * eps)
        assert effect == pytest.approx(derivative, rel=2e-2, abs=2e-4), (u, v)


def test_eap_ig_is_the_average_derivative_along_the_embedding_path(tiny_model, task, graph, slow):
    """EAP-IG (3 steps) = the mean over alpha in {0, 1/3, 2/3} of d/ds metric(s * delta_u into v), in runs whose
    embeddings are clean + alpha (corrupted - clean): central differences of the slow loop at each alpha."""
    ig = attribute_edges(task, graph, method="eap-ig", steps=3)
    clean, _ = sender_outputs_by_hand(tiny_model, task.clean_tokens)
    corrupted, _ = sender_outputs_by_hand(tiny_model, task.corrupted_tokens)
    top = ig.reindex(ig["effect"].abs().sort_values(ascending=False).index).groupby("component").head(1)
    eps = 1e-2
    for u, v, effect in zip(top["upstream"], top["downstream"], top["effect"]):
        derivatives = []
        for alpha in (0, 1 / 3, 2 / 3):
            embed = clean["embed"] + alpha * (corrupted["embed"] - clean["embed"])
            with torch.no_grad():
                cache = {}
                tiny_model.run_with_hooks(
                    task.clean_tokens,
                    fwd_hooks=[("hook_embed", lambda act, hook: embed)]
                    + [
                        (f"blocks.{n}.{h}", lambda act, hook: cache.__setitem__(hook.name, act.clone()))
                        for n in range(tiny_model.cfg.n_layers)
                        for h in ("hook_resid_pre", "hook_resid_mid")
                    ],
                )
            delta = corrupted[u] - clean[u]
            plus = slow_edge_metric(tiny_model, task, cache, delta, v, eps, embed)
            minus = slow_edge_metric(tiny_model, task, cache, delta, v, -eps, embed)
            derivatives.append((plus - minus) / (2 * eps))
        assert effect == pytest.approx(np.mean(derivatives), rel=2e-2, abs=2e-4), (u, v)


def test_eap_ig_with_one_step_is_eap(task, graph):
    eap = attribute_edges(task, graph, method="eap")
    ig = attribute_edges(task, graph, method="eap-ig", steps=1)
    np.testing.assert_array_equal(eap["effect"].to_numpy(), ig["effect"].to_numpy())
    ig3 = attribute_edges(task, graph, method="eap-ig", steps=3)
    assert not np.allclose(ig3["effect"], eap["effect"], atol=1e-4)  # more steps move the estimate


def small_patch_task(eps):
    """A fresh tiny model whose corrupted token's embedding is the clean token's plus eps of noise: a small patch."""
    model = load_model(TINY_GQA, seed=0)
    task = make_task(model, seed=4, n=2, position=3)
    with torch.no_grad():
        for clean, corrupted in zip(task.clean_tokens[:, 3], task.corrupted_tokens[:, 3]):
            noise = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(int(corrupted)))
            model.W_E[corrupted] = model.W_E[clean] + eps * noise * model.W_E[clean].norm() / noise.norm()
    return make_task(model, seed=4, n=2, position=3)


@pytest.mark.parametrize("eps", [0.3, 0.05])
def test_eap_ig_approaches_exact_when_the_patch_is_small(eps):
    task = small_patch_task(eps)
    graph = ComputationGraph(task.model)
    exact = patch_edges(task, graph)
    ig = attribute_edges(task, graph, method="eap-ig", steps=16)
    scale = exact["effect"].abs().max()
    assert scale > 0
    error = (ig["effect"] - exact["effect"]).abs().max() / scale
    # first order in a small patch: the error relative to the largest effect shrinks with eps
    assert error < 0.5 * eps, error
    assert agreement(ig, exact)["spearman"] > 0.9


# ------------------------------------------------------------------ agreement


def test_agreement_by_hand():
    exact = pd.DataFrame({"upstream": list("abcde"), "downstream": ["x"] * 5, "effect": [5.0, -4.0, 3.0, 0.1, 0.0]})
    approx = exact.assign(effect=[4.0, -5.0, 0.05, 2.0, 0.0])
    result = agreement(approx, exact, k=3)
    # top-3 by |exact|: a, b, c; by |approx|: a, b, d -> recall 2/3
    assert result["recall_at_3"] == pytest.approx(2 / 3)
    assert result["spearman"] == pytest.approx(0.9)  # ranks [5,1,4,3,2] vs [5,1,3,4,2]: 1 - 6*2/(5*24)
    assert agreement(exact, exact, k=2)["recall_at_2"] == 1.0
    with pytest.raises(InterpError, match="k=0"):
        agreement(approx, exact, k=0)


def test_score_edges_reports_agreement_with_exact_on_its_top_edges(task, graph):
    frame = score_edges(task, "eap", graph, verify_top=40)
    assert frame.attrs["verified"] == 40 and frame["exact_effect"].notna().sum() == 40
    top = frame["effect"].abs().sort_values(ascending=False).index[:40]
    exact = patch_edges(task, graph, graph.edges.loc[top])
    np.testing.assert_allclose(frame.loc[top, "exact_effect"], exact["effect"], atol=1e-6)
    assert frame.attrs["agreement"] == agreement(frame.loc[top], exact)
    assert set(frame.attrs["agreement"]) >= {"spearman", "recall_at_20"}


# ------------------------------------------------------------------ planted circuit (ground truth)


def test_roc_auc_by_hand():
    from interp.graph.planted import roc_auc

    # positives 3, 1; negatives 2, 0, 1: pairs won 3>2,3>0,3>1, 1>0, tie 1=1 (half): 4.5 of 6
    assert roc_auc([3, 1, 2, 0, 1], [True, True, False, False, False]) == pytest.approx(4.5 / 6)
    with pytest.raises(InterpError, match="both classes"):
        roc_auc([1, 2], [True, True])


def test_planted_circuit_is_recovered_and_shuffled_labels_are_not():
    from interp.graph.planted import planted_labels, planted_model, planted_task, roc_auc

    task = planted_task(planted_model(leak=0.0))
    graph = ComputationGraph(task.model)
    exact = patch_edges(task, graph)
    labels = planted_labels(exact)
    assert labels.sum() == 6
    # by construction every unplanted edge has no effect, and every planted one has some
    np.testing.assert_allclose(exact.loc[~labels, "effect"], 0, atol=1e-6)
    assert (exact.loc[labels, "effect"].abs() > 1e-3).all()
    assert roc_auc(exact["effect"].abs(), labels) >= 0.95
    for method in ("eap", "eap-ig"):
        estimate = attribute_edges(task, graph, method=method, steps=5)
        assert roc_auc(estimate["effect"].abs(), labels) >= 0.95, method
    shuffled = [roc_auc(exact["effect"].abs(), np.random.default_rng(s).permutation(labels)) for s in range(20)]
    assert 0.3 < np.mean(shuffled) < 0.7  # negative control: labels that mean nothing are not recovered


# ------------------------------------------------------------------ circuits: many edges at once


def test_circuit_metric_closed_forms_and_single_edges(task, graph):
    from interp.graph import circuit_metric

    every = list(range(len(graph)))
    exact = patch_edges(task, graph)
    singles = [60, 150, 7, 189]
    values = circuit_metric(
        task, graph, [every, [], *[[i for i in every if i != s] for s in singles]], memory_budget=1 << 18
    )
    assert values[0] == pytest.approx(task.clean_metric, abs=1e-5)  # the whole graph: the clean run
    assert values[1] == pytest.approx(task.corrupted_metric, abs=1e-5)  # no edge kept: the corrupted run
    # all but one edge kept: that edge's exact patch
    np.testing.assert_allclose(values[2:], exact.loc[singles, "metric"], atol=1e-5)
    with pytest.raises(InterpError, match=r"circuits\[0\]: edge ids \[999\]"):
        circuit_metric(task, graph, [[999]])


def test_faithfulness_curve_ends_at_clean_and_corrupted(task, graph):
    from interp.graph import faithfulness_curve

    curve = faithfulness_curve(task, attribute_edges(task, graph), [0, 10, len(graph)], graph)
    assert list(curve["n_edges"]) == [0, 10, len(graph)]
    np.testing.assert_allclose(curve["recovered"].iloc[[0, -1]], [0, 1], atol=1e-4)
    assert (curve["method"] == "eap").all()


@pytest.mark.slow
def test_bundled_model_exact_edges_match_the_slow_loop(model):
    """On SmolLM2-135M (9 query heads reading 3 kv heads): exact edge patching vs the slow loop, on one edge of each kind."""
    from interp.patching.pairs import builtin_pairs

    pairs = builtin_pairs(2)
    task = PatchingTask(
        model,
        [p["clean"] for p in pairs],
        [p["corrupted"] for p in pairs],
        [p["answer"] for p in pairs],
        [p["wrong"] for p in pairs],
    )
    graph = ComputationGraph(model)
    assert len(graph) == 70651 and graph.n_kv_heads == 3
    chosen = [
        ("embed", "m0"),
        ("m0", "a5.kv2.v"),
        ("a3.h8", "a7.kv0.k"),
        ("m10", "a12.h4.q"),
        ("a20.h1", "m20"),
        ("a23.h4", "logits"),
    ]
    frame = patch_edges(task, graph, chosen)
    clean, clean_cache = sender_outputs_by_hand(model, task.clean_tokens)
    corrupted, _ = sender_outputs_by_hand(model, task.corrupted_tokens)
    expected = [slow_edge_metric(model, task, clean_cache, corrupted[u] - clean[u], v) for u, v in chosen]
    np.testing.assert_allclose(frame["metric"].to_numpy(), expected, rtol=1e-4, atol=1e-3)


def test_the_per_edge_loop_gives_the_batched_numbers(task, graph):
    from interp.graph import patch_edges_loop

    some = graph.edges.iloc[[0, 13, 40, 77, 120, 185]]
    np.testing.assert_allclose(
        patch_edges_loop(task, graph, some)["metric"], patch_edges(task, graph, some)["metric"], atol=1e-5
    )
