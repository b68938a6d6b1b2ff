"""The commands past one process (issue 19): AtP sweeps and activation stores sharded over torch.distributed ranks (two
gloo processes on the tiny model) equal to one process; a store whose build lost a rank resumes and completes; and,
slow, `interp patch` and `interp cache` launched by torchrun itself on the bundled model."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
SITES = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    from interp.distributed import init_group

    torch.set_num_threads(1)
    init_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


# -- AtP, its prompts split over the ranks -----------------------------------------------------------------------
def _task(metric: str, n_prompts: int = 3):
    from interp.models import load_model
    from interp.patching import PatchingTask
    from tests.conftest import TINY_GQA

    model = load_model(TINY_GQA, seed=0)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, n_prompts, 6), generator=torch.Generator().manual_seed(5))
    answers, wrong = torch.arange(n_prompts) * 7 % 101, (torch.arange(n_prompts) * 7 + 3) % 101
    return PatchingTask(model, tokens[0], tokens[1], answers=answers, wrong_answers=wrong, metric=metric)


def _atp_tables(task) -> dict[str, np.ndarray]:
    from interp.attribution import attribute_sites, attribution_sweep
    from interp.sites import Site

    tables = attribution_sweep(task, ("heads", "resid_pre", "neurons"), method="atp")
    qk = [
        Site(layer, c, head=h, position=p) for layer in range(3) for c in ("q", "k") for h in (0, 1) for p in (None, 2)
    ]
    tables["qk*"] = attribute_sites(task, qk + [Site(1, "z", head=0)], method="atp*")
    out = {name: frame.metric.to_numpy() for name, frame in tables.items()}
    out["qk*_reliable"] = tables["qk*"].reliable.astype("float").fillna(-1).to_numpy()
    return out


def _atp_rank(rank: int, world: int, port: int, out: str, metric: str, n_prompts: int) -> None:
    _join(rank, world, port)
    try:
        np.savez(f"{out}/rank{rank}.npz", **_atp_tables(_task(metric, n_prompts)))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize(
    "metric, n_prompts, world",
    [
        ("logit_diff", 3, 2),
        pytest.param("kl_div", 3, 2, marks=pytest.mark.slow),
        pytest.param("logit_diff", 2, 3, marks=pytest.mark.slow),
    ],
)  # 3 prompts over 2 ranks: unequal shares; 2 over 3: a rank without prompts
def test_atp_sweep_sharded_over_prompts_equals_one_process(tmp_path, metric, n_prompts, world):
    one = _atp_tables(_task(metric, n_prompts))
    mp.spawn(_atp_rank, args=(world, _free_port(), str(tmp_path), metric, n_prompts), nprocs=world, join=True)
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npz")
        assert set(got.files) == set(one)
        for name, values in one.items():
            assert np.isfinite(values).all() and np.ptp(values) > 0, name  # a sweep with something to compare
            np.testing.assert_allclose(got[name], values, atol=1e-5 * np.abs(values).max(), rtol=0, err_msg=name)


# -- the activation store, its shards split over the ranks -----------------------------------------------------------
def _corpus(n_seqs: int) -> torch.Tensor:
    return torch.randint(0, 101, (n_seqs, 8), generator=torch.Generator().manual_seed(11))


def _build(out: Path, n_seqs: int, n_tokens: int = 22 * 8):
    """22 sequences in shards of 4 (batches of 2): 6 shards, the last of 2 sequences."""
    from interp.models import load_model
    from interp.store import build_store
    from tests.conftest import TINY_GQA

    model = load_model(TINY_GQA, seed=0)
    return build_store(
        model, SITES, _corpus(n_seqs), out, n_tokens, seq_len=8, batch_size=2, shard_tokens=32, progress=False
    )


def _cache_rank(rank: int, world: int, port: int, out: str, stores: list[tuple[str, int]]) -> None:
    _join(rank, world, port)
    try:
        for name, n_seqs in stores:
            _build(Path(out) / name, n_seqs)
    finally:
        torch.distributed.destroy_process_group()


def _same_store(a: Path, b: Path) -> None:
    """The same manifest and byte-identical shard files (the shard sha256s are in the manifest)."""
    manifest_a, manifest_b = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert manifest_a == manifest_b
    assert manifest_a["complete"]
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())  # no parts/ folder or stray file left
    for shard in manifest_a["shards"]:
        assert (a / shard["file"]).read_bytes() == (b / shard["file"]).read_bytes()


def test_store_built_by_two_ranks_equals_one_process(tmp_path):
    from interp.store import open_store
    from interp.models import load_model
    from tests.conftest import TINY_GQA

    one = tmp_path / "one"
    stores = [("full", 30), ("exhausted", 19)]  # 19 sequences: the corpus runs out inside the fifth shard
    for name, n_seqs in stores:
        _build(one / name, n_seqs)
    mp.spawn(_cache_rank, args=(2, _free_port(), str(tmp_path / "two"), stores), nprocs=2, join=True)
    for name, _ in stores:
        _same_store(one / name, tmp_path / "two" / name)
    manifest = json.loads((one / "exhausted" / "manifest.json").read_text())
    assert manifest["corpus_exhausted"] and [s["n_seq"] for s in manifest["shards"]] == [4, 4, 4, 4, 3]
    # and the content against the model run directly (independent of both builds)
    model = load_model(TINY_GQA, seed=0)
    store = open_store(tmp_path / "two" / "full", model)
    _, cache = model.run_with_cache(_corpus(30)[:22], names_filter=SITES[0])
    torch.testing.assert_close(store.activations(SITES[0]), cache[SITES[0]].reshape(22 * 8, -1))


@pytest.mark.slow  # two launches of two processes: ~70 s at a load of 8
def test_store_resumes_after_a_rank_dies(tmp_path):
    """Rank 1 fails writing its second shard (its file name taken by a folder): the launcher stops rank 0 too. The
    rerun keeps the shards already written (rank 1's first is not rewritten) and ends equal to one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    _build(one / "full", 30)
    store = two / "full"
    store.mkdir(parents=True)
    (store / "shard_00003.safetensors").mkdir()  # shards 0..5 dealt round-robin: rank 1 writes 1, then 3
    with pytest.raises(mp.ProcessRaisedException, match="shard_00003"):
        mp.spawn(_cache_rank, args=(2, _free_port(), str(two), [("full", 30)]), nprocs=2, join=True)
    assert (store / "parts" / "00001.json").is_file() and not json.loads((store / "manifest.json").read_text())[
        "complete"
    ]
    first = (store / "shard_00001.safetensors").stat().st_mtime_ns
    (store / "shard_00003.safetensors").rmdir()
    mp.spawn(_cache_rank, args=(2, _free_port(), str(two), [("full", 30)]), nprocs=2, join=True)
    _same_store(one / "full", store)
    assert (store / "shard_00001.safetensors").stat().st_mtime_ns == first  # kept, not written again


# -- the commands themselves under torchrun (the bundled model: slow) ------------------------------------------------
def _torchrun(args: list[str], tmp_path: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")},
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    launcher += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "-m", "experiments.cli"]
    return subprocess.run(launcher + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_interp_patch_under_torchrun_equals_one_process(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from experiments.cli import app

    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"clean": "The capital of France is", "corrupted": "The capital of Spain is", "answer": " Paris", "wrong": " Madrid"},
        {"clean": "The capital of Japan is", "corrupted": "The capital of Italy is", "answer": " Tokyo", "wrong": " Rome"},
    ]  # fmt: skip
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    for method in ("exact", "atp"):
        args = ["patch", str(pairs), "--sweep", "resid_pre", "--method", method]
        one = CliRunner().invoke(app, [*args, "--out", str(tmp_path / f"one-{method}")])
        assert one.exit_code == 0, one.output
        run = _torchrun([*args, "--out", str(tmp_path / f"two-{method}")], tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.count("dashboard:") == 1  # rank 0 alone writes and says so
        a, b = (pd.read_parquet(tmp_path / f"{w}-{method}" / "resid_pre.parquet") for w in ("one", "two"))
        assert len(a) == 30 * 5
        scale = np.abs(a.metric.to_numpy()).max()  # float32 sums in another order (AtP: prompts split over ranks)
        np.testing.assert_allclose(b.metric.to_numpy(), a.metric.to_numpy(), atol=1e-5 * scale, rtol=0)
        assert (tmp_path / f"two-{method}" / "dashboard.html").is_file()


@pytest.mark.slow
def test_interp_cache_under_torchrun_equals_one_process(tmp_path):
    from typer.testing import CliRunner

    from experiments.cli import app

    corpus = tmp_path / "text.txt"
    corpus.write_text(" ".join(f"The number {i} is followed by {i + 1}." for i in range(400)))
    args = [
        "cache",
        "--site",
        "blocks.2.hook_resid_post",
        "--n-tokens",
        "2048",
        "--seq-len",
        "32",
        "--corpus",
        str(corpus),
    ]
    args += ["--shard-tokens", "512"]  # 16 sequences a shard: 4 shards, two for each rank
    one = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    run = _torchrun([*args, "--out", str(tmp_path / "two")], tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for path in (tmp_path / "one" / ".lock", tmp_path / "two" / ".lock"):
        path.unlink(missing_ok=True)
    manifest_a, manifest_b = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two"))
    assert manifest_a == manifest_b and len(manifest_a["shards"]) == 4 and manifest_a["complete"]
    for shard in manifest_a["shards"]:
        assert (tmp_path / "one" / shard["file"]).read_bytes() == (tmp_path / "two" / shard["file"]).read_bytes()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
