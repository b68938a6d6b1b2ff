"""The patching engine's last block at the last position only, and the FLOP floor of a sweep (issue 19).

The last-position block is compared with the engine's reference path (every position through the last
block, which tests/test_patching.py compares with TransformerLens); the FLOP count is compared with
torch's own FlopCounterMode around the batches the engine runs.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from interp.patching import PatchingTask, engine, patch_sites
from interp.patching.cost import BlockFlops, sweep_flops, variant_flops
from interp.sites import Site


@pytest.fixture(scope="module")
def task(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 3, 7), generator=torch.Generator().manual_seed(11))
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


SITES = (
    [Site(layer, "resid_pre", position=p) for layer in range(3) for p in (None, 0, 3, 6)]
    + [Site(layer, "z", head=h) for layer in range(3) for h in range(4)]
    + [Site(layer, "mlp_post", neuron=n, position=p) for layer in (0, 2) for n in (5, 77) for p in (None, 2)]
)


def test_last_position_block_equals_every_position(task, monkeypatch):
    calls = []
    original = engine._keys_values
    monkeypatch.setattr(engine, "_keys_values", lambda *a: calls.append(1) or original(*a))
    fast = patch_sites(task, SITES, memory_budget=1)  # one variant a batch: every start position is exercised
    assert calls, "the last-position path never ran"
    monkeypatch.setattr(engine, "LAST_POSITION_BLOCK", False)
    reference = patch_sites(task, SITES, memory_budget=1)
    torch.testing.assert_close(
        torch.tensor(fast.metric.to_numpy()), torch.tensor(reference.metric.to_numpy()), atol=1e-5, rtol=0
    )
    batched = patch_sites(task, SITES)  # stacked variants with a shared prefix
    torch.testing.assert_close(
        torch.tensor(batched.metric.to_numpy()), torch.tensor(reference.metric.to_numpy()), atol=1e-5, rtol=0
    )


def test_last_position_block_not_used_with_a_hook_inside_it(task, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "_keys_values", lambda *a: calls.append(1))
    patch_sites(task, [Site(2, "z", head=1), Site(2, "resid_pre", position=4)])
    assert not calls


def engine_flops(task, sites, monkeypatch, overhead=None):
    """(FLOPs of the batches the engine runs for `sites`, counted by FlopCounterMode; the number of batches; the
    metric values). overhead: BATCH_OVERHEAD_TOKENS on CPU for this call (None: as it is)."""
    if overhead is not None:
        monkeypatch.setitem(engine.BATCH_OVERHEAD_TOKENS, "cpu", overhead)
    counted = []
    original = engine._score_variants

    def counting(*args):
        with FlopCounterMode(display=False) as counter:
            out = original(*args)
        counted.append(counter.get_total_flops())
        return out

    monkeypatch.setattr(engine, "_score_variants", counting)
    frame = patch_sites(task, sites)
    monkeypatch.setattr(engine, "_score_variants", original)
    return sum(counted), len(counted), frame.metric.to_numpy()


@pytest.mark.parametrize("layer, position", [(0, None), (1, None), (0, 3), (1, 6)])
def test_floor_equals_the_flops_the_engine_runs(task, monkeypatch, layer, position):
    """For resid_pre before the last block the engine runs exactly the floor's products (its score matrix is full, so
    causal=False); torch's FlopCounterMode counts them independently. (A site in the last block runs that block at
    every position: above the floor, by design.)"""
    sites = [Site(layer, "resid_pre", position=position)]
    cfg = task.model.cfg
    assert engine_flops(task, sites, monkeypatch)[0] == sweep_flops(
        cfg, sites, task.n_prompts, task.seq_len, causal=False
    )


def test_floor_by_hand(tiny_model):
    cfg = tiny_model.cfg  # d_model 64, 4 heads of 16, 2 kv heads, gated d_mlp 128, d_vocab 101, 3 layers
    block = BlockFlops.of(cfg)
    assert (block.q, block.kv, block.attention, block.w_o, block.mlp_in, block.w_out) == (
        2 * 64 * 64, 2 * 2 * 64 * 32, 2 * 2 * 64, 2 * 64 * 64, 2 * 2 * 64 * 128, 2 * 128 * 64,
    )  # fmt: skip
    unembed = 2 * 64 * 101
    # a patch at the last position of the last block's mlp_post: W_out at one position, then the unembedding
    assert variant_flops(cfg, Site(2, "mlp_post", position=4), 5) == block.w_out + unembed
    # resid_pre of the last block at position 3 of 5: key and value of position 3, the whole block at position 4
    assert variant_flops(cfg, Site(2, "resid_pre", position=3), 5) == block.kv + block.token(5) + unembed
    # causal: position p attends to p + 1 keys
    full = variant_flops(cfg, Site(1, "resid_pre"), 5, causal=False)
    causal = variant_flops(cfg, Site(1, "resid_pre"), 5)
    assert full - causal == block.attention * (0 + 1 + 2 + 3 + 4)


def test_recorded_products_have_the_flops_torch_counts(task):
    """matmul_calls records every product of a sweep (the clean and corrupted runs included); their FLOPs, summed
    by call_flops, equal FlopCounterMode's count of the same run."""
    from interp.patching.cost import call_flops, matmul_calls

    sites = [Site(1, "resid_pre", position=p) for p in range(task.seq_len)] + [Site(0, "z", head=1)]
    _, calls = matmul_calls(lambda: patch_sites(task, sites))
    with FlopCounterMode(display=False) as counter:
        patch_sites(task, sites)
    assert sum(count * call_flops(func, described) for (func, described), count in calls.items()) == (
        counter.get_total_flops()
    )


