"""The attribution paths mutation testing found unchecked (issue 22): what each pass computes and costs, padded and
frozen models, node selection, and every refusal word for word.

References are independent of the code under test: the same estimate on unpadded pairs one at a time (the metric is a
mean over pairs, so its gradient is too) or on a model whose parameters take gradients, the rows each transformer
block and the final norm actually see (PyTorch forward hooks on the modules, not TransformerLens hook points), a
stable sort by Python, and the disagreement rule of AtP* recomputed from the plain AtP table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from interp.attribution import attribute_heads, attribute_neurons, attribute_sites, run_passes
from interp.attribution.graddrop import attribute_nodes, false_negative_bound, patch_node_sets, patch_nodes
from interp.errors import InterpError
from interp.graph import ComputationGraph
from interp.models import load_model
from interp.patching import PatchingTask
from interp.patching.engine import variants_per_batch
from interp.sites import Site
from tests.conftest import TINY_GQA
from tests.test_graph import make_task


@pytest.fixture(scope="module")
def task(tiny_model):
    return make_task(tiny_model)


@pytest.fixture(scope="module")
def graph(task):
    return ComputationGraph(task.model)


def head_table(task, method="atp"):
    return attribute_heads(task, method=method)["metric"].to_numpy()


# -- what the passes cost: rows through each block, positions through the final norm ---------------------------------


class Rows:
    """Rows (sequences) each block's forward sees, and the positions each final-norm call sees, while active."""

    def __init__(self, model):
        self.model, self.blocks, self.norm_positions = model, [0] * model.cfg.n_layers, []
        self.last_block_calls = 0

    def __enter__(self):
        def block_hook(layer):
            def hook(module, args, output):
                self.blocks[layer] += output.shape[0]
                self.last_block_calls += layer == self.model.cfg.n_layers - 1

            return hook

        self.handles = [b.register_forward_hook(block_hook(i)) for i, b in enumerate(self.model.blocks)]
        self.handles.append(
            self.model.ln_final.register_forward_hook(lambda m, a, out: self.norm_positions.append(out.shape[1]))
        )
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_node_sets_run_each_set_once_from_its_first_layer(task, graph):
    """Every set's batch starts at the first layer it patches (the embeddings: layer -1, the whole model); the two
    captures run every block once; nothing computes logits at more than the last position."""
    sets = [["a1.h0"], ["m1"], ["a1.h2", "m2"], ["embed", "m2"], ["m0"], ["a2.h1"], ["a2.h3"], ["m2"]]
    first = [min(-1 if n == "embed" else int(n[1]) for n in s) for s in sets]
    budget = next(2**i for i in range(10, 40) if variants_per_batch(task, 2**i) >= 2)  # 2-3 sets a batch
    n = task.n_prompts
    with Rows(task.model) as rows:
        values = patch_node_sets(task, graph, sets, memory_budget=budget)
    expected = [2 * n + n * sum(f <= layer for f in first) for layer in range(task.model.cfg.n_layers)]
    assert rows.blocks == expected
    assert set(rows.norm_positions) == {1}
    with Rows(task.model) as rows:
        alone = patch_node_sets(task, graph, sets, memory_budget=1)  # one set a batch: the reference values
    np.testing.assert_allclose(values, alone, atol=1e-5)
    assert rows.last_block_calls == 2 + len(sets)


def test_node_patching_passes_its_memory_budget_to_the_batches(task, graph):
    with Rows(task.model) as rows:
        patch_nodes(
            task, graph, ["a1.h0", "m1", "m2"], memory_budget=1
        )  # one node a batch, each through the last block
    assert rows.last_block_calls == 2 + 3


@pytest.mark.parametrize("method", ["atp", "atp+graddrop"])
def test_attribution_passes_stop_before_the_unembedding(task, graph, method):
    with Rows(task.model) as rows:
        attribute_nodes(task, graph, method=method)
        attribute_heads(task, method="atp*")
    assert set(rows.norm_positions) == {1}  # the captures stop after the last block; the metric reads one position
    assert len(set(rows.blocks)) == 1  # every pass runs every block


# -- padded prompts and frozen parameters -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    from tests.test_patching_mutants import prompts, worded_model

    model, words = worded_model(tmp_path_factory.mktemp("tokenizer"))
    clean, corrupted = prompts(words, [4, 6, 9], seed=5)
    answers, wrong = [5, 40, 77], [9, 60, 13]
    padded = PatchingTask(model, clean, corrupted, answers, wrong, align=True)
    singles = [PatchingTask(model, [c], [k], [a], [w]) for c, k, a, w in zip(clean, corrupted, answers, wrong)]
    return padded, singles


