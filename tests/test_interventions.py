"""Ablations against hand-written TransformerLens hooks and closed forms."""

import pytest
import torch

from interp.errors import InterpError, OutOfRangeError, ShapeMismatchError
from interp.interventions import Ablation, ablation_hooks, heads, layers, neurons, reference_activations, run_ablated
from interp.sites import Site, kv_head_of

PROMPTS = ["The capital of France is", "The capital of Spain is", "The capital of Italy is"]
REFERENCE = [
    "The colour of grass is",
    "The price of bread is",
    "The name of my dog is",
    "The size of the sun is",
]  # 5, 5, 6, 6 tokens


def tiny_tokens(batch: int, seq_len: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 101, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def logits_with(model, tokens, fwd_hooks):
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)


def test_zero_heads_and_neurons_together_match_hand_hooks(tiny_model):
    tokens = tiny_tokens(3, 7, seed=1)
    sites = heads([(0, 1), (0, 3), (2, 0)]) + neurons([(1, 5), (1, 77)])

    def zero_heads(*hs):
        def hook(z, hook):
            z[:, :, list(hs)] = 0

        return hook

    def zero_neurons(*ns):
        def hook(post, hook):
            post[:, :, list(ns)] = 0

        return hook

    expected = logits_with(
        tiny_model,
        tokens,
        [
            ("blocks.0.attn.hook_z", zero_heads(1, 3)),
            ("blocks.2.attn.hook_z", zero_heads(0)),
            ("blocks.1.mlp.hook_post", zero_neurons(5, 77)),
        ],
    )
    got = run_ablated(tiny_model, tokens, Ablation(sites))
    assert torch.equal(got, expected)
    assert not torch.allclose(got, logits_with(tiny_model, tokens, []))


def test_sites_on_one_hook_share_one_hook_call(tiny_model):
    tokens = tiny_tokens(2, 5, seed=2)
    hooks = ablation_hooks(tiny_model, tokens, Ablation(heads([(1, 0), (1, 2), (1, 3)]) + neurons([(1, 9)])))
    assert sorted(name for name, _ in hooks) == ["blocks.1.attn.hook_z", "blocks.1.mlp.hook_post"]


def test_zero_at_one_position_and_hook_name_sites(tiny_model):
    tokens = tiny_tokens(2, 6, seed=3)

    def hook(act, hook):
        act[:, 4] = 0

    expected = logits_with(tiny_model, tokens, [("blocks.1.hook_mlp_out", hook)])
    got = run_ablated(tiny_model, tokens, Ablation(layers([1], "mlp_out", position=4)))
    assert torch.equal(got, expected)
    assert torch.equal(got[:, :4], logits_with(tiny_model, tokens, [])[:, :4])  # causal: earlier positions untouched
    by_name = run_ablated(tiny_model, tokens, Ablation(["blocks.1.hook_mlp_out"]))
    whole = logits_with(tiny_model, tokens, [("blocks.1.hook_mlp_out", lambda act, hook: act.zero_())])
    assert torch.equal(by_name, whole)


def test_mean_per_position_on_bundled_model_matches_hand_hook(model):
    reference = REFERENCE[:2]
    with torch.no_grad():
        _, ref_cache = model.run_with_cache(
            reference, names_filter=lambda n: n in ("blocks.5.attn.hook_z", "blocks.7.mlp.hook_post")
        )
    z_mean = ref_cache["blocks.5.attn.hook_z"][:, :, 4].mean(0)  # [pos, d_head]
    post_mean = ref_cache["blocks.7.mlp.hook_post"][:, 2, 100].mean(0)  # scalar at position 2

    def z_hook(z, hook):
        z[:, :, 4] = z_mean

    def post_hook(post, hook):
        post[:, 2, 100] = post_mean

    tokens = model.to_tokens(PROMPTS, prepend_bos=False)
    expected = logits_with(model, tokens, [("blocks.5.attn.hook_z", z_hook), ("blocks.7.mlp.hook_post", post_hook)])
    ablation = Ablation(heads([(5, 4)]) + neurons([(7, 100)], position=2), method="mean", reference=reference)
    got = run_ablated(model, PROMPTS, ablation)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)  # micro-batched reference forward: float32 noise
    assert (got - logits_with(model, tokens, [])).abs().max() > 1e-3


