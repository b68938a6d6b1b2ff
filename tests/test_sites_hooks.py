import pytest
import torch

from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError, UnknownSiteError
from interp.hooks import cache_sites, to_tokens
from interp.sites import Site, as_site, kv_head_of

PROMPTS = ["The capital of France is", "The capital of Spain is", "The capital of Italy is"]


def test_cache_sites_equals_run_with_cache(model):
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS))
    # the reference slices written out by hand (not with Site.index(), which cache_sites itself uses)
    expected = {
        Site(3, "resid_post"): cache["blocks.3.hook_resid_post"],
        Site(2, "z", head=4, position=-1): cache["blocks.2.attn.hook_z"][:, -1, 4],  # [batch, pos, head, d_head]
        Site(5, "mlp_post", neuron=17): cache["blocks.5.mlp.hook_post"][:, :, 17],  # [batch, pos, d_mlp]
        Site(1, "k", head=2): cache["blocks.1.attn.hook_k"][:, :, 2],  # [batch, pos, kv_head, d_head]
        Site(4, "pattern", head=8, position=2): cache["blocks.4.attn.hook_pattern"][
            :, 8, 2
        ],  # [batch, head, query, key]
    }
    got = cache_sites(model, PROMPTS, list(expected) + ["blocks.6.hook_attn_out"])
    expected[as_site(model, "blocks.6.hook_attn_out")] = cache["blocks.6.hook_attn_out"]
    assert set(got) == set(expected)
    for site, tensor in got.items():
        assert tensor.shape == expected[site].shape, site
        torch.testing.assert_close(tensor, expected[site], atol=5e-5, rtol=1e-4)


def test_cache_sites_keeps_only_the_slices_asked_for(model):
    got = cache_sites(model, PROMPTS, [Site(2, "z", head=4, position=-1)])
    (tensor,) = got.values()
    assert tensor.shape == (3, model.cfg.d_head)


def test_cache_sites_stops_at_the_deepest_layer_needed(model):
    ran = []
    model.blocks[6].hook_resid_post.add_hook(lambda act, hook: ran.append(hook.name))
    try:
        cache_sites(model, PROMPTS, [Site(5, "resid_post")])
    finally:
        model.reset_hooks(including_permanent=True)
    assert ran == []


def test_gqa_query_head_reads_its_kv_head(model):
    """z of query head h, recomputed by hand from the pattern and v of kv_head_of(h), equals hook_z."""
    layer = 4
    _, cache = model.run_with_cache(model.to_tokens(PROMPTS[:1]))
    v = cache[f"blocks.{layer}.attn.hook_v"][0]  # [pos, kv_head, d_head]
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [head, q, k]
    z = cache[f"blocks.{layer}.attn.hook_z"][0]  # [pos, head, d_head]
    assert v.shape[1] == 3 and pattern.shape[0] == 9
    for head in range(model.cfg.n_heads):
        by_hand = pattern[head] @ v[:, kv_head_of(model, head)]
        torch.testing.assert_close(z[:, head], by_hand, atol=1e-5, rtol=1e-4)
    assert [kv_head_of(model, h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_misspelt_hook_name_lists_close_matches(model):
    with pytest.raises(UnknownSiteError, match=r"Did you mean: 'blocks.3.hook_resid_post'"):
        as_site(model, "blocks.3.hook_resid_psot")


def test_unknown_component_lists_close_matches():
    with pytest.raises(UnknownSiteError, match="resid_post"):
        Site(3, "resid_pots")


@pytest.mark.parametrize(
    "site, field",
    [
        (Site(30, "resid_post"), "layer=30"),
        (Site(2, "z", head=9), "head=9"),
        (Site(2, "v", head=3), "key/value heads"),
        (Site(2, "mlp_post", neuron=1536), "neuron=1536"),
    ],
)
def test_out_of_range_names_the_field_and_range(model, site, field):
    with pytest.raises(OutOfRangeError, match=field):
        cache_sites(model, PROMPTS, [site])


def test_position_out_of_range(model):
    with pytest.raises(OutOfRangeError, match="position=9 is out of range for prompts of 5 tokens"):
        cache_sites(model, PROMPTS, [Site(1, "resid_post", position=9)])


def test_head_on_headless_component_is_refused():
    with pytest.raises(UnknownSiteError, match="has no heads"):
        Site(1, "resid_post", head=0)


def test_empty_prompts_and_mismatched_lengths(model):
    with pytest.raises(InterpError, match="prompts is empty"):
        to_tokens(model, [])
    with pytest.raises(ShapeMismatchError, match="different token lengths"):
        to_tokens(model, ["The capital of France is", "The capital of the United Kingdom is"])