def test_atp_on_padded_prompts_equals_the_mean_of_each_pair_alone(aligned):
    padded, singles = aligned
    assert len(set(padded.clean_mask.sum(1).tolist())) == 3
    for method in ("atp", "atp*"):
        ours = attribute_heads(padded, method=method)["metric"].to_numpy() - padded.corrupted_metric
        reference = np.mean(
            [attribute_heads(t, method=method)["metric"].to_numpy() - t.corrupted_metric for t in singles], axis=0
        )
        assert np.abs(reference).max() > 1e-2
        np.testing.assert_allclose(ours, reference, atol=1e-4, err_msg=method)


def test_a_model_with_frozen_parameters_gives_the_same_estimates(tiny_model):
    frozen = load_model(TINY_GQA, seed=0).requires_grad_(False)
    ours, reference = make_task(frozen), make_task(tiny_model)
    assert all(p.requires_grad for p in tiny_model.parameters())
    for method in ("atp", "atp*"):
        np.testing.assert_allclose(head_table(ours, method), head_table(reference, method), atol=1e-5)
    np.testing.assert_allclose(
        attribute_nodes(ours)[["effect", "score"]].to_numpy(),
        attribute_nodes(reference)[["effect", "score"]].to_numpy(),
        atol=1e-5,
    )


# -- the tables -------------------------------------------------------------------------------------------------------


def test_atp_star_reliable_flag_is_the_disagreement_with_plain_atp_over_the_gap(task):
    sites = [Site(layer, "q", head=h) for layer in range(3) for h in range(4)]
    sites += [Site(layer, "k", head=h) for layer in range(3) for h in range(2)]  # GQA: 2 key heads
    linear = attribute_sites(task, sites, method="atp")["metric"].to_numpy() - task.corrupted_metric
    star = attribute_sites(task, sites, method="atp*")
    fixed = star["metric"].to_numpy() - task.corrupted_metric
    has_fix = star["reliable"].notna().to_numpy()
    assert has_fix.all()  # q and k sites all get AtP*'s fixed estimate
    disagreement = np.abs(fixed - linear) / abs(task.clean_metric - task.corrupted_metric)
    assert abs(abs(task.clean_metric - task.corrupted_metric) - 1) > 0.1  # dividing and multiplying differ
    tolerance = float(np.median(disagreement))
    flags = attribute_sites(task, sites, method="atp*", tolerance=tolerance)["reliable"]
    assert list(flags) == [bool(d <= tolerance) for d in disagreement]
    assert 0 < flags.sum() < len(flags)
    # sites without a fixed estimate: the flag is NA, still a boolean column
    neurons = attribute_neurons(task, method="atp*", layers=[0], neurons=[0, 1])
    assert neurons["reliable"].isna().all() and str(neurons["reliable"].dtype) == "boolean"


@pytest.mark.parametrize("nodes", [["embed"], ["m0"], ["m1", "embed"]])
def test_node_tables_keep_integer_columns_for_any_selection(task, graph, nodes):
    frame = patch_nodes(task, graph, nodes)
    assert str(frame["layer"].dtype) == "Int64" and str(frame["head"].dtype) == "Int64"
    assert list(frame["node"]) == nodes


def test_node_names_ids_and_their_refusals(task, graph):
    n = len(graph.senders)
    one = patch_nodes(task, graph, "m1")
    assert list(one["node"]) == ["m1"]
    pd.testing.assert_frame_equal(one, patch_nodes(task, graph, ["m1"]))
    pd.testing.assert_frame_equal(one, patch_nodes(task, graph, [graph.sender_index("m1")]))
    assert list(patch_nodes(task, graph, [n - 1])["node"]) == [graph.senders[-1].name]
    with pytest.raises(InterpError) as err:
        patch_nodes(task, graph, [n])
    assert str(err.value) == f"nodes: ids [{n}] are out of range; the graph has nodes 0..{n - 1}."
    with pytest.raises(InterpError) as err:
        patch_nodes(task, graph, list(range(n, n + 7)))
    assert str(err.value) == f"nodes: ids {list(range(n, n + 5))} are out of range; the graph has nodes 0..{n - 1}."
    with pytest.raises(InterpError) as err:
        patch_nodes(task, graph, [])
    assert str(err.value) == "nodes is empty: name at least one node ('embed', 'a{L}.h{H}', 'm{L}')."


