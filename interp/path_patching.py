"""Exact path patching (Wang et al. 2022): the effect of a sender along paths that end in receivers.

Run 1 (the paths): the corrupted prompts with the sender's clean output written in and every other
attention head frozen at its corrupted z (and, with through_mlps=False, every MLP frozen at its
corrupted output), so the sender's change reaches the receivers only along direct residual paths
(and through MLPs, which recompute by default, as in Wang et al.). Run 2: the corrupted prompts
with only the receivers' q / k / v set to their values in run 1; the metric is read at the end.
Receiver "logits" reads the metric at the end of run 1: the sender's direct effect on the output.

Senders are batched as variants, like the exact engine: each starts at its layer from the corrupted
run's resid_pre, and the batch of frozen-plus-patched activations is built in one pass
(`interp.kernels.patching.patched_batch`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import InterpError, UnknownSiteError
from interp.hooks import capture, capture_hook
from interp.kernels.patching import ALL, NONE, patched_batch
from interp.patching.engine import DEFAULT_MEMORY_BUDGET, normalised_site, variants_per_batch, results_frame
from interp.patching.task import PatchingTask, last_position_logits
from interp.sites import Site

SENDER_COMPONENTS = ("z", "mlp_out")
RECEIVER_COMPONENTS = ("q", "k", "v")
LOGITS = "logits"


def _check(senders: list[Site], receivers: list[Site] | str) -> None:
    for s in senders:
        if s.component not in SENDER_COMPONENTS:
            raise UnknownSiteError(
                f"senders: {s} is not a sender; a sender is a head's output (component 'z', head and position optional) or an MLP's ('mlp_out')."
            )
    if receivers == LOGITS:
        return
    for r in receivers:
        if r.component not in RECEIVER_COMPONENTS:
            raise UnknownSiteError(
                f"receivers: {r} is not a receiver; pass 'logits' or Sites of components {', '.join(RECEIVER_COMPONENTS)} (a head's query, key or value input)."
            )
    first = min(r.layer for r in receivers)
    late = [s for s in senders if s.layer >= first]
    if late:
        raise InterpError(
            f"senders: {late[0]} is at or after the earliest receiver's layer {first}, so no path runs from it to the receivers; every sender must sit in an earlier layer."
        )


def _grouped(act: Tensor) -> Tensor:
    return act if act.ndim == 4 else act[:, :, None, :]  # z is [batch, pos, head, d_head]; mlp_out one group


class _Paths:
    """The cached clean and corrupted activations and one batch of sender variants."""

    def __init__(self, task: PatchingTask, senders: list[Site], receivers: list[Site] | str, through_mlps: bool):
        self.task, self.senders, self.receivers, self.through_mlps = task, senders, receivers, through_mlps
        model, first = task.model, min(s.layer for s in senders)
        self.frozen = [f"blocks.{layer}.attn.hook_z" for layer in range(first, model.cfg.n_layers)]
        if not through_mlps:
            self.frozen += [f"blocks.{layer}.hook_mlp_out" for layer in range(first, model.cfg.n_layers)]
        starts = {s.layer for s in senders} | (set() if receivers == LOGITS else {min(r.layer for r in receivers)})
        with torch.no_grad():
            self.clean = self._cache(task.clean_tokens, task.clean_mask, {s.hook_name for s in senders})
            self.corrupted = self._cache(
                task.corrupted_tokens,
                task.corrupted_mask,
                set(self.frozen)
                | {s.hook_name for s in senders}
                | {f"blocks.{layer}.hook_resid_pre" for layer in starts},
            )

    def _cache(self, tokens: Tensor, mask: Tensor | None, names: set[str]) -> dict[str, Tensor]:
        return capture(self.task.model, tokens, names, attention_mask=mask, stop_at_layer=self.task.model.cfg.n_layers)

    def _run(self, start: int, stop: int, n_variants: int, hooks: list) -> Tensor:
        task, model = self.task, self.task.model
        resid = self.corrupted[f"blocks.{start}.hook_resid_pre"].repeat(n_variants, 1, 1)
        mask = None if task.corrupted_mask is None else task.corrupted_mask.repeat(n_variants, 1)
        pos_embed = None if task.shortformer_pos_embed is None else task.shortformer_pos_embed.repeat(n_variants, 1, 1)
        with model.hooks(fwd_hooks=hooks):
            for block in model.blocks[start:stop]:
                resid = block(resid, shortformer_pos_embed=pos_embed, attention_mask=mask)
        return resid

    def _sender_hook(self, name: str, variants: list[Site]):
        """Corrupted (frozen) everywhere, with each variant's own sender slice clean where it lies in `name`."""
        positions = torch.tensor([ALL if s.position is None else s.position for s in variants])
        groups = torch.tensor([(ALL if s.head is None else s.head) if s.hook_name == name else NONE for s in variants])
        corrupted = _grouped(self.corrupted[name])
        clean = _grouped(self.clean[name]) if name in self.clean else corrupted

        def hook(act: Tensor, hook) -> Tensor:
            return patched_batch(clean, corrupted, positions.to(act.device), groups.to(act.device)).reshape(act.shape)

        return hook

    def _recomputed_sender_hook(self, name: str, variants: list[Site]):
        """An MLP sender whose MLP recomputes for the other variants: write only the senders' clean slices."""
        n_prompts, clean = self.task.n_prompts, self.clean[name]

        def hook(act: Tensor, hook) -> Tensor:
            act = act.clone()
            for i, s in enumerate(variants):
                if s.hook_name == name:
                    act[i * n_prompts : (i + 1) * n_prompts][s.index()] = clean[s.index()]
            return act

        return hook

    def score(self, variants: list[Site]) -> Tensor:
        model, n_variants = self.task.model, len(variants)
        start = min(s.layer for s in variants)
        frozen = [n for n in self.frozen if int(n.split(".")[1]) >= start]
        hooks = [(n, self._sender_hook(n, variants)) for n in frozen]
        hooks += [(n, self._recomputed_sender_hook(n, variants)) for n in {s.hook_name for s in variants} - set(frozen)]
        if self.receivers == LOGITS:
            return self.task.score(last_position_logits(model, self._run(start, model.cfg.n_layers, n_variants, hooks)))
        receiver_acts: dict[str, Tensor] = {}
        receiver_names = {r.hook_name for r in self.receivers}
        self._run(
            start,
            max(r.layer for r in self.receivers) + 1,
            n_variants,
            [(n, capture_hook(receiver_acts)) for n in receiver_names] + hooks,
        )
        by_name: dict[str, list[Site]] = defaultdict(list)
        for r in self.receivers:
            by_name[r.hook_name].append(r)

        def write(name: str):
            def hook(act: Tensor, hook) -> Tensor:
                act = act.clone()
                for r in by_name[name]:
                    act[r.index()] = receiver_acts[name][r.index()]
                return act

            return hook

        first = min(r.layer for r in self.receivers)
        resid = self._run(first, model.cfg.n_layers, n_variants, [(n, write(n)) for n in by_name])
        return self.task.score(last_position_logits(model, resid))


