"""A plan before a run: what the run will do, its predicted peak memory and time from a one-batch probe, and a refusal
when the prediction exceeds the memory available.

`plan_patch(task, sites, memory_budget)` runs the most memory-hungry batch of a patching sweep alone (with the clean
and corrupted runs it needs), measures its peak resident memory above the start and its time, and scales the time by
the sweep's work (interp.patching.cost's FLOP floor of the probe against the whole sweep's, plus the two full
forwards every sweep runs). Peak resident memory is read from the kernel (/proc/self/status VmHWM, reset through
/proc/self/clear_refs): Linux only; elsewhere the probe reports the engine's own estimate (the budget).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from interp.errors import InterpError


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable); None where it does not say."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    found = re.search(r"MemAvailable:\s+(\d+) kB", text)
    return int(found.group(1)) * 1024 if found else None


def _rss_kib(field_name: str) -> int | None:
    try:
        found = re.search(rf"{field_name}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(found.group(1)) if found else None


def reset_peak() -> bool:
    """Return freed heap to the kernel (glibc's malloc_trim), then set the peak-RSS mark to the current RSS: the RSS is
    then the live memory, whatever ran before. False where the kernel offers no way."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_above(base_kib: int) -> int | None:
    """Bytes the peak RSS rose above `base_kib` (a VmRSS reading taken after reset_peak())."""
    peak = _rss_kib("VmHWM")
    return None if peak is None else max(0, peak - base_kib) * 1024


# a sampler process: VmRSS of the measured process every millisecond until its stdin closes, then the largest seen
_SAMPLER = """
import sys, threading, time
path, top, done = f"/proc/{sys.argv[1]}/status", 0, threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
while not done.is_set():
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    top = max(top, int(line.split()[1]))
                    break
    except OSError:
        break
    time.sleep(0.001)
print(top)
"""


def measure(fn):
    """(result, seconds, peak bytes above the RSS at the start or None) of fn().

    The peak is the larger of the kernel's high-water mark (VmHWM) and VmRSS read every millisecond by a separate
    process (no GIL to wait for): the kernel updates its high-water mark only on some paths (unmapping, not memory
    the allocator hands back by madvise), so on its own it can miss a peak that is freed that way."""
    import os
    import subprocess
    import sys

    can = reset_peak()
    base = _rss_kib("VmRSS") if can else None
    sampler = None
    if base is not None:
        sampler = subprocess.Popen(
            [sys.executable, "-S", "-c", _SAMPLER, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    start = time.perf_counter()
    try:
        out = fn()
    finally:
        seconds = time.perf_counter() - start
        sampled = int(sampler.communicate("")[0].strip() or 0) if sampler is not None else 0
    if base is None:
        return out, seconds, None
    return out, seconds, max(peak_above(base) or 0, max(0, sampled - base) * 1024)


@dataclass
class Plan:
    """What a run will do and what it is predicted to cost. `check()` refuses a run that will not fit."""

    command: str
    lines: list[str]
    predicted_peak_bytes: int  # above the process's memory when planned (the model loaded)
    predicted_seconds: float
    budget_flag: str  # the setting to lower when the run does not fit
    available_bytes: int | None = field(default_factory=available_memory)

    def render(self) -> str:
        avail = "unknown" if self.available_bytes is None else f"{self.available_bytes / 2**20:,.0f} MiB"
        return "\n".join(
            [
                f"plan for {self.command}:",
                *(f"  {line}" for line in self.lines),
                f"  predicted peak memory above now: {self.predicted_peak_bytes / 2**20:,.1f} MiB (available: {avail})",
                f"  predicted time: {self.predicted_seconds:,.1f} s",
            ]
        )

    def check(self) -> None:
        if self.available_bytes is not None and self.predicted_peak_bytes > self.available_bytes:
            raise InterpError(
                f"{self.command}: the predicted peak memory {self.predicted_peak_bytes / 2**20:,.0f} MiB exceeds the "
                f"{self.available_bytes / 2**20:,.0f} MiB available. Lower {self.budget_flag} and plan again."
            )


def plan_patch(task, sites, memory_budget: int | None = None, *, budget_flag: str = "memory_budget") -> Plan:
    """Plan a patch_sites sweep: its variants and batches, and a one-batch probe's peak memory and time, scaled."""
    from interp.patching.cost import sweep_flops
    from interp.patching.engine import DEFAULT_MEMORY_BUDGET, normalised_site, patch_sites, plan_batches

    memory_budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    model, cfg = task.model, task.model.cfg
    sites = [normalised_site(model, s, task.seq_len) for s in sites]
    batches = plan_batches(task, sites, memory_budget)
    # the probe: the two largest batches, starting earliest (the most positions: the most memory); two, because the
    # second batch reuses the first one's freed memory only in part (the allocator), and the whole sweep does so too
    ranked = sorted(batches, key=lambda b: (-len(b[1]), min(sites[i].position or 0 for i in b[1]), b[0]))[:2]
    probe_sites = [sites[i] for _, idx in ranked for i in idx]
    _, seconds, peak = measure(lambda: patch_sites(task, probe_sites, memory_budget=memory_budget, progress=False))
    if peak is not None:  # the caches the whole sweep holds beyond the probe's: clean sites and corrupted resid_pre
        peak += _cache_bytes(task, sites) - _cache_bytes(task, probe_sites)
    # two full forwards (clean and corrupted runs) plus each variant's floor: the work that scales the time
    full_forward = sweep_flops(cfg, [normalised_site(model, "blocks.0.hook_resid_pre", task.seq_len)], 1, task.seq_len)
    overhead = 2 * task.n_prompts * full_forward
    work = overhead + sweep_flops(cfg, sites, task.n_prompts, task.seq_len)
    probe_work = overhead + sweep_flops(cfg, probe_sites, task.n_prompts, task.seq_len)
    if peak is None:  # no kernel reading: the engine's own bound
        peak = memory_budget
    by_layer: dict[int, int] = {}
    for b_layer, b_idx in batches:
        by_layer[b_layer] = by_layer.get(b_layer, 0) + len(b_idx)
    lines = [
        f"{len(sites)} variants x {task.n_prompts} prompts of {task.seq_len} tokens, in {len(batches)} batches "
        f"(at most {max(len(i) for _, i in batches)} variants each, memory budget {memory_budget / 2**20:,.0f} MiB)",
        "variants by layer: " + ", ".join(f"{k}: {v}" for k, v in sorted(by_layer.items())),
        f"matmul work {work / 1e9:,.2f} GFLOP (probe: {len(ranked)} batches, {len(probe_sites)} variants, "
        f"{seconds:.2f} s)",
    ]
    return Plan("patching sweep", lines, int(peak), seconds * work / probe_work, budget_flag)


def _cache_bytes(task, sites) -> int:
    """The clean activations at `sites`' hooks and the corrupted resid_pre at their layers that patch_sites caches."""
    import torch

    cfg, rows = task.model.cfg, task.n_prompts * task.seq_len
    width = dict(z=cfg.n_heads * cfg.d_head, q=cfg.n_heads * cfg.d_head, result=cfg.n_heads * cfg.d_model)
    kv = (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * cfg.d_head
    width |= dict(k=kv, v=kv, mlp_post=cfg.d_mlp, mlp_pre=cfg.d_mlp, mlp_pre_linear=cfg.d_mlp)
    width |= dict(pattern=cfg.n_heads * task.seq_len, attn_scores=cfg.n_heads * task.seq_len)
    hooks = {(s.hook_name, s.component) for s in sites}
    floats = sum(rows * width.get(component, cfg.d_model) for _, component in hooks)
    floats += rows * cfg.d_model * len({s.layer for s in sites})
    return floats * torch.finfo(cfg.dtype).bits // 8


# the store writer's peak in shards above the probe's: the one shard buffer it fills (interp.store.writer.ShardBuffer,
# allocated once; safetensors >= 0.6 writes from the tensors' memory without a copy). Before the buffer, a list of
# batches and their concatenation: identical runs peaked at two or three shards, as the allocator reused freed memory
# or not, and no prediction within 25% was possible.
SHARD_COPIES = 1


def plan_cache(
    model,
    sites,
    corpus,
    n_tokens: int,
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    shard_tokens: int = 2**16,
    dtype=None,
    encoding: str = "utf-8",
    budget_flag: str = "shard_tokens",
) -> Plan:
    """Plan a build_store run: its batches and shards, and a probe (the real writer on two batches, one a shard, into
    a temporary folder) for memory and time. Peak = the probe's + SHARD_COPIES x (a full shard - the probe's shard):
    what grows with the shard is the buffers the writer holds; the forward of one batch is the same size."""
    import math
    import tempfile

    from interp.sites import as_site
    from interp.store import build_store

    dtype = dtype or model.cfg.dtype
    n_seq = math.ceil(n_tokens / seq_len)
    seqs_per_shard = max(1, shard_tokens // seq_len // batch_size) * batch_size
    n_shards, n_batches = math.ceil(n_seq / seqs_per_shard), math.ceil(n_seq / batch_size)
    probe_tokens = min(n_seq, 2 * batch_size) * seq_len
    with tempfile.TemporaryDirectory(prefix="interp-plan-") as folder:
        store, seconds, peak = measure(
            lambda: build_store(
                model, sites, corpus, Path(folder) / "probe", probe_tokens, seq_len=seq_len, batch_size=batch_size,
                shard_tokens=batch_size * seq_len, dtype=dtype, progress=False, encoding=encoding,
            )
        )  # fmt: skip
        probe_shard = max(s["bytes"] for s in store.manifest["shards"])
        probe_batches = math.ceil(store.n_tokens / seq_len / batch_size)
    per_seq = probe_shard / batch_size  # bytes a sequence adds to a shard (the probe's shards hold one batch)
    shard_bytes = int(per_seq * min(seqs_per_shard, n_seq))
    if peak is None:
        peak = 0
    peak += SHARD_COPIES * max(0, shard_bytes - probe_shard)
    names = ", ".join(as_site(model, s).hook_name for s in sites)
    lines = [
        f"{n_seq * seq_len:,} tokens ({n_seq:,} sequences of {seq_len}) at {names}, stored as {str(dtype).removeprefix('torch.')}",
        f"{n_batches:,} batches of {batch_size} sequences, {n_shards:,} shards of {seqs_per_shard:,} sequences "
        f"(~{shard_bytes / 2**20:,.1f} MiB each, ~{per_seq * n_seq / 2**30:,.2f} GiB in all)",
        f"probe: {probe_batches} batches in {seconds:.2f} s",
    ]
    return Plan("activation store", lines, int(peak), seconds / probe_batches * n_batches, budget_flag)