def test_node_functions_refuse_a_graph_of_another_model(task):
    other = ComputationGraph(load_model(TINY_GQA, seed=1))
    message = r"^graph: built for another model than task\.model"
    for call in (
        lambda: patch_nodes(task, other),
        lambda: patch_node_sets(task, other, [["m0"]]),
        lambda: attribute_nodes(task, other),
    ):
        with pytest.raises(InterpError, match=message):
            call()


def test_graddrop_needs_two_layers_and_runs_with_two(tiny_model):
    two = load_model(dict(TINY_GQA, n_layers=2), seed=0)
    frame = attribute_nodes(make_task(two))
    assert [c for c in frame.columns if c.startswith("graddrop_l")] == ["graddrop_l0", "graddrop_l1"]
    one = load_model(dict(TINY_GQA, n_layers=1), seed=0)
    with pytest.raises(InterpError) as err:
        attribute_nodes(make_task(one))
    assert str(err.value) == "GradDrop needs a model with at least 2 layers (it averages over L - 1 dropped layers)."
    assert len(attribute_nodes(make_task(one), method="atp")) == len(ComputationGraph(one).senders)


def test_bound_verifies_the_top_scores_in_stable_order(task, graph):
    scores = attribute_nodes(task, graph, method="atp")
    scores["score"] = np.random.default_rng(3).integers(0, 3, len(scores)).astype(float)  # many ties
    stable = sorted(range(len(scores)), key=lambda i: -scores["score"].iloc[i])  # Python's sort is stable
    out = false_negative_bound(task, scores, graph, verify_top=6, n_subsets=1)
    assert list(out.index[out["verified"]]) == sorted(scores.index[stable[:6]])


# -- refusals, word for word ------------------------------------------------------------------------------------------


def test_refusals_name_the_argument_and_the_fix(task, tiny_model):
    def message(call) -> str:
        with pytest.raises(InterpError) as err:
            call()
        return str(err.value)

    assert message(lambda: attribute_sites(task, [Site(0, "z", head=0)], method="atpp")) == (
        "method='atpp' is not an attribution method. Did you mean: 'atp', 'atp*'? Known: atp, atp* "
        "(for exact patching use interp.patching)."
    )
    assert message(lambda: attribute_sites(task, [])) == (
        "sites is empty: pass at least one Site or hook name to attribute."
    )
    assert message(lambda: attribute_heads(task, positions=[1])).startswith(
        "attribute_heads(positions=...) selects positions of a by-position sweep"
    )
    assert attribute_heads(task, method="atp*", tolerance=0.123).attrs["tolerance"] == 0.123
    flat = make_task(tiny_model, metric="accuracy")
    assert message(lambda: attribute_sites(flat, [Site(0, "z", head=0)])) == (
        "metric='accuracy' is piecewise constant, so its gradient is zero and attribution patching cannot estimate "
        "it. Build the PatchingTask with metric='logit_diff', 'answer_prob' or 'kl_div', or use the exact sweep."
    )
    assert message(lambda: attribute_nodes(flat)) == (
        "metric='accuracy' is piecewise constant (zero gradient); use metric='logit_diff' or 'answer_prob', "
        "or patch_nodes."
    )
    assert message(
        lambda: run_passes(
            task,
            ["blocks.0.hook_resid_pre"],
            ["blocks.2.hook_mlp_out", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
        )
    ) == (
        "gradient_hooks must be cached too; missing from activation_hooks: "
        "['blocks.1.hook_resid_pre', 'blocks.2.hook_mlp_out']."
    )
    detached = PatchingTask(
        tiny_model,
        task.clean_tokens,
        task.corrupted_tokens,
        task.answer_tokens,
        task.wrong_tokens,
        metric=lambda logits: logits[:, 0, 0].detach(),
    )
    assert message(lambda: attribute_sites(detached, [Site(0, "z", head=0)])) == (
        f"metric {detached.metric_name!r} does not depend differentiably on the logits (no gradient); attribution "
        "patching needs a differentiable metric."
    )
    assert message(lambda: attribute_nodes(detached, method="atp")) == (
        f"metric {detached.metric_name!r} does not depend differentiably on the logits."
    )