def test_mean_over_all_reference_tokens_when_lengths_differ(tiny_model):
    tokens, reference = tiny_tokens(2, 6, seed=4), tiny_tokens(5, 9, seed=5)
    with torch.no_grad():
        _, ref_cache = tiny_model.run_with_cache(reference)
    resid_mean = ref_cache["blocks.0.hook_resid_post"].mean(dim=(0, 1))  # [d_model]
    z_mean = ref_cache["blocks.1.attn.hook_z"][:, :, 2].mean(dim=(0, 1))  # [d_head]

    def resid_hook(act, hook):
        act[:, 3] = resid_mean

    def z_hook(z, hook):
        z[:, :, 2] = z_mean

    expected = logits_with(
        tiny_model, tokens, [("blocks.0.hook_resid_post", resid_hook), ("blocks.1.attn.hook_z", z_hook)]
    )
    sites = layers([0], "resid_post", position=3) + heads([(1, 2)])
    got = run_ablated(tiny_model, tokens, Ablation(sites, method="mean", reference=reference))  # auto: lengths differ
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)  # float32 sums in another order
    explicit = run_ablated(
        tiny_model, tokens, Ablation(sites, method="mean", reference=reference[:, :6], mean_over="all")
    )
    assert not torch.allclose(explicit, got)  # a different reference set gives a different mean


def test_resample_takes_each_row_from_one_other_reference_prompt(tiny_model):
    reference = tiny_tokens(6, 5, seed=6)
    tokens = reference[:3]  # targets are part of the reference set: a row must never resample itself
    sites = heads([(0, 0), (2, 3)]) + neurons([(1, 40)], position=2)
    with torch.no_grad():
        _, ref_cache = tiny_model.run_with_cache(reference)

    def donor_hooks(j):
        def z0(z, hook):
            z[:, :, 0] = ref_cache["blocks.0.attn.hook_z"][j, :, 0]

        def z2(z, hook):
            z[:, :, 3] = ref_cache["blocks.2.attn.hook_z"][j, :, 3]

        def post(act, hook):
            act[:, 2, 40] = ref_cache["blocks.1.mlp.hook_post"][j, 2, 40]

        return [("blocks.0.attn.hook_z", z0), ("blocks.2.attn.hook_z", z2), ("blocks.1.mlp.hook_post", post)]

    got = run_ablated(tiny_model, tokens, Ablation(sites, method="resample", reference=reference, seed=0))
    donors = []
    for i in range(len(tokens)):
        matches = [
            j
            for j in range(len(reference))
            if torch.allclose(got[i : i + 1], logits_with(tiny_model, tokens[i : i + 1], donor_hooks(j)), atol=1e-6)
        ]
        assert len(matches) == 1 and matches[0] != i, f"row {i} matched donors {matches}"
        donors.append(matches[0])
    again = run_ablated(tiny_model, tokens, Ablation(sites, method="resample", reference=reference, seed=0))
    assert torch.equal(got, again)
    others = [
        run_ablated(tiny_model, tokens, Ablation(sites, method="resample", reference=reference, seed=s))
        for s in range(1, 6)
    ]
    assert any(not torch.equal(got, o) for o in others)


