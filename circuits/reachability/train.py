"""Training of the three formats with one budget, the authors' curriculum, held-out accuracy, checkpoints.

The formats and the curriculum port the semantics of Zhu et al.'s code (github.com/Ber666/reasoning-by-superposition,
dataset.py / run.py, built on facebookresearch/coconut); every sample is built afresh per batch:

continuous:   stage s (0..D) gives a sample with path length d (= its answer's distance) k = min(s, d)
              continuous thoughts; with probability `uniform_prob` k is redrawn uniformly from 0..min(s, d)
              (the authors' uniform_prob = 0.1). For k < d the model is supervised on one node drawn from the
              nodes at distance k + 1 that lie on some shortest root -> answer path, read right after the k-th
              thought (no [A]); for k = d it reads [A] after d thoughts and is supervised on the answer. Stages
              0..D-1 share the first (1 - final_fraction) of the steps equally; the rest is stage D, where every
              sample has its final number of thoughts (authors: 25 epochs per stage, 4 stages, 300 epochs, so
              2/3 of training at the final stage).
discrete_cot: a shortest path drawn at random among the shortest paths (the authors pick a random next node on
              a shortest path at each hop), then [A] and the answer; every token after the root is supervised.
no_cot:       [A] and the answer right after the question; both supervised.

Every format reshuffles the edge order and the candidate order per sample (the authors reshuffle per epoch).
Deviations from the authors are listed in FINDINGS.md (steps not epochs, fresh samples from a generator instead
of a fixed 14k-graph file, AdamW lr / warmup / cosine decay sized to a CPU budget, no dropout, no <eos>).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuits.reachability.graphs import Problem
from circuits.reachability.lookup import (
    attention_lookup_loss,
    dense_lookup_length,
    dense_lookup_sample,
    query_edge_targets,
)
from circuits.reachability.model import ModelConfig, build_model, continuous_forward, greedy_chain
from circuits.reachability.tokens import SequenceLayout
from interp.errors import InterpError
from interp.fileio import atomic_path

Mode = Literal["continuous", "discrete_cot", "no_cot"]
MODES: tuple[Mode, ...] = ("continuous", "discrete_cot", "no_cot")
IGNORE = -100


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    uniform_prob: float = 0.1  # the authors' uniform_prob: a sample's stage redrawn from 0..stage
    final_fraction: float = 2 / 3  # share of the steps at the final stage (authors: 200 of 300 epochs)
    stage_steps: int | None = (
        None  # steps per pre-final stage; None: (1 - final_fraction) * steps / D. Set, the run can be extended or cut (constant lr)
    )
    seed: int = 0
    eval_every: int = (
        0  # steps between held-out accuracy evaluations (0: only at the end, when eval problems are given)
    )
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end, when a checkpoint path is given)
    # Deviation from the authors (issue 14): an auxiliary dense lookup objective (lookup.py: after the edge list,
    # n queries "[R] u v", loss on each child v). With one supervised node per sequence the 2-layer models sit on
    # the associative-recall plateau (the lookup at 0.30 after 6,000 steps, chance 0.13; FINDINGS.md); the dense
    # objective teaches the edge read every format needs. 0 queries: off (the authors' training).
    lookup_aux_queries: int = 0  # queries per auxiliary dense lookup sequence (0: no auxiliary objective)
    lookup_aux_batch: int = 64  # auxiliary sequences per step
    lookup_aux_weight: float = 1.0  # loss = format loss + weight * auxiliary loss
    lookup_pretrain_steps: int = 0  # first steps on the auxiliary objective alone; the curriculum starts after them
    lookup_edge_curriculum_steps: int = 0  # auxiliary visible edges grow 6 -> n_edges over these steps (0: all)
    lookup_source_labels: bool = True  # auxiliary: also supervise each edge's source at its target position
    # auxiliary attention supervision: at each query, -log(mass of layer-2 head `lookup_attention_head` on the queried
    # node's edge targets). Measured (FINDINGS.md): without it the lookup stays at ~0.30 (layer 2 parks on the [R]/[Q]
    # markers); with it 0.96 at 200 steps. 0: off
    lookup_attention_weight: float = 1.0
    lookup_attention_head: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise InterpError(f"TrainConfig: steps={self.steps} and batch_size={self.batch_size} must be >= 1.")
        if not 0.5 <= self.final_fraction < 1:
            raise InterpError(
                f"TrainConfig: final_fraction={self.final_fraction} must be in [0.5, 1) (at least half the steps at the final stage)."
            )
        if self.stage_steps is not None and self.stage_steps < 1:
            raise InterpError(f"TrainConfig: stage_steps={self.stage_steps} must be >= 1 (or None).")
        if not 0 <= self.uniform_prob <= 1:
            raise InterpError(f"TrainConfig: uniform_prob={self.uniform_prob} must be in [0, 1].")
        if min(self.lookup_aux_queries, self.lookup_pretrain_steps, self.lookup_edge_curriculum_steps) < 0:
            raise InterpError(
                f"TrainConfig: lookup_aux_queries={self.lookup_aux_queries}, lookup_pretrain_steps={self.lookup_pretrain_steps}, lookup_edge_curriculum_steps={self.lookup_edge_curriculum_steps} must be >= 0."
            )
        if self.lookup_aux_queries and (self.lookup_aux_batch < 1 or self.lookup_aux_weight < 0):
            raise InterpError(
                f"TrainConfig: lookup_aux_batch={self.lookup_aux_batch} must be >= 1 and lookup_aux_weight={self.lookup_aux_weight} >= 0 when lookup_aux_queries > 0."
            )
        if self.lookup_pretrain_steps and not self.lookup_aux_queries:
            raise InterpError(
                f"TrainConfig: lookup_pretrain_steps={self.lookup_pretrain_steps} needs lookup_aux_queries > 0 (the objective it pretrains on)."
            )


def layout_for(mode: Mode, layout: SequenceLayout) -> SequenceLayout:
    if mode not in MODES:
        raise InterpError(f"mode={mode!r} is unknown; use one of {', '.join(MODES)}.")
    return SequenceLayout(layout.graph, 0) if mode == "no_cot" else layout


def scheduled_stage(step: int, config: TrainConfig, max_stage: int) -> int:
    """The curriculum stage of a training step: 0..max_stage-1 for `stage_steps` each (default: sharing the first
    (1 - final_fraction) of the steps after the lookup pretraining), then max_stage. The curriculum starts after
    `lookup_pretrain_steps` (stage 0 before)."""
    if max_stage == 0:
        return 0
    steps = config.steps - config.lookup_pretrain_steps
    per_stage = config.stage_steps or max(1, int(round((1 - config.final_fraction) * steps / max_stage)))
    return min(max_stage, max(0, step - config.lookup_pretrain_steps) // per_stage)


def sample_stage(stage: int, n_hops: int, uniform_prob: float, rng: random.Random) -> int:
    """The number of thoughts of one sample at a scheduled stage: min(stage, n_hops), redrawn from 0..that with uniform_prob."""
    k = min(stage, n_hops)
    if rng.random() < uniform_prob:
        k = rng.randint(0, k)
    return k


def random_shortest_path(problem: Problem, rng: random.Random) -> list[int]:
    """A shortest root -> answer path drawn hop by hop among the nodes on shortest paths (the authors' CoT sampling)."""
    children: dict[int, set[int]] = {}
    for a, b in problem.edges:
        children.setdefault(a, set()).add(b)
    path = [problem.root]
    for hop in range(1, problem.n_hops + 1):
        path.append(rng.choice(sorted(children[path[-1]] & problem.on_shortest_paths(hop))))
    return path


def _shuffled_head(problem: Problem, layout: SequenceLayout, rng: random.Random, shuffle: bool) -> list[int]:
    if not shuffle:
        return layout.head_tokens(problem)
    edges = list(problem.edges)
    rng.shuffle(edges)
    candidates = problem.candidates if rng.random() < 0.5 else problem.candidates[::-1]
    return layout.head_tokens(problem, edges, candidates)


def training_sample(
    mode: Mode,
    problem: Problem,
    layout: SequenceLayout,
    stage: int,
    config: TrainConfig,
    rng: random.Random,
    shuffle: bool = True,
) -> tuple[list[int], list[int], int]:
    """(tokens padded to seq_len, labels (IGNORE where unsupervised), number of thoughts) of one sample."""
    layout = layout_for(mode, layout)
    head = _shuffled_head(problem, layout, rng, shuffle)
    latent, answer_marker = layout.special("<latent>"), layout.special("[A]")
    n_latent = 0
    if mode == "continuous":
        n_latent = sample_stage(stage, problem.n_hops, config.uniform_prob, rng)
        if n_latent < problem.n_hops:
            tail, supervised = [rng.choice(sorted(problem.on_shortest_paths(n_latent + 1)))], [0]
        else:
            tail, supervised = [answer_marker, problem.answer], [1]
        tail = [latent] * n_latent + tail
        supervised = [n_latent + i for i in supervised]
    elif mode == "discrete_cot":
        tail = random_shortest_path(problem, rng)[1:] + [answer_marker, problem.answer]
        supervised = list(range(len(tail)))
    else:
        tail, supervised = [answer_marker, problem.answer], [0, 1]
    tokens = layout.padded(head + tail)
    labels = [IGNORE] * layout.seq_len
    for i in supervised:
        labels[len(head) + i] = tokens[len(head) + i]
    return tokens, labels, n_latent


def training_batch(
    mode: Mode, problems: list[Problem], layout: SequenceLayout, stage: int, config: TrainConfig, rng: random.Random
) -> tuple[Tensor, Tensor, Tensor]:
    rows = [training_sample(mode, p, layout, stage, config, rng) for p in problems]
    return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), torch.tensor([r[2] for r in rows])


