"""AtP*'s QK fix (Kramar et al. 2024, arXiv 2403.00745): for a patched query or key, recompute the
attention softmax exactly and take the first-order step only from the attention pattern onward.

A linear estimate through a saturated softmax sees a near-zero gradient and misses large effects;
here the pattern change is exact and only `d metric / d pattern` is linearised.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from interp.attribution.gradients import AttributionPasses
from interp.errors import InterpError
from interp.patching.task import PatchingTask
from interp.sites import n_heads

QK_COMPONENTS = ("q", "k")


def qk_hooks(model, layer: int) -> dict[str, str]:
    """The hooks the fix reads at `layer`: position-encoded q and k, and the pattern."""
    if model.cfg.positional_embedding_type not in ("rotary", "standard", "shortformer"):
        raise InterpError(
            f"method='atp*' recomputes the softmax from q and k, which this model's {model.cfg.positional_embedding_type!r} positional scheme changes after the q/k hooks; use method='atp'."
        )
    rotary = model.cfg.positional_embedding_type == "rotary"
    prefix = f"blocks.{layer}.attn."
    return {
        "q": prefix + ("hook_rot_q" if rotary else "hook_q"),
        "k": prefix + ("hook_rot_k" if rotary else "hook_k"),
        "pattern": prefix + "hook_pattern",
    }


def _masked_scores(task: PatchingTask, layer: int, q: Tensor, k: Tensor) -> Float[Tensor, "batch head query key"]:
    attn = task.model.blocks[layer].attn
    scores = attn.calculate_attention_scores(q.double(), k.double())
    return attn.apply_causal_mask(scores, 0, task.corrupted_mask)


def _query_effects(task: PatchingTask, passes: AttributionPasses, layer: int) -> Float[Tensor, "pos head"]:
    hooks = qk_hooks(task.model, layer)
    pattern, grad = passes.corrupted[hooks["pattern"]].double(), passes.grad[hooks["pattern"]].double()
    # Every query row clean at once: rows of the softmax are independent, so row p is the patch of q at p.
    new_pattern = torch.softmax(
        _masked_scores(task, layer, passes.clean[hooks["q"]], passes.corrupted[hooks["k"]]), -1
    ).nan_to_num(0.0)
    return ((new_pattern - pattern) * grad).sum(-1).sum(0).T  # [batch, head, query, key] -> [query, head]


def _key_effects(
    task: PatchingTask, passes: AttributionPasses, layer: int
) -> tuple[Float[Tensor, "pos kv_head"], Float[Tensor, " kv_head"]]:
    """Per (key position, kv head) the patch of one key, and per kv head the patch of all its keys."""
    model, hooks = task.model, qk_hooks(task.model, layer)
    pattern, grad = passes.corrupted[hooks["pattern"]].double(), passes.grad[hooks["pattern"]].double()
    scores = _masked_scores(task, layer, passes.corrupted[hooks["q"]], passes.corrupted[hooks["k"]])
    mixed = _masked_scores(task, layer, passes.corrupted[hooks["q"]], passes.clean[hooks["k"]])
    valid = torch.isfinite(scores) & torch.isfinite(mixed)
    # One entry t of a softmax row changes by delta: closed form of the new row, for every t at once.
    delta = torch.where(valid, mixed - scores, 0.0).clamp(max=600.0)
    row_dot = (pattern * grad).sum(-1, keepdim=True)  # sum_u A_u g_u per row
    ratio = 1.0 / (1.0 + pattern * torch.expm1(delta))  # old normaliser / new normaliser
    one_key = (
        ratio * (row_dot - pattern * grad) + pattern * delta.exp() * ratio * grad - row_dot
    )  # [batch, head, query, key]
    all_keys = ((torch.softmax(mixed, -1).nan_to_num(0.0) - pattern) * grad).sum((-1, -2))  # [batch, head]
    n_kv = n_heads(model, "k")
    group = model.cfg.n_heads // n_kv
    per_position = (
        one_key.sum((0, 2)).T.reshape(task.seq_len, n_kv, group).sum(-1)
    )  # query heads of a kv head share its key
    return per_position, all_keys.sum(0).reshape(n_kv, group).sum(-1)


def qk_fixed_effects(
    task: PatchingTask, passes: AttributionPasses, layer: int, component: str
) -> tuple[Float[Tensor, "pos head"], Float[Tensor, " head"]]:
    """AtP* effects of patching `component` (q or k) of each head: per position, and at all positions at once."""
    if component == "q":
        per_position = _query_effects(task, passes, layer)
        return per_position, per_position.sum(0)
    if component == "k":
        return _key_effects(task, passes, layer)
    raise InterpError(f"the QK fix applies to components {QK_COMPONENTS}, not {component!r}.")
