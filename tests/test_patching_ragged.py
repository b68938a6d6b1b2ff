"""Ragged batches in a layer x position sweep (issue 19): a variant that patches position p runs positions p.. only.

`ragged_groups` is checked against a brute-force search over every split of the distinct start positions into
runs, with its cost written out again here; the work the engine then runs is counted by torch's FlopCounterMode
and compared with the FLOP floor of interp.patching.cost.
"""

import itertools
import math

import pytest
import torch

from interp.patching import PatchingTask, engine, patch_layer_positions
from interp.patching.cost import sweep_flops
from interp.patching.engine import ragged_groups
from interp.sites import Site
from tests.test_patching_floor import engine_flops


def brute_force_cost(starts, seq_len, n_prompts, per_batch, overhead):
    """The least cost over every split of the sorted distinct starts into contiguous runs (each run from its first)."""
    distinct = sorted(set(starts))
    counts = [starts.count(s) for s in distinct]
    best = math.inf
    for cuts in itertools.product([False, True], repeat=len(distinct) - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [len(distinct)]
        cost = 0
        for a, b in zip(bounds, bounds[1:]):
            n = sum(counts[a:b])
            cost += math.ceil(n / per_batch) * overhead + n_prompts * n * (seq_len - distinct[a])
        best = min(best, cost)
    return best


def cost_of(slices, starts, seq_len, n_prompts, overhead):
    return sum(overhead + n_prompts * (g.stop - g.start) * (seq_len - starts[g.start]) for g in slices)


@pytest.mark.parametrize("seed", range(40))
def test_groups_are_the_least_cost_split(seed):
    rng = torch.Generator().manual_seed(seed)
    seq_len = int(torch.randint(2, 12, (1,), generator=rng))
    starts = sorted(
        torch.randint(0, seq_len, (int(torch.randint(1, 14, (1,), generator=rng)),), generator=rng).tolist()
    )
    n_prompts, per_batch = int(torch.randint(1, 5, (1,), generator=rng)), int(torch.randint(1, 6, (1,), generator=rng))
    overhead = int(torch.randint(0, 40, (1,), generator=rng))
    slices = ragged_groups(starts, seq_len, n_prompts, per_batch, overhead)
    covered = [i for g in slices for i in range(len(starts))[g]]
    assert covered == list(range(len(starts)))  # every variant once, in order
    assert all(0 < g.stop - g.start <= per_batch for g in slices)
    # each batch runs from its own first start, so its cost is at most the run's: never above the brute force's best
    assert cost_of(slices, starts, seq_len, n_prompts, overhead) <= brute_force_cost(
        starts, seq_len, n_prompts, per_batch, overhead
    )


def test_no_overhead_splits_every_start_and_a_huge_one_keeps_one_batch():
    starts = [0, 0, 1, 3, 3, 4]
    assert ragged_groups(starts, 5, 2, 10, 0) == [slice(0, 2), slice(2, 3), slice(3, 5), slice(5, 6)]
    assert ragged_groups(starts, 5, 2, 10, 10**9) == [slice(0, 6)]
    # the budget allows two batches: either way two, so the later starts go apart
    assert ragged_groups(starts, 5, 2, 4, 10**9) == [slice(0, 3), slice(3, 6)]
    assert ragged_groups([2, 2, 2], 5, 1, 2, 0) == [slice(0, 2), slice(2, 3)]


@pytest.fixture(scope="module")
def task(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 3, 7), generator=torch.Generator().manual_seed(5))
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


def test_split_batches_run_the_floor_and_give_the_same_values(task, monkeypatch):
    sites = [Site(layer, "resid_pre", position=p) for layer in (0, 1) for p in range(task.seq_len)]
    floor = sweep_flops(task.model.cfg, sites, task.n_prompts, task.seq_len, causal=False)
    split, n_split, values_split = engine_flops(task, sites, monkeypatch, overhead=0)
    whole, n_whole, values_whole = engine_flops(task, sites, monkeypatch, overhead=10**9)
    assert (n_split, n_whole) == (2 * task.seq_len, 2)
    assert split == floor  # every variant from its own position: exactly the floor's products
    assert whole > 1.5 * floor  # one batch a layer runs every variant over every position
    torch.testing.assert_close(torch.tensor(values_split), torch.tensor(values_whole), atol=1e-5, rtol=0)


def test_split_sweep_equals_one_variant_at_a_time(task, monkeypatch):
    monkeypatch.setitem(engine.BATCH_OVERHEAD_TOKENS, "cpu", 3)
    batched = patch_layer_positions(task, "resid_pre", layers=[0, 2]).metric.to_numpy()
    one = patch_layer_positions(task, "resid_pre", layers=[0, 2], memory_budget=1).metric.to_numpy()
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(one), atol=1e-5, rtol=0)


def test_batch_overhead_is_64_positions_on_cpu_and_4096_on_accelerators():
    from interp.patching.engine import _batch_overhead

    assert _batch_overhead("cpu") == 64
    assert _batch_overhead(torch.device("cpu")) == 64
    assert _batch_overhead("cuda") == 4096 and _batch_overhead("mps") == 4096  # not in the table: launches dominate


def test_rearrange_once_passes_named_axes_through():
    """A call with named axes is not cached but still rearranged as einops would (TransformerLens's attention makes
    none today; a future one must not lose its axes)."""
    import einops

    from interp.patching.engine import _RearrangeOnce

    t = torch.arange(12.0).reshape(4, 3)
    once = _RearrangeOnce(einops)
    assert torch.equal(once.rearrange(t, "(h d) m -> h d m", h=2), einops.rearrange(t, "(h d) m -> h d m", h=2))
    w = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3))
    with torch.no_grad():
        first = once.rearrange(w, "a b -> b a")
        assert once.rearrange(w, "a b -> b a") is first  # a parameter without axes: rearranged once, then reused
        assert once.rearrange(w, "(a x) b -> b a x", x=1) is not first