def sequence_loss(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos"],
    layout: SequenceLayout,
    n_latent: Int[Tensor, " batch"],
) -> Tensor:
    """Mean cross-entropy over the supervised tokens (labels != IGNORE), each predicted from the position before it."""
    logits = (
        continuous_forward(model, tokens, layout.chain.start, n_latent).logits
        if int(n_latent.max()) > 0
        else model(tokens)
    )
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)


def lookup_aux_batch(
    problems: list[Problem], layout: SequenceLayout, step: int, config: TrainConfig, rng: random.Random
) -> tuple[Tensor, Tensor]:
    """(tokens, labels) of one batch of the auxiliary dense lookup objective at a training step."""
    n_visible, ramp = None, config.lookup_edge_curriculum_steps
    if ramp and step < ramp:
        low = min(6, layout.graph.n_edges)
        n_visible = low + round((layout.graph.n_edges - low) * step / ramp)
    rows = [
        dense_lookup_sample(
            problems[rng.randrange(len(problems))],
            layout,
            config.lookup_aux_queries,
            rng,
            n_visible,
            config.lookup_source_labels,
        )
        for _ in range(config.lookup_aux_batch)
    ]
    return torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])


def lookup_aux_loss(
    model: HookedTransformer,
    tokens: Tensor,
    labels: Tensor,
    layout: SequenceLayout | None = None,
    attention_weight: float = 0.0,
    attention_head: int = 0,
) -> Tensor:
    """Mean cross-entropy over the auxiliary lookup's supervised tokens (each predicted at the position before), plus
    attention_weight x `attention_lookup_loss` of layer 2's head `attention_head` (needs the layout)."""
    if not attention_weight:
        logits = model(tokens)
    else:
        if layout is None:
            raise InterpError("lookup_aux_loss: attention_weight > 0 needs the layout (to find the edge targets).")
        if not 0 <= attention_head < model.cfg.n_heads or model.cfg.n_layers < 2:
            raise InterpError(
                f"lookup_attention_head={attention_head}: need a head of layer 2 (0..{model.cfg.n_heads - 1}) in a model of >= 2 layers."
            )
        kept = {}  # run_with_cache detaches; a hook keeps the graph

        def keep(pattern: Tensor, hook) -> None:
            kept["pattern"] = pattern

        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", keep)])
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
    if attention_weight:
        mask = query_edge_targets(tokens, labels, layout)
        loss = loss + attention_weight * attention_lookup_loss(kept["pattern"][:, attention_head], mask)
    return loss


