"""Training with the same budget for three formats, and held-out accuracy.

continuous:   Coconut's multi-stage curriculum; stage k replaces the first k chain steps by k
              continuous thoughts (a batch samples an earlier stage with `earlier_stage_prob`).
discrete_cot: the shortest path is generated token by token before the answer.
no_cot:       the answer follows the question directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.reachability.graphs import Problem
from circuits.reachability.model import ModelConfig, build_model, continuous_forward, greedy_chain
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError

Mode = Literal["continuous", "discrete_cot", "no_cot"]
MODES: tuple[Mode, ...] = ("continuous", "discrete_cot", "no_cot")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    earlier_stage_prob: float = 0.3
    seed: int = 0


def layout_for(mode: Mode, layout: SequenceLayout) -> SequenceLayout:
    if mode not in MODES:
        raise InterpError(f"mode={mode!r} is unknown; use one of {', '.join(MODES)}.")
    return SequenceLayout(layout.graph, 0) if mode == "no_cot" else layout


def stage_at(step: int, config: TrainConfig, n_stages: int, generator: torch.Generator) -> int:
    """Curriculum stage (number of latents) of a training step: equal-length stages 0..n_stages-1."""
    stage = min(n_stages - 1, step * n_stages // config.steps)
    if stage > 0 and torch.rand((), generator=generator).item() < config.earlier_stage_prob:
        stage = int(torch.randint(0, stage, (), generator=generator))
    return stage


def sequence_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], layout: SequenceLayout, n_latent: int) -> Tensor:
    """Cross-entropy on the chain steps after the latents and on the answer."""
    targets = [*layout.chain[n_latent:], layout.answer_marker + 1]
    logits = continuous_forward(model, tokens, layout.chain.start, n_latent).logits if n_latent else model(tokens)
    predicted = logits[:, [p - 1 for p in targets]]
    return torch.nn.functional.cross_entropy(predicted.flatten(0, 1), tokens[:, targets].flatten())


def trainable_parameters(model: HookedTransformer) -> list[torch.nn.Parameter]:
    """The model's parameters less a tied unembedding's unused own tensor (it gets no gradient)."""
    return [p for name, p in model.named_parameters() if not name.endswith("parametrizations.W_U.original")]


def train(mode: Mode, problems: list[Problem], layout: SequenceLayout, model_config: ModelConfig, config: TrainConfig, progress: bool = True) -> tuple[HookedTransformer, pd.DataFrame]:
    """Train one model; returns it (in eval mode) and the loss curve (step, stage, loss)."""
    if not problems:
        raise InterpError("problems is empty: pass the training problems.")
    layout = layout_for(mode, layout)
    model = build_model(layout, model_config, config.seed)
    n_stages = layout.n_chain + 1 if mode == "continuous" else 1
    encoded = [layout.encode_batch(problems, n_latent=k) for k in range(n_stages)]
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    generator = torch.Generator().manual_seed(config.seed)
    rows = []
    for step in tqdm(range(config.steps), desc=f"train {mode}", disable=not progress):
        stage = stage_at(step, config, n_stages, generator)
        batch = torch.randint(0, len(problems), (config.batch_size,), generator=generator)
        loss = sequence_loss(model, encoded[stage][batch], layout, stage)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        rows.append((step, stage, loss.item()))
    return model.eval(), pd.DataFrame(rows, columns=["step", "stage", "loss"])


@torch.no_grad()
def predict_answers(model: HookedTransformer, mode: Mode, problems: list[Problem], layout: SequenceLayout, batch_size: int = 512) -> Int[Tensor, " n"]:
    """The token each model emits after [A] (argmax over the whole vocabulary)."""
    layout = layout_for(mode, layout)
    nodes = torch.arange(layout.n_node_ids)
    answers = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        if mode == "continuous":
            tokens = layout.encode_batch(chunk, n_latent=layout.n_chain)
            logits = continuous_forward(model, tokens, layout.chain.start, layout.n_chain).logits
        elif mode == "discrete_cot":
            tokens = greedy_chain(model, layout.encode_batch(chunk), layout.chain.start, layout.n_chain, nodes)
            logits = model(tokens)
        else:
            logits = model(layout.encode_batch(chunk))
        answers.append(logits[:, layout.answer_marker].argmax(-1))
    return torch.cat(answers)


def accuracy(model: HookedTransformer, mode: Mode, problems: list[Problem], layout: SequenceLayout) -> float:
    predicted = predict_answers(model, mode, problems, layout)
    return (predicted == torch.tensor([p.answer for p in problems])).float().mean().item()
