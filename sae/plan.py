"""`interp sae train --plan`: the training run's steps and batches, its predicted peak memory and time from a probe
(the real trainer for a few steps on the run's own batches, nothing written), and a refusal when the memory will not
fit (interp.plan.Plan). The peak of a training step does not grow with the steps (parameters, Adam's two moments,
gradients, one batch's activations and the data source's chunk are all there from the second step on), so the
probe's peak is the prediction; its time per step, times the steps, is the time. The evaluation after training is
not part of the plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from torch import Tensor

from interp.plan import Plan, measure
from sae.models import SaeConfig
from sae.train import TrainConfig, train_sae

PROBE_STEPS = 3  # the first allocates Adam's moments, the next ones are the steady state


def plan_sae_train(
    sae_cfg: SaeConfig, batches: Iterable[Tensor], cfg: TrainConfig, *, budget_flag: str = "batch_size"
) -> Plan:
    probe_steps = min(PROBE_STEPS, cfg.steps)
    probe_cfg = replace(cfg, steps=probe_steps, checkpoint_every=10**9)
    _, seconds, peak = measure(lambda: train_sae(sae_cfg, batches, probe_cfg, None, progress=False))
    n_params = sae_cfg.d_in * sae_cfg.d_sae * 2 + sae_cfg.d_sae + sae_cfg.d_in
    lines = [
        f"{sae_cfg.architecture} SAE {sae_cfg.d_in} -> {sae_cfg.d_sae} (~{n_params / 1e6:,.1f}M parameters, with "
        f"Adam ~{16 * n_params / 2**20:,.0f} MiB)",
        f"{cfg.steps:,} steps of {cfg.batch_size:,} tokens ({cfg.steps * cfg.batch_size:,} tokens), "
        f"checkpoint every {cfg.checkpoint_every:,} steps",
        f"probe: {probe_steps} steps in {seconds:.2f} s",
    ]
    if peak is None:  # no kernel reading: parameters, gradients and Adam's moments, and one batch in and out
        peak = 16 * n_params + 4 * cfg.batch_size * (2 * sae_cfg.d_in + sae_cfg.d_sae)
    return Plan("SAE training", lines, int(peak), seconds / probe_steps * cfg.steps, budget_flag)
