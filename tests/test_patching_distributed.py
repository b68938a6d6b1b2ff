"""The exact patching sweep sharded over torch.distributed ranks (issue 19): two gloo processes, each running its share
of the variant batches, every rank ending with the whole sweep, equal to one process's sweep."""

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from interp.errors import InterpError
from interp.patching.engine import shard_batches
from interp.sites import Site

SITES = (
    [Site(layer, "resid_pre", position=p) for layer in range(3) for p in (None, 1, 4)]
    + [Site(layer, "z", head=h) for layer in range(3) for h in range(4)]
    + [Site(2, "mlp_post", neuron=n) for n in (3, 50)]
)


def _task():
    from interp.models import load_model
    from interp.patching import PatchingTask
    from tests.conftest import TINY_GQA

    model = load_model(TINY_GQA, seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 3, 6), generator=torch.Generator().manual_seed(3))
    return PatchingTask(model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


def _rank(rank: int, world: int, port: int, out: str, budget: int) -> None:
    from interp.distributed import init_group
    from interp.patching import patch_sites

    torch.set_num_threads(1)
    init_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        frame = patch_sites(_task(), SITES, memory_budget=budget)
        np.save(f"{out}/rank{rank}.npy", frame.metric.to_numpy())
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# one variant a batch (many batches to share), and a layer a batch
@pytest.mark.parametrize("budget", [1, pytest.param(1 << 30, marks=pytest.mark.slow)])
def test_two_ranks_equal_one_process(tmp_path, budget):
    from interp.patching import patch_sites

    one = patch_sites(_task(), SITES, memory_budget=budget).metric.to_numpy()
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path), budget), nprocs=2, join=True)
    for rank in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"rank{rank}.npy"), one, atol=1e-6, rtol=0)


def test_shards_cover_every_batch_once_and_balance():
    batches = [(layer, [10 * layer + i]) for layer in range(30) for i in range(3)]
    shards = shard_batches(batches, 4, 30)
    flat = sorted(b for shard in shards for b in shard)
    assert flat == sorted(batches)
    loads = [sum((30 - layer) * len(idx) for layer, idx in shard) for shard in shards]
    assert max(loads) - min(loads) <= 30  # greedy largest-first: within one batch's cost


def test_shards_weigh_the_positions_a_batch_runs():
    """Three equal-sized batches of one layer, one running all 5 positions and two running 1: counting variants only
    puts the long batch beside a short one; weighing positions gives it a rank of its own."""
    batches = [(0, [0, 1]), (0, [2, 3]), (0, [4, 5])]
    assert shard_batches(batches, 2, 4) == [[(0, [0, 1]), (0, [4, 5])], [(0, [2, 3])]]
    assert shard_batches(batches, 2, 4, weights=[10, 2, 2]) == [[(0, [0, 1])], [(0, [2, 3]), (0, [4, 5])]]
    with pytest.raises(InterpError, match=r"shard_batches: 2 weights for 3 batches"):
        shard_batches(batches, 2, 4, weights=[1, 2])


def test_batch_work_counts_overhead_prompts_variants_and_positions_from_the_earliest_start():
    from interp.patching.engine import batch_work

    task = _task()  # 3 prompts of 6 tokens
    assert (task.n_prompts, task.seq_len) == (3, 6)
    assert batch_work(task, [4, 2, 5], overhead=64) == 64 + 3 * 3 * (6 - 2)


def test_shards_break_cost_ties_by_layer_then_first_variant():
    """Equal costs: the earlier layer goes first, whatever the variant numbers; then the lower first variant."""
    batches = [(1, [0]), (0, [5]), (0, [2])]  # 4 layers: 3 blocks x weight 4 = 4 blocks x weight 3 = 12
    assert shard_batches(batches, 3, 4, weights=[4, 3, 3]) == [[(0, [2])], [(0, [5])], [(1, [0])]]
