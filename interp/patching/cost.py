"""What a patching sweep must compute: its matmul FLOPs (the physical floor) and the batches the engine runs.

The floor of one variant (one patched Site) is the work no method can skip: in the Site's own block the
products after the Site, in every later block the positions the patch can change (all of them, or
positions >= p for a patch at position p: causal attention leaves earlier ones as in the corrupted run),
in the last block only the keys and values of those positions plus the whole block at the last position
(the metric reads nothing else), and the unembedding of the last position. Only matrix products are
counted (2 FLOPs a multiply-add): norms, activations and residual adds are a few percent of a block.
Divided by the rate a large matmul reaches on the machine it is a time no implementation can beat there.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from interp.sites import Site

# where in a block a Site sits, so that only the products after it count in its own block
_AFTER_SITE = {
    "resid_pre": "all",
    "attn_in": "all",
    "q": "attention",
    "k": "attention",
    "v": "attention",
    "attn_scores": "attention",
    "pattern": "attention",
    "z": "w_o",
    "result": "mlp",
    "attn_out": "mlp",
    "resid_mid": "mlp",
    "mlp_pre": "w_out",
    "mlp_pre_linear": "w_out",
    "mlp_post": "w_out",
    "mlp_out": "none",
    "resid_post": "none",
}
_STAGES = ("all", "attention", "w_o", "mlp", "w_out", "none")


@dataclass(frozen=True)
class BlockFlops:
    """Matmul FLOPs of one block for one token, by product; `attention` is per key attended to."""

    q: int
    kv: int  # keys and values together
    attention: int  # scores and the weighted sum, per key
    w_o: int
    mlp_in: int  # W_in (and W_gate)
    w_out: int

    @classmethod
    def of(cls, cfg) -> BlockFlops:
        """A TransformerLens HookedTransformerConfig's block (n_key_value_heads None: one key-value head a head)."""
        d_model, d_head, heads = cfg.d_model, cfg.d_head, cfg.n_heads
        kv_heads = cfg.n_key_value_heads or heads
        d_mlp = 0 if cfg.attn_only else cfg.d_mlp
        return cls(
            q=2 * d_model * heads * d_head,
            kv=2 * 2 * d_model * kv_heads * d_head,
            attention=2 * 2 * heads * d_head,
            w_o=2 * heads * d_head * d_model,
            mlp_in=(2 if cfg.gated_mlp else 1) * 2 * d_model * d_mlp,
            w_out=2 * d_mlp * d_model,
        )

    def token(self, n_keys: int, stage: str = "all") -> int:
        """FLOPs of one token's path through the block from `stage` on, attending to `n_keys` keys."""
        after = _STAGES.index(stage)
        parts = (
            (self.q + self.kv, 0),
            (self.attention * n_keys, 1),
            (self.w_o, 2),
            (self.mlp_in, 3),
            (self.w_out, 4),
        )
        return sum(flops for flops, where in parts if where >= after)


def variant_flops(cfg, site: Site, seq_len: int, *, causal: bool = True) -> int:
    """The floor of one variant for one prompt (see the module docstring). causal=False counts every query against
    every key, as implementations that mask a full score matrix do."""
    block = BlockFlops.of(cfg)
    first = 0 if site.position is None else site.position
    last_block = cfg.n_layers - 1
    total = 2 * cfg.d_model * cfg.d_vocab  # the last position's unembedding
    for layer in range(site.layer, cfg.n_layers):
        stage = _AFTER_SITE[site.component] if layer == site.layer else "all"
        for pos in range(first, seq_len):
            keys = pos + 1 if causal else seq_len
            if layer == last_block and pos < seq_len - 1:  # another position of the last block: its key and value
                total += block.kv if stage in ("all",) else 0
            else:
                total += block.token(keys, stage)
    return total


def sweep_flops(cfg, sites: Sequence[Site], n_prompts: int, seq_len: int, *, causal: bool = True) -> int:
    """The floor of a sweep: every variant's floor, for every prompt. Sites must be normalised (layer, position >= 0)."""
    return n_prompts * sum(variant_flops(cfg, site, seq_len, causal=causal) for site in sites)


# -- the floor at the shapes a run actually multiplies --------------------------------------------------------------
_MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm")


def matmul_calls(fn) -> tuple[object, Counter]:
    """Run `fn()` and count its matrix products by (op, argument shapes, strides, dtypes): what `shape_floor_seconds`
    replays. Recorded below autograd (aten ops), so F.linear, einsum and matmul all appear as the products they run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    ops = {getattr(torch.ops.aten, name).default for name in _MATMUL_OPS}
    calls: Counter = Counter()

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in ops:
                calls[(func, _describe(args))] += 1
            return func(*args, **(kwargs or {}))

    with Recorder():
        out = fn()
    return out, calls


def _describe(args) -> tuple:
    return tuple(
        (tuple(a.shape), tuple(a.stride()), a.dtype, a.device.type) if isinstance(a, torch.Tensor) else a for a in args
    )


def call_flops(func, described: tuple) -> int:
    """2 x multiply-adds of one recorded product."""
    shapes = [d[0] for d in described if isinstance(d, tuple) and len(d) == 4 and isinstance(d[0], tuple)]
    a, b = shapes[-2], shapes[-1]  # the two factors (addmm / baddbmm put the added tensor first)
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1]


def shape_floor_seconds(
    calls: Counter, *, min_seconds: float = 0.02, max_repeats: int = 50, clock=time.perf_counter
) -> dict:
    """Time every recorded product alone, on random data of its shapes and strides, and sum count x median time: the
    time the run's own matrix products take on this machine at its current thread count, with nothing between them.
    A run over this floor spends the rest outside its products (norms, attention softmax, copies, Python).
    clock: time.process_time on a shared machine at one thread (CPU seconds, which others' load inflates far less)."""
    total, flops, rows = 0.0, 0, []
    for (func, described), count in calls.items():
        args = [_materialise(d) for d in described]
        func(*args)
        times: list[float] = []
        while len(times) < 3 or (sum(times) < min_seconds and len(times) < max_repeats):
            start = clock()
            func(*args)
            times.append(clock() - start)
        seconds = statistics.median(times)
        total += count * seconds
        flops += count * call_flops(func, described)
        rows.append((str(func), [d[0] if isinstance(d, tuple) else d for d in described], count, seconds))
    return dict(shape_floor_s=total, matmul_flops=flops, products=rows)


def _materialise(described):
    if not (isinstance(described, tuple) and len(described) == 4 and isinstance(described[0], tuple)):
        return described
    shape, stride, dtype, device = described
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    return torch.randn(size, dtype=dtype, device=device).as_strided(shape, stride)