def path_patch(
    task: PatchingTask,
    senders: Sequence[Site | str],
    receivers: Sequence[Site | str] | str = LOGITS,
    *,
    through_mlps: bool = True,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Patch the paths from each sender (one variant per sender) to `receivers`, exactly; a tidy table.

    senders: heads' outputs (Site(layer, 'z', head=..., position=...)) or MLP outputs ('mlp_out').
    receivers: 'logits' (the direct path to the output), or later heads' q / k / v Sites (head and
    position optional; k and v index key/value heads under grouped-query attention).
    through_mlps: let MLPs recompute along the path (Wang et al.); False freezes them too.
    Rows: one per sender, the columns of the exact sweep plus `receivers`.
    """
    if memory_budget <= 0:
        raise InterpError(
            f"memory_budget={memory_budget}: must be a positive number of bytes (default {DEFAULT_MEMORY_BUDGET})."
        )
    if len(senders) == 0:
        raise InterpError("senders is empty: pass at least one head ('z') or MLP ('mlp_out') Site.")
    if isinstance(receivers, str) and receivers != LOGITS:
        receivers = [receivers]
    if not isinstance(receivers, str) and len(receivers) == 0:
        raise InterpError("receivers is empty: pass 'logits' or at least one q / k / v Site.")
    model = task.model
    senders = [normalised_site(model, s, task.seq_len) for s in senders]
    receivers = receivers if receivers == LOGITS else [normalised_site(model, r, task.seq_len) for r in receivers]
    _check(senders, receivers)
    order = sorted(range(len(senders)), key=lambda i: senders[i].layer)
    per_batch = variants_per_batch(task, memory_budget)
    values = np.empty(len(senders))
    with torch.no_grad():
        paths = _Paths(task, senders, receivers, through_mlps)
        batches = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        for idx in tqdm(
            batches, desc="path patching", disable=not (progress if progress is not None else len(batches) > 8)
        ):
            values[idx] = paths.score([senders[i] for i in idx]).cpu().numpy()
    frame = results_frame(task, senders, values)
    frame["receivers"] = LOGITS if receivers == LOGITS else ",".join(str(r) for r in receivers)
    frame.attrs.update(through_mlps=through_mlps)
    return frame
