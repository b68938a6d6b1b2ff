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


def measure(fn):
    """(result, seconds, peak bytes above the RSS at the start or None) of fn()."""
    can = reset_peak()
    base = _rss_kib("VmRSS") if can else None
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, (peak_above(base) if base is not None else None)


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