def test_shape_floor_replays_each_product_with_its_shapes_and_strides():
    from interp.patching.cost import matmul_calls, shape_floor_seconds

    a, w, bias, q, k = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3), torch.randn(2, 4, 6), torch.randn(2, 6, 5)

    def run():
        for _ in range(3):
            torch.nn.functional.linear(a, w, bias)  # addmm, reading w transposed
        return a @ w.T, q @ k  # mm, bmm

    out, calls = matmul_calls(run)
    torch.testing.assert_close(out[1], torch.bmm(q, k))  # the run's own results come back
    by_op = {(str(func), described[-1][:2]): count for (func, described), count in calls.items()}
    assert by_op == {("aten.addmm.default", ((7, 3), (1, 7))): 3, ("aten.mm.default", ((7, 3), (1, 7))): 1,
                     ("aten.bmm.default", ((2, 6, 5), (30, 5, 1))): 1}  # fmt: skip
    ticks = iter(range(1000))  # a clock that advances 1 a reading: every product times 1 "second"
    floor = shape_floor_seconds(calls, clock=lambda: next(ticks), min_seconds=0)
    assert (
        floor["shape_floor_s"] == 5 and floor["matmul_flops"] == 3 * 2 * 5 * 7 * 3 + 2 * 5 * 7 * 3 + 2 * 2 * 4 * 6 * 5
    )


def test_attention_weights_are_rearranged_once_a_sweep(task, monkeypatch):
    """TransformerLens rearranges W_Q, W_K, W_V and W_O (a copy) on every attention call; during a sweep the engine
    makes each such copy once. Counted on einops itself; the values are those of the sweep without the cache, exactly
    (the same contiguous tensors multiply), and TransformerLens gets its einops back afterwards."""
    import contextlib

    import einops
    from transformer_lens.components import abstract_attention
    from transformer_lens.utilities import attention as attention_utilities

    sites = [Site(layer, "resid_pre", position=p) for layer in range(3) for p in (0, 4)] + [Site(1, "z", head=2)]
    seen = []
    real = einops.rearrange

    def counting(tensor, pattern, **axes):
        if isinstance(tensor, torch.nn.Parameter):
            seen.append((id(tensor), pattern))
        return real(tensor, pattern, **axes)

    monkeypatch.setattr(einops, "rearrange", counting)
    cached = patch_sites(task, sites, memory_budget=1).metric.to_numpy()  # a batch a variant: many passes a block
    assert seen and len(seen) == len(set(seen))
    assert abstract_attention.einops is einops and attention_utilities.einops is einops
    seen.clear()
    monkeypatch.setattr(engine, "_attention_weights_rearranged_once", contextlib.nullcontext)
    uncached = patch_sites(task, sites, memory_budget=1).metric.to_numpy()
    assert len(seen) > 3 * len(set(seen))  # without it: a copy a call
    assert (cached == uncached).all()