def model_n_ctx(layout: SequenceLayout, config: TrainConfig) -> int | None:
    """Positions the trained model needs: the layout's, or the auxiliary lookup sequences' when longer."""
    if not config.lookup_aux_queries:
        return None
    return max(layout.seq_len, dense_lookup_length(layout, config.lookup_aux_queries))


def trainable_parameters(model: HookedTransformer) -> list[torch.nn.Parameter]:
    """The model's parameters less a tied unembedding's unused own tensor (it gets no gradient)."""
    return [p for name, p in model.named_parameters() if not name.endswith("parametrizations.W_U.original")]


def train(
    mode: Mode,
    problems: list[Problem],
    layout: SequenceLayout,
    model_config: ModelConfig,
    config: TrainConfig,
    progress: bool = True,
    eval_problems: list[Problem] | None = None,
    checkpoint: Path | None = None,
) -> tuple[HookedTransformer, pd.DataFrame, pd.DataFrame]:
    """Train one model; returns it (in eval mode), the loss curve (step, stage, loss, aux_loss) and the held-out
    accuracy curve (step, accuracy, n) on `eval_problems` (empty without them).

    With `checkpoint`, the state (model, optimizer, schedule, random generators, curves) is saved there every
    `checkpoint_every` steps and at the end, and a rerun resumes from it (a finished checkpoint trains nothing).
    """
    if not problems:
        raise InterpError("problems is empty: pass the training problems.")
    full_layout = layout
    layout = layout_for(mode, layout)
    model = build_model(layout, model_config, config.seed, n_ctx=model_n_ctx(layout, config))
    max_stage = layout.n_chain if mode == "continuous" else 0
    parameters = trainable_parameters(model)
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    # the authors keep the learning rate constant; a linear warmup is added for the larger CPU-budget rate
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    rng = random.Random(config.seed)
    rows, acc_rows, start, seconds = [], [], 0, 0.0
    # what the checkpoint must agree on; steps / eval_every / checkpoint_every may change between runs (constant lr)
    fingerprint = repr(
        (
            mode,
            layout.graph,
            model_config,
            replace(config, steps=1, eval_every=0, checkpoint_every=0) if config.stage_steps else config,
        )
    )
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise InterpError(
                f"checkpoint {checkpoint} was written by another setup ({state['fingerprint']}); this run is {fingerprint}. Delete it or use another out dir."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        rng.setstate(state["rng"])
        rows, acc_rows, start, seconds = state["rows"], state["acc_rows"], state["step"], state["seconds"]
    began = time.perf_counter()

    def save(step: int) -> None:
        if checkpoint is None:
            return
        state = dict(
            fingerprint=fingerprint,
            seconds=seconds + time.perf_counter() - began,
            step=step,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(),
            rng=rng.getstate(),
            rows=rows,
            acc_rows=acc_rows,
        )
        with atomic_path(checkpoint) as partial:  # a kill mid-write leaves the previous checkpoint whole
            torch.save(state, partial)

    def evaluate(step: int) -> None:
        if eval_problems:
            model.eval()
            acc_rows.append((step, accuracy(model, mode, eval_problems, full_layout), len(eval_problems)))
            model.train()
            if checkpoint is not None:  # a log line per evaluation for the long parallel runs
                print(
                    f"[{mode}] step {step}/{config.steps} held-out acc {acc_rows[-1][1]:.3f} ({time.perf_counter() - began + seconds:.0f} s)",
                    flush=True,
                )

    end = max(
        start, config.steps
    )  # a checkpoint past `steps` (a run cut short and rerun with fewer steps) is kept as it is
    model.train()
    for step in tqdm(range(start, end), desc=f"train {mode}", disable=not progress, initial=start, total=end):
        if config.eval_every and step % config.eval_every == 0 and not (acc_rows and acc_rows[-1][0] == step):
            evaluate(step)
        stage = scheduled_stage(step, config, max_stage)
        format_loss = aux = torch.full((), float("nan"))
        loss = torch.zeros(())
        if step >= config.lookup_pretrain_steps:
            batch = [problems[rng.randrange(len(problems))] for _ in range(config.batch_size)]
            tokens, labels, n_latent = training_batch(mode, batch, layout, stage, config, rng)
            loss = format_loss = sequence_loss(model, tokens, labels, layout, n_latent)
        if config.lookup_aux_queries:
            aux = lookup_aux_loss(
                model,
                *lookup_aux_batch(problems, layout, step, config, rng),
                layout,
                config.lookup_attention_weight,
                config.lookup_attention_head,
            )
            loss = loss + (1.0 if step < config.lookup_pretrain_steps else config.lookup_aux_weight) * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        rows.append((step, stage, format_loss.item(), aux.item()))
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < end:
            save(step + 1)
    if not (acc_rows and acc_rows[-1][0] == end):
        evaluate(end)
    if start < end:
        save(end)
    # loss: the format's own loss (NaN during lookup pretraining); aux_loss: the dense lookup's (NaN when off)
    loss_curve = pd.DataFrame(rows, columns=["step", "stage", "loss", "aux_loss"])
    loss_curve.attrs["train_seconds"] = seconds + time.perf_counter() - began
    loss_curve.attrs["steps_trained"] = end
    return model.eval(), loss_curve, pd.DataFrame(acc_rows, columns=["step", "accuracy", "n"])


def eval_tokens(mode: Mode, problems: list[Problem], layout: SequenceLayout) -> tuple[Tensor, Tensor]:
    """The evaluation prompts (prompt order as stored) and each sample's number of thoughts.

    continuous: d thoughts (d = the answer's distance, the authors' final stage) then [A]; discrete_cot: the
    question only (the chain is generated); no_cot: the question then [A].
    """
    layout = layout_for(mode, layout)
    latent, answer_marker = layout.special("<latent>"), layout.special("[A]")
    rows, counts = [], []
    for p in problems:
        head = layout.head_tokens(p)
        if mode == "continuous":
            rows.append(layout.padded(head + [latent] * p.n_hops + [answer_marker]))
            counts.append(p.n_hops)
        elif mode == "discrete_cot":
            rows.append(layout.padded(head))
            counts.append(0)
        else:
            rows.append(layout.padded(head + [answer_marker]))
            counts.append(0)
    return torch.tensor(rows), torch.tensor(counts)


@torch.no_grad()
def predict_answers(
    model: HookedTransformer, mode: Mode, problems: list[Problem], layout: SequenceLayout, batch_size: int = 500
) -> Int[Tensor, " n"]:
    """The token each model emits after [A] (argmax over the whole vocabulary; -1: a discrete chain that never emitted [A])."""
    layout = layout_for(mode, layout)
    if not problems:
        raise InterpError("problems is empty: pass at least one Problem.")
    answers = []
    everything = torch.arange(layout.d_vocab)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        tokens, counts = eval_tokens(mode, chunk, layout)
        rows = torch.arange(len(chunk))
        if mode == "continuous":
            logits = continuous_forward(model, tokens, layout.chain.start, counts).logits
            answers.append(logits[rows, layout.chain.start + counts].argmax(-1))
        elif mode == "discrete_cot":
            generated = greedy_chain(model, tokens, layout.chain.start, layout.seq_len - layout.chain.start, everything)
            answers.append(chain_answer(generated, layout))
        else:
            answers.append(model(tokens)[:, layout.answer_marker].argmax(-1))
    return torch.cat(answers)


def chain_answer(generated: Int[Tensor, "batch pos"], layout: SequenceLayout) -> Int[Tensor, " batch"]:
    """The token after the first generated [A] (-1 where no [A] was generated before the last position)."""
    chain = generated[:, layout.chain.start : -1]
    is_marker = chain == layout.special("[A]")
    found = is_marker.any(-1)
    first = is_marker.int().argmax(-1) + layout.chain.start
    answer = generated[torch.arange(len(generated)), first + 1]
    return torch.where(found, answer, torch.full_like(answer, -1))


def accuracy(model: HookedTransformer, mode: Mode, problems: list[Problem], layout: SequenceLayout) -> float:
    layout_for(mode, layout)
    predicted = predict_answers(model, mode, problems, layout)
    return (predicted == torch.tensor([p.answer for p in problems])).float().mean().item()
