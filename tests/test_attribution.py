"""Attribution patching against finite differences (float64), exact patching, and a pattern read
from an actual patched run; AtP* saturation flags; error messages."""

import numpy as np
import pandas as pd
import pytest
import torch

from interp import metrics
from interp.attribution import (
    attribute_heads,
    attribute_layer_positions,
    attribute_neurons,
    attribute_sites,
    attribution_sweep,
    check_estimates,
    run_passes,
)
from interp.attribution.qk_fix import qk_fixed_effects, qk_hooks
from interp.errors import InterpError, UnknownSiteError
from interp.models import load_model
from interp.patching import RESULT_COLUMNS, PatchingTask, patch_heads, patch_sites
from interp.sites import Site
from tests.conftest import TINY_GQA


def tiny_task_of(model, seed=0):
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 3, 6), generator=torch.Generator().manual_seed(seed))
    return PatchingTask(model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


@pytest.fixture(scope="module")
def tiny64():
    return load_model(TINY_GQA, seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def task64(tiny64):
    return tiny_task_of(tiny64)


def slope(task, site: Site, eps=1e-4) -> float:
    """d metric / d alpha at alpha = 0 of corrupted + alpha (clean - corrupted) at the site, central difference."""
    model = task.model
    _, clean = model.run_with_cache(task.clean_tokens)
    _, corrupted = model.run_with_cache(task.corrupted_tokens)
    delta = torch.zeros_like(corrupted[site.hook_name])
    delta[site.index()] = (clean[site.hook_name] - corrupted[site.hook_name])[site.index()]

    def metric_at(alpha):
        def nudge(act, hook):
            return act + alpha * delta

        logits = model.run_with_hooks(task.corrupted_tokens, fwd_hooks=[(site.hook_name, nudge)])
        return float(metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean())

    return (metric_at(eps) - metric_at(-eps)) / (2 * eps)


SITES = [
    Site(1, "z", head=2),
    Site(0, "z", head=3, position=4),
    Site(2, "mlp_post", neuron=5),
    Site(1, "mlp_post", neuron=77, position=5),
    Site(1, "resid_pre", position=3),
    Site(2, "q", head=1),
    Site(0, "k", head=1, position=2),
    Site(1, "v", head=0),
    Site(2, "attn_out", position=5),
]


@torch.no_grad()
def test_estimates_equal_the_finite_difference_slope(task64):
    estimates = attribute_sites(task64, SITES)
    for site, effect in zip(SITES, estimates["metric"] - task64.corrupted_metric):
        assert effect == pytest.approx(slope(task64, site), rel=1e-5, abs=1e-9), (
            site
        )  # central difference: O(eps^2) error
    gap = task64.clean_metric - task64.corrupted_metric
    np.testing.assert_allclose(estimates.restoration, (estimates.metric - task64.corrupted_metric) / gap)
    assert (estimates.method == "atp").all() and list(estimates.columns) == [*RESULT_COLUMNS, "method"]


def test_tables_have_the_exact_sweeps_shape_and_order(tiny_model):
    task = tiny_task_of(tiny_model)
    for by_position in (False, True):
        exact, approx = patch_heads(task, by_position=by_position), attribute_heads(task, by_position=by_position)
        pd.testing.assert_frame_equal(approx[RESULT_COLUMNS[:6]], exact[RESULT_COLUMNS[:6]])
    # each head at every position against a hand-written estimate: (clean z - corrupted z) . d metric / d z, summed over positions
    _, clean = tiny_model.run_with_cache(task.clean_tokens)
    saved = {}

    def keep(act, hook):
        act.retain_grad()
        saved[hook.name] = act

    logits = tiny_model.run_with_hooks(
        task.corrupted_tokens, fwd_hooks=[(lambda name: name.endswith("attn.hook_z"), keep)]
    )
    metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean().backward()
    tiny_model.zero_grad(set_to_none=True)
    hand = [
        float(
            (
                (clean[f"blocks.{layer}.attn.hook_z"][:, :, head] - saved[f"blocks.{layer}.attn.hook_z"][:, :, head])
                * saved[f"blocks.{layer}.attn.hook_z"].grad[:, :, head]
            ).sum()
        )
        for layer in range(3)
        for head in range(4)
    ]
    np.testing.assert_allclose(attribute_heads(task).metric - task.corrupted_metric, hand, rtol=1e-4, atol=1e-6)
    assert max(abs(h) for h in hand) > 1e-3


def test_one_sweep_equals_the_separate_calls(tiny_model):
    task = tiny_task_of(tiny_model)
    tables = attribution_sweep(task, ("heads", "heads_by_pos", "neurons", "resid_pre", "mlp_out"))
    separate = {
        "heads": attribute_heads(task), "heads_by_pos": attribute_heads(task, by_position=True), "neurons": attribute_neurons(task),
        "resid_pre": attribute_layer_positions(task), "mlp_out": attribute_layer_positions(task, "mlp_out"),
    }  # fmt: skip
    for name, frame in separate.items():
        pd.testing.assert_frame_equal(tables[name], frame, check_exact=False, rtol=1e-6, atol=1e-8)
    assert len(tables["neurons"]) == tiny_model.cfg.n_layers * tiny_model.cfg.d_mlp


def pattern_gradient(task, layer):
    """d metric / d pattern at the corrupted run, taken with a hand-written autograd hook."""
    model, name, saved = task.model, f"blocks.{layer}.attn.hook_pattern", {}

    def keep(act, hook):
        act.retain_grad()
        saved["pattern"] = act

    logits = model.run_with_hooks(task.corrupted_tokens, fwd_hooks=[(name, keep)])
    metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean().backward()
    model.zero_grad(set_to_none=True)
    return saved["pattern"].detach(), saved["pattern"].grad


@torch.no_grad()
def patched_pattern(task, site: Site):
    """The attention pattern of a real run with the site's q or k slice clean."""
    model = task.model
    _, clean = model.run_with_cache(task.clean_tokens)

    def patch(act, hook):
        act[site.index()] = clean[site.hook_name][site.index()]
        return act

    with model.hooks(fwd_hooks=[(site.hook_name, patch)]):
        _, cache = model.run_with_cache(task.corrupted_tokens)
    return cache[f"blocks.{site.layer}.attn.hook_pattern"]


@pytest.mark.parametrize(
    "site",
    [Site(1, "q", head=2, position=4), Site(2, "q", head=0), Site(1, "k", head=1, position=2), Site(2, "k", head=0)],
)
def test_qk_fix_uses_the_exact_softmax(task64, site):
    passes = run_passes(
        task64,
        [site.hook_name, *qk_hooks(task64.model, site.layer).values()],
        [qk_hooks(task64.model, site.layer)["pattern"]],
    )
    per_position, all_positions = qk_fixed_effects(task64, passes, site.layer, site.component)
    ours = (all_positions if site.position is None else per_position[site.position])[site.head].item()
    pattern, grad = pattern_gradient(task64, site.layer)
    expected = float(((patched_pattern(task64, site) - pattern) * grad).sum())
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-10)
    assert abs(expected) > 1e-6  # the patch moves the pattern, so the check has teeth


@pytest.fixture(scope="module")
def saturated_task():
    """The tiny model with queries scaled up 10x: sharp, saturated attention, where AtP misses."""
    model = load_model(TINY_GQA, seed=0, dtype=torch.float64)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.mul_(10.0)
    return tiny_task_of(model)


@pytest.mark.parametrize("component", ["q", "k"])
def test_atp_star_is_closer_to_exact_under_saturation_and_flags_it(saturated_task, component):
    # The last layer: between its softmax and the metric only an MLP, so the softmax is the main nonlinearity.
    atp = attribute_heads(saturated_task, component=component, by_position=True, layers=[2])
    star = attribute_heads(saturated_task, component=component, by_position=True, layers=[2], method="atp*")
    sites = [Site(r.layer, component, head=r.head, position=r.position) for r in star.itertuples()]
    exact = patch_sites(saturated_task, sites).metric.to_numpy()
    atp_error, star_error = np.abs(atp.metric - exact).to_numpy(), np.abs(star.metric - exact).to_numpy()
    assert star_error.mean() < 0.5 * atp_error.mean()
    unreliable = ~star.reliable.to_numpy(dtype=bool)
    assert star.reliable.notna().all() and 0 < unreliable.sum() < len(star)
    assert atp_error[unreliable].mean() > 3 * atp_error[~unreliable].mean()  # the flag points at AtP's misses


def test_atp_star_flag_is_na_where_there_is_no_softmax_to_fix(tiny_model):
    frame = attribute_heads(tiny_model_task := tiny_task_of(tiny_model), method="atp*")
    assert frame.reliable.isna().all() and (frame.method == "atp*").all()
    np.testing.assert_allclose(frame.restoration, attribute_heads(tiny_model_task).restoration)


def test_check_estimates_verifies_the_top_sites_exactly(tiny_model):
    task = tiny_task_of(tiny_model)
    estimates = attribute_heads(task)
    checked = check_estimates(task, estimates, top_k=3, tolerance=0.05)
    top = estimates.restoration.abs().nlargest(3).index
    sites = [Site(int(r.layer), "z", head=int(r.head)) for r in estimates.loc[top].itertuples()]
    np.testing.assert_allclose(checked.loc[top, "exact_restoration"], patch_sites(task, sites).restoration, rtol=1e-6)
    assert checked.reliable.notna().sum() == 3 and checked.exact_restoration.notna().sum() == 3
    expected = (checked.loc[top, "restoration"] - checked.loc[top, "exact_restoration"]).abs() <= 0.05
    assert list(checked.loc[top, "reliable"]) == list(expected)


def test_bad_input_gets_a_clear_error(tiny_model):
    task = tiny_task_of(tiny_model)
    with pytest.raises(InterpError, match="piecewise constant"):
        attribute_heads(
            PatchingTask(tiny_model, task.clean_tokens, task.corrupted_tokens, [3, 7, 11], metric="accuracy")
        )
    with pytest.raises(InterpError, match="not an attribution method.*atp\\*"):
        attribute_heads(task, method="atp**")
    with pytest.raises(UnknownSiteError, match="'pattern' is not"):
        attribute_sites(task, [Site(1, "pattern", head=0)])
    with pytest.raises(UnknownSiteError, match="attribute_neurons"):
        attribute_neurons(task, component="mlp_out")
    with pytest.raises(InterpError, match="not a sweep. Did you mean: .heads."):
        attribution_sweep(task, ["headz"])
    with pytest.raises(InterpError, match="sites is empty"):
        attribute_sites(task, [])
    with pytest.raises(InterpError, match="top_k"):
        check_estimates(task, attribute_heads(task, layers=[0]), top_k=0)
    with pytest.raises(InterpError, match="lacks columns"):
        check_estimates(task, pd.DataFrame({"restoration": [0.1]}))