def test_rearranging_once_steps_aside_when_gradients_are_on(tiny_model):
    """Attribution takes gradients through the same attention code: there the parameters' own rearrange runs."""
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (1, 5), generator=torch.Generator().manual_seed(3))
    with engine._attention_weights_rearranged_once():
        with torch.no_grad():
            tiny_model(tokens)  # rearranges without a graph; reused below, W_Q would get no gradient
        tiny_model(tokens)[0, -1, 0].backward()
    grad = tiny_model.blocks[0].attn.W_Q.grad
    assert grad is not None
    tiny_model.zero_grad(set_to_none=True)
    tiny_model(tokens)[0, -1, 0].backward()
    torch.testing.assert_close(grad, tiny_model.blocks[0].attn.W_Q.grad, atol=0, rtol=0)
    tiny_model.zero_grad(set_to_none=True)


def test_block_flops_of_plain_gated_and_attention_only_configs():
    """BlockFlops.of on HookedTransformerConfigs: a plain MLP has one input product, a gated one two; attention-only
    blocks have none; without n_key_value_heads every head has its own keys and values."""
    from transformer_lens import HookedTransformerConfig

    def cfg(**kw):
        base = dict(n_layers=1, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=16, d_vocab=50, act_fn="gelu")
        return HookedTransformerConfig(**{**base, **kw})

    plain, gated = BlockFlops.of(cfg()), BlockFlops.of(cfg(gated_mlp=True, n_key_value_heads=2))
    assert (plain.kv, plain.mlp_in, plain.w_out) == (2 * 2 * 32 * 4 * 8, 2 * 32 * 64, 2 * 64 * 32)
    assert (gated.kv, gated.mlp_in) == (2 * 2 * 32 * 2 * 8, 2 * 2 * 32 * 64)
    attn_only = BlockFlops.of(cfg(attn_only=True, d_mlp=None))
    assert (attn_only.mlp_in, attn_only.w_out, attn_only.q) == (0, 0, plain.q)


def test_block_token_flops_from_each_stage_on(tiny_model):
    block = BlockFlops.of(tiny_model.cfg)
    after_attention = block.w_o + block.mlp_in + block.w_out
    assert block.token(5) == block.q + block.kv + 5 * block.attention + after_attention
    assert block.token(5, "attention") == 5 * block.attention + after_attention
    assert block.token(5, "w_o") == after_attention
    assert block.token(5, "mlp") == block.mlp_in + block.w_out
    assert block.token(5, "w_out") == block.w_out
    assert block.token(5, "none") == 0


def test_call_flops_skips_scalar_arguments_and_materialise_keeps_them():
    """A recorded product may carry scalars (baddbmm's beta and alpha); call_flops reads the last two tensors and
    _materialise returns anything that is not a tensor description as it is."""
    from interp.patching.cost import _describe, _materialise, call_flops

    bias, a, b = torch.randn(2, 3, 5), torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    described = _describe((bias, a, b, 1, 0.5))
    assert call_flops(torch.ops.aten.baddbmm.default, described) == 2 * 2 * 3 * 4 * 5
    assert [_materialise(d) for d in described[3:]] == [1, 0.5]
    assert _materialise((1, 2, 3, 4)) == (1, 2, 3, 4)  # a 4-tuple that is not (shape, stride, dtype, device)


def test_materialise_gives_the_recorded_layout_dtype_and_device():
    from interp.patching.cost import _materialise

    t = _materialise(((3, 4), (1, 3), torch.bfloat16, "cpu"))  # a transposed view
    assert (t.shape, t.stride(), t.dtype, t.device.type) == ((3, 4), (1, 3), torch.bfloat16, "cpu")
    assert t.untyped_storage().nbytes() == 12 * 2  # exactly the elements the view reaches
    m = _materialise(((2, 3), (3, 1), torch.float32, "meta"))
    assert m.device.type == "meta"
    empty = _materialise(((0,), (5,), torch.float32, "cpu"))  # an empty argument: no storage, no negative size
    assert empty.shape == (0,) and empty.untyped_storage().nbytes() == 0