def test_gqa_head_ablation_leaves_heads_sharing_its_kv_head_untouched(model):
    layer, head = 6, 4
    siblings = [h for h in range(model.cfg.n_heads) if h != head and kv_head_of(model, h) == kv_head_of(model, head)]
    assert len(siblings) == 2  # 9 query heads over 3 kv heads
    tokens = model.to_tokens(PROMPTS, prepend_bos=False)
    names = (f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out")
    with torch.no_grad():
        _, clean = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    seen = {}

    def record(act, hook):
        seen[hook.name] = act.clone()

    fwd_hooks = ablation_hooks(model, tokens, Ablation(heads([(layer, head)])))
    logits_with(model, tokens, fwd_hooks + [(n, record) for n in names])
    z = seen[names[0]]
    assert torch.all(z[:, :, head] == 0)
    torch.testing.assert_close(z[:, :, siblings], clean[names[0]][:, :, siblings], atol=0, rtol=0)
    # Closed form: removing head h's z takes away exactly z_h @ W_O[h] from the attention output.
    head_write = clean[names[0]][:, :, head] @ model.W_O[layer, head]
    torch.testing.assert_close(seen[names[1]], clean[names[1]] - head_write, atol=1e-4, rtol=1e-4)


def test_unknown_method_names_close_match():
    with pytest.raises(InterpError, match=r"method='mena'.*Did you mean: 'mean'"):
        Ablation(heads([(0, 0)]), method="mena", reference=["x"])
    with pytest.raises(InterpError, match=r"mean_over='positon'.*Did you mean: 'position'"):
        Ablation(heads([(0, 0)]), method="mean", reference=["x"], mean_over="positon")
    with pytest.raises(InterpError, match=r"mean_over.*applies to method='mean' only"):
        Ablation(heads([(0, 0)]), method="resample", reference=["x"], mean_over="all")


@pytest.mark.parametrize("method", ["mean", "resample"])
@pytest.mark.parametrize("reference", [None, []])
def test_mean_and_resample_need_a_reference_set(method, reference):
    with pytest.raises(InterpError, match=rf"method='{method}'\) needs a non-empty reference set"):
        Ablation(heads([(0, 0)]), method=method, reference=reference)


def test_empty_sites_is_refused():
    with pytest.raises(InterpError, match=r"Ablation\(sites=\[\]\)"):
        Ablation([])


@pytest.mark.parametrize("method, mean_over", [("mean", "position"), ("resample", "auto")])
def test_reference_of_wrong_length_is_refused(tiny_model, method, mean_over):
    ablation = Ablation(heads([(0, 0)]), method=method, reference=tiny_tokens(3, 4, seed=7), mean_over=mean_over)
    with pytest.raises(
        ShapeMismatchError, match=r"reference has 4 tokens per prompt but the target prompts have 6.*of 6 tokens"
    ):
        run_ablated(tiny_model, tiny_tokens(2, 6, seed=8), ablation)


def test_resample_with_only_identical_references_is_refused(tiny_model):
    tokens = tiny_tokens(2, 5, seed=9)
    with pytest.raises(InterpError, match="every reference prompt is identical to target prompt 0"):
        run_ablated(tiny_model, tokens, Ablation(heads([(0, 0)]), method="resample", reference=tokens[:1]))


@pytest.mark.parametrize(
    "site, field",
    [
        (Site(1, "z", head=4), "head=4"),
        (Site(1, "mlp_post", neuron=128), "neuron=128"),
        (Site(3, "attn_out"), "layer=3"),
        (Site(1, "z", head=0, position=6), "position=6"),
    ],
)
def test_out_of_range_sites_name_the_field(tiny_model, site, field):
    with pytest.raises(OutOfRangeError, match=field):
        run_ablated(tiny_model, tiny_tokens(1, 6, seed=10), Ablation([site]))


@pytest.mark.parametrize("method, mean_over", [("mean", "position"), ("mean", "all"), ("resample", "auto")])
def test_precomputed_reference_cache_equals_caching_the_reference(tiny_model, method, mean_over):
    tokens, reference = tiny_tokens(3, 7, seed=11), tiny_tokens(5, 7, seed=12)
    sites = heads([(0, 1), (2, 3)]) + neurons([(1, 5)], position=4) + layers([1], "mlp_out")
    ablation = Ablation(sites, method=method, reference=reference, mean_over=mean_over, seed=2)
    _, tl_cache = tiny_model.run_with_cache(reference)  # TransformerLens's own cache works as the reference cache
    from_tl = run_ablated(tiny_model, tokens, ablation, reference_cache=tl_cache)
    ours = reference_activations(
        tiny_model,
        reference,
        ["blocks.0.attn.hook_z", "blocks.2.attn.hook_z", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out"],
    )
    computed = run_ablated(tiny_model, tokens, ablation)
    assert torch.allclose(
        run_ablated(tiny_model, tokens, ablation, reference_cache=ours), computed, atol=1e-5
    )  # slices vs whole tensors: summation order only
    assert torch.allclose(from_tl, computed, atol=1e-5)
    assert not torch.allclose(
        computed, run_ablated(tiny_model, tokens, Ablation(sites)), atol=1e-3
    )  # the ablation did something


def test_precomputed_reference_cache_must_hold_the_hooks_and_the_reference(tiny_model):
    tokens, reference = tiny_tokens(2, 6, seed=13), tiny_tokens(4, 6, seed=14)
    ablation = Ablation(heads([(1, 0)]) + neurons([(2, 3)]), method="mean", reference=reference)
    partial = reference_activations(tiny_model, reference, ["blocks.1.attn.hook_z"])
    with pytest.raises(InterpError, match=r"lacks hook\(s\) \['blocks.2.mlp.hook_post'\]"):
        ablation_hooks(tiny_model, tokens, ablation, reference_cache=partial)
    other = reference_activations(tiny_model, reference[:3], ["blocks.1.attn.hook_z", "blocks.2.mlp.hook_post"])
    with pytest.raises(ShapeMismatchError, match=r"batch x pos \(3, 6\).*\(4, 6\)"):
        ablation_hooks(tiny_model, tokens, ablation, reference_cache=other)
