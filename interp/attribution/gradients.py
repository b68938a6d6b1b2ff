"""The three passes attribution patching needs: a clean forward, a corrupted forward, one backward.

`AttributionPasses` holds, per hook name, the clean and corrupted activations and the gradient of
the task's metric (averaged over prompts, as the exact sweep scores it) at the corrupted run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from interp.errors import InterpError
from interp.hooks import capture
from interp.patching.task import PatchingTask, last_position_logits

GRADIENT_FREE_METRICS = ("accuracy",)


@dataclass
class AttributionPasses:
    clean: dict[str, Tensor]
    corrupted: dict[str, Tensor]
    grad: dict[str, Tensor]  # d metric / d activation at the corrupted run, for the hooks asked for


def _check_metric(task: PatchingTask) -> None:
    if task.metric_name in GRADIENT_FREE_METRICS:
        raise InterpError(
            f"metric={task.metric_name!r} is piecewise constant, so its gradient is zero and attribution patching cannot estimate it. "
            "Build the PatchingTask with metric='logit_diff', 'answer_prob' or 'kl_div', or use the exact sweep."
        )


def run_passes(task: PatchingTask, activation_hooks: Iterable[str], gradient_hooks: Iterable[str]) -> AttributionPasses:
    """Cache `activation_hooks` in both runs and the metric's gradient at `gradient_hooks` (a subset)."""
    _check_metric(task)
    model = task.model
    activation_hooks, gradient_hooks = sorted(set(activation_hooks)), sorted(set(gradient_hooks))
    if not set(gradient_hooks) <= set(activation_hooks):
        raise InterpError(
            f"gradient_hooks must be cached too; missing from activation_hooks: {sorted(set(gradient_hooks) - set(activation_hooks))}."
        )
    with torch.no_grad():
        clean = capture(
            model, task.clean_tokens, activation_hooks, attention_mask=task.clean_mask, stop_at_layer=model.cfg.n_layers
        )
    corrupted: dict[str, Tensor] = {}

    def save_corrupted(act: Tensor, hook) -> Tensor:
        if not act.requires_grad:  # parameters frozen: make the graph start here instead
            act = act.detach().requires_grad_(True)
        corrupted[hook.name] = act
        return act

    with torch.enable_grad():
        resid = model.run_with_hooks(
            task.corrupted_tokens,
            attention_mask=task.corrupted_mask,
            fwd_hooks=[(n, save_corrupted) for n in activation_hooks],
            stop_at_layer=model.cfg.n_layers,
        )
        score = task.score(last_position_logits(model, resid))[0]
        if not score.requires_grad:
            raise InterpError(
                f"metric {task.metric_name!r} does not depend differentiably on the logits (no gradient); attribution patching needs a differentiable metric."
            )
        grads = torch.autograd.grad(score, [corrupted[n] for n in gradient_hooks], allow_unused=True)
    grad = {n: (torch.zeros_like(corrupted[n]) if g is None else g.detach()) for n, g in zip(gradient_hooks, grads)}
    return AttributionPasses(clean, {n: a.detach() for n, a in corrupted.items()}, grad)