def test_shape_floor_repeats_each_product_three_times_then_until_min_seconds_or_max_repeats():
    """Each product: one warm-up call, then timed calls until there are 3 and (their sum >= min_seconds or there are
    max_repeats); the floor is the sum of count x median, the rows say what was timed."""
    from interp.patching.cost import matmul_calls, shape_floor_seconds

    a, b = torch.randn(4, 5), torch.randn(5, 6)
    _, calls = matmul_calls(lambda: [a @ b for _ in range(2)] + [torch.mm(b.T, a.T)])
    assert sorted(calls.values()) == [1, 2]

    def clock_of(deltas):
        readings, now = [], 0.0
        for d in deltas:
            readings += [now, now + d]
            now += d
        it = iter(readings)
        return lambda: next(it)

    def run(deltas, **kw):
        return shape_floor_seconds(calls, clock=clock_of(deltas), **kw)

    floor = run([1.0, 5.0, 2.0, 1.0, 1.0, 9.0], min_seconds=0)  # 3 timed calls a product, medians 2 and 1
    first, second = floor["products"]
    assert (first[2], first[3], second[2], second[3]) == (2, 2.0, 1, 1.0)
    assert first[0] == "aten.mm.default" and first[1][0] == (4, 5)
    assert floor["shape_floor_s"] == 2 * 2.0 + 1 * 1.0
    assert floor["matmul_flops"] == 3 * 2 * 4 * 5 * 6
    with pytest.raises(StopIteration):  # a fourth timed call of the first product would read past 6 deltas
        run([0.1] * 6, min_seconds=0.35)
    assert run([0.1] * 8, min_seconds=0.35)["shape_floor_s"] == pytest.approx(3 * 0.1)  # 4 calls, then 4
    assert run([1.0] * 6, min_seconds=3.0)["shape_floor_s"] == 3.0  # a sum equal to min_seconds is enough
    assert run([1.0] * 10, min_seconds=100, max_repeats=5)["shape_floor_s"] == 3.0  # capped at 5 calls each
    with pytest.raises(StopIteration):
        run([1.0] * 10, min_seconds=100, max_repeats=6)


@pytest.mark.parametrize(
    "change, ok",
    [
        ({}, True),
        ({"positional_embedding_type": "alibi"}, True),
        ({"positional_embedding_type": "standard"}, True),
        ({"positional_embedding_type": "shortformer"}, False),
        ({"use_split_qkv_input": True}, False),
        ({"use_attn_in": True}, False),
        ({"parallel_attn_mlp": True}, False),
        ({"clip_qkv": 8.0}, False),
        ({"use_qk_norm": True}, False),
        ({"original_architecture": "Olmo2ForCausalLM"}, False),
        ({"original_architecture": "OlmoeForCausalLM"}, False),
        ({"original_architecture": "Olmo3ForCausalLM"}, False),
    ],
)
def test_last_position_block_only_where_keys_and_values_stand_apart(change, ok, monkeypatch):
    """The last block runs at the last position only when its keys and values are plain projections of ln1's output;
    each feature that breaks that (split or per-head inputs, parallel blocks, clipping, QK-norm, OLMo's norms,
    shortformer positions) turns it off, and so does LAST_POSITION_BLOCK = False."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp.patching import engine

    base = dict(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=8, d_vocab=20, act_fn="silu")
    base.update(positional_embedding_type="rotary", normalization_type="RMS", rotary_dim=4)
    model = HookedTransformer(HookedTransformerConfig(**{**base, **change}))
    assert engine._last_position_block_ok(model) is ok
    monkeypatch.setattr(engine, "LAST_POSITION_BLOCK", False)
    assert engine._last_position_block_ok(model) is False


@pytest.mark.parametrize("keep", ["q_norm", "k_norm", "olmo"])
def test_last_position_block_reads_the_last_blocks_norms_and_the_olmo_names(keep):
    """Each check on its own: a QK-norm config whose last block alone keeps only its q_norm (or only its k_norm) is
    refused; an OLMo architecture name is refused even with the norms removed (its post-norm blocks)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from interp.patching import engine

    base = dict(n_layers=3, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=8, d_vocab=20, act_fn="silu")
    base.update(positional_embedding_type="rotary", normalization_type="RMS", rotary_dim=4, use_qk_norm=True)
    if keep == "olmo":
        base["original_architecture"] = "Olmo2ForCausalLM"
    model = HookedTransformer(HookedTransformerConfig(**base))
    for i, block in enumerate(model.blocks):
        for name in ("q_norm", "k_norm"):
            if i < len(model.blocks) - 1 or name != keep:
                setattr(block.attn, name, None)
    assert engine._last_position_block_ok(model) is False
    for name in ("OlmoeForCausalLM", "Olmo3ForCausalLM", "LlamaForCausalLM"):
        model.cfg.original_architecture = name
        assert engine._last_position_block_ok(model) is (keep == "olmo" and name == "LlamaForCausalLM")
