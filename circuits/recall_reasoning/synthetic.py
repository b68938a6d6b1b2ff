"""A controlled setting: a small transformer trained on a synthetic knowledge base, where what must be memorised is known.

Tokens: filler, query, lookup query (training only), relations, KB entities, values, and fresh names (never in the KB).
    recall    [F F F F F F F r Q e]                  -> kb[e, r]: a memorised fact (a value)
    reasoning [x y  w u  y v  u v2  Q x] (each pair of facts in random order) -> v: the answer
              composes two facts given in context (2-hop: x -> y -> v; w -> u -> v2 distracts),
              x, y, w, u fresh names, v != v2 values.
    lookup    [x y  w u  y v  u v2  L h]             -> the tail of the fact headed by h (1-hop; training only)
Both tasks have the same length and ask with the query token Q just before the name asked about, so
no length confound enters the screen; the answer is always a value token, so the same-type
distractors are the other values. Training sequences give one fact set and then several queries
(both 2-hop queries and the four lookups, shuffled), each answered at its name: six supervised
answers per sequence instead of one.

Why the query token comes first: the model then predicts at the name itself, so finding the fact
headed by that name is the classic induction pattern (match the current token against each
position's previous token). With the name first and Q last the model had to move the name forward
before matching, and it stayed at chance between the two values (0.5) for 2,000 steps; this layout
reaches 2-hop accuracy >= 0.98 in about 400.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.tasks import PromptSet
from interp.errors import InterpError
from interp.models import load_model

FILLER, QUERY, LOOKUP = 0, 1, 2
SEQ_LEN = 10
N_FACT_TOKENS = 8
QUERIES_PER_PROBLEM = 6  # both 2-hop queries and the four lookups


@dataclass(frozen=True)
class KnowledgeBase:
    """n_entities x n_relations memorised facts over n_values values; n_fresh names for in-context facts."""

    n_entities: int = 32
    n_relations: int = 2
    n_values: int = 8
    n_fresh: int = 16  # with 32 names and 16 values 2-hop stayed at chance through 800 steps; with 16 and 8 it was 0.98 by step 400
    seed: int = 0

    def __post_init__(self):
        if self.n_values < 2 or self.n_fresh < 4 or self.n_entities < 2 or self.n_relations < 1:
            raise InterpError(
                f"KnowledgeBase: need n_values >= 2, n_fresh >= 4, n_entities >= 2, n_relations >= 1; got {self}."
            )

    @property
    def relation0(self) -> int:
        return 3

    @property
    def entity0(self) -> int:
        return self.relation0 + self.n_relations

    @property
    def value0(self) -> int:
        return self.entity0 + self.n_entities

    @property
    def fresh0(self) -> int:
        return self.value0 + self.n_values

    @property
    def d_vocab(self) -> int:
        return self.fresh0 + self.n_fresh

    def facts(self) -> Int[Tensor, "entity relation"]:
        """kb[e, r]: the value token of each fact (seeded)."""
        generator = torch.Generator().manual_seed(self.seed)
        return self.value0 + torch.randint(self.n_values, (self.n_entities, self.n_relations), generator=generator)


def recall_batch(
    kb: KnowledgeBase, entity: Int[Tensor, " b"], relation: Int[Tensor, " b"]
) -> tuple[Int[Tensor, "b seq"], Int[Tensor, " b"]]:
    tokens = torch.full((len(entity), SEQ_LEN), FILLER)
    tokens[:, -3] = kb.relation0 + relation
    tokens[:, -2] = QUERY
    tokens[:, -1] = kb.entity0 + entity
    return tokens, kb.facts()[entity, relation]


def problems(
    kb: KnowledgeBase, n: int, generator: torch.Generator
) -> tuple[Int[Tensor, "n 8"], Int[Tensor, "n 6"], Int[Tensor, "n 6"], Int[Tensor, "n 6"]]:
    """n fresh fact sets and their six queries: facts, query names, query tokens, answers.

    Facts: first-hop (x y), (w u) in slots 0-1 and second-hop (y v), (u v2) in slots 2-3, each pair in
    random order. Queries: x and w by QUERY (2-hop: v, v2), then every fact's head by LOOKUP (its tail).
    """
    names = kb.fresh0 + torch.stack(
        [torch.randperm(kb.n_fresh, generator=generator)[:4] for _ in range(n)]
    )  # x, y, w, u
    values = kb.value0 + torch.stack([torch.randperm(kb.n_values, generator=generator)[:2] for _ in range(n)])  # v, v2
    x, y, w, u = names.unbind(1)
    first = torch.stack([torch.stack([x, y], 1), torch.stack([w, u], 1)], 1)  # [n, fact, (head, tail)]
    second = torch.stack([torch.stack([y, values[:, 0]], 1), torch.stack([u, values[:, 1]], 1)], 1)
    swap_first, swap_second = (torch.rand(n, generator=generator) < 0.5 for _ in range(2))
    first = torch.where(swap_first[:, None, None], first.flip(1), first)
    second = torch.where(swap_second[:, None, None], second.flip(1), second)
    facts = torch.cat([first, second], 1).flatten(1)
    heads, tails = facts[:, 0::2], facts[:, 1::2]
    query_names = torch.cat([torch.stack([x, w], 1), heads], 1)
    query_tokens = torch.tensor([QUERY] * 2 + [LOOKUP] * 4).expand(n, -1)
    answers = torch.cat([values, tails], 1)
    return facts, query_names, query_tokens, answers


def reasoning_batch(
    kb: KnowledgeBase, n: int, generator: torch.Generator, *, hops: int = 2
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, " n"]]:
    """n fresh problems, one query each: hops=2 asks x's second-hop value v (QUERY x); hops=1 looks up a random fact's head (LOOKUP h)."""
    facts, names, query_tokens, answers = problems(kb, n, generator)
    column = torch.zeros(n, dtype=torch.long) if hops == 2 else 2 + torch.randint(4, (n,), generator=generator)
    rows = torch.arange(n)
    tokens = torch.cat([facts, query_tokens[rows, column, None], names[rows, column, None]], 1)
    return tokens, answers[rows, column]


def training_batch(
    kb: KnowledgeBase, n: int, generator: torch.Generator
) -> tuple[Int[Tensor, "n seq"], Int[Tensor, "n 6"], Int[Tensor, "n 6"]]:
    """n fact sets, each followed by its six queries in random order; returns tokens, answers and whether each query is 2-hop."""
    facts, names, query_tokens, answers = problems(kb, n, generator)
    order = torch.stack([torch.randperm(QUERIES_PER_PROBLEM, generator=generator) for _ in range(n)])
    names, query_tokens, answers = (t.gather(1, order) for t in (names, query_tokens, answers))
    return torch.cat([facts, torch.stack([query_tokens, names], 2).flatten(1)], 1), answers, query_tokens == QUERY


ANSWER_POSITIONS = torch.arange(N_FACT_TOKENS + 1, N_FACT_TOKENS + 2 * QUERIES_PER_PROBLEM, 2)  # each query's name


@dataclass(frozen=True)
class SyntheticTraining:
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    steps: int = 2000
    recall_batch: int = 32  # memorised facts per step
    problem_batch: int = 64  # fact sets per step, each with six queries
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.recall_batch < 1 or self.problem_batch < 1:
            raise InterpError(f"SyntheticTraining: steps, recall_batch and problem_batch must be >= 1; got {self}.")
        if self.d_model % self.n_heads:
            raise InterpError(
                f"SyntheticTraining(d_model={self.d_model}, n_heads={self.n_heads}): d_model must be a multiple of n_heads."
            )


def build_model(kb: KnowledgeBase, settings: SyntheticTraining) -> HookedTransformer:
    spec = dict(
        n_layers=settings.n_layers,
        d_model=settings.d_model,
        n_heads=settings.n_heads,
        d_head=settings.d_model // settings.n_heads,
        d_mlp=settings.d_mlp,
        d_vocab=kb.d_vocab,
        n_ctx=N_FACT_TOKENS + 2 * QUERIES_PER_PROBLEM,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        default_prepend_bos=False,
        model_name="recall-reasoning-synthetic",
    )
    return load_model(spec, seed=settings.seed)


def warmup_stable_decay(step: int, steps: int) -> float:
    """LR factor: linear warm-up over 5% of the steps, constant, then linear decay to 0.1 over the last 20%.

    The 2-hop answer arrives in a sudden jump after a plateau at chance; a schedule that anneals from the
    start (one-cycle cosine) left it at chance in 800 steps, so the rate stays high until the last fifth.
    """
    warmup, decay_from = max(1, int(0.05 * steps)), int(0.8 * steps)
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_from:
        return 1.0
    return 1.0 - 0.9 * (step - decay_from) / max(1, steps - decay_from)


def train(
    kb: KnowledgeBase,
    settings: SyntheticTraining,
    *,
    progress: bool = False,
    recall: bool = True,
    mlp_off: tuple[int, ...] = (),
) -> tuple[HookedTransformer, pd.DataFrame]:
    """Train on memorised facts and fresh problems (loss on every answer); returns the model and its training curve (batch accuracies).

    recall=False trains on the in-context problems only (the planted control's reasoner, controls.py);
    mlp_off: MLP layers whose output is held at zero throughout training (so nothing learns to read them).
    """
    model = build_model(kb, settings)
    for layer in mlp_off:
        if not -settings.n_layers <= layer < settings.n_layers:
            raise InterpError(f"train(mlp_off={mlp_off}): the model has layers 0..{settings.n_layers - 1}.")
        model.add_hook(f"blocks.{layer % settings.n_layers}.hook_mlp_out", lambda act, hook: torch.zeros_like(act))
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_stable_decay(step, settings.steps))
    n_recall_answers, n_problem_answers = settings.recall_batch, settings.problem_batch * QUERIES_PER_PROBLEM
    curve = []
    steps = range(settings.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="synthetic model")
    model.train()
    with torch.enable_grad():
        for step in steps:
            entity = torch.randint(kb.n_entities, (settings.recall_batch,), generator=generator)
            relation = torch.randint(kb.n_relations, (settings.recall_batch,), generator=generator)
            recall_tokens, recall_answers = recall_batch(kb, entity, relation)
            problem_tokens, problem_answers, two_hop = training_batch(kb, settings.problem_batch, generator)
            recall_logits = model(recall_tokens)[:, -1]
            problem_logits = model(problem_tokens)[:, ANSWER_POSITIONS]
            recall_losses = torch.nn.functional.cross_entropy(recall_logits, recall_answers, reduction="none")
            problem_losses = torch.nn.functional.cross_entropy(
                problem_logits.flatten(0, 1), problem_answers.flatten(), reduction="none"
            ).view_as(problem_answers)
            if recall:
                loss = (recall_losses.sum() + problem_losses.sum()) / (n_recall_answers + n_problem_answers)
            else:
                loss = problem_losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0 or step == settings.steps - 1:
                problem_correct = problem_logits.argmax(-1) == problem_answers
                curve.append(
                    dict(
                        step=step,
                        loss=float(loss.detach()),
                        recall_loss=float(recall_losses.detach().mean()),
                        reasoning_loss=float(problem_losses.detach()[two_hop].mean()),
                        lookup_loss=float(problem_losses.detach()[~two_hop].mean()),
                        recall_acc=float((recall_logits.argmax(-1) == recall_answers).float().mean()),
                        reasoning_acc=float(problem_correct[two_hop].float().mean()),
                        lookup_acc=float(problem_correct[~two_hop].float().mean()),
                    )
                )
    model.eval()
    model.reset_hooks()
    return model, pd.DataFrame(curve)


def evaluate(
    model: HookedTransformer, kb: KnowledgeBase, n_problems: int = 1024, seed: int = 12345
) -> dict[str, float]:
    """Held-out accuracy (top-1): every memorised fact; n_problems new 2-hop problems and as many 1-hop lookups (fresh names, never trained on as such)."""
    generator = torch.Generator().manual_seed(seed)
    entity = torch.arange(kb.n_entities).repeat_interleave(kb.n_relations)
    relation = torch.arange(kb.n_relations).repeat(kb.n_entities)
    batches = dict(
        recall_acc=recall_batch(kb, entity, relation),
        reasoning_acc=reasoning_batch(kb, n_problems, generator),
        lookup_acc=reasoning_batch(kb, n_problems, generator, hops=1),
    )
    with torch.no_grad():
        return {
            name: float((model(tokens)[:, -1].argmax(-1) == answers).float().mean())
            for name, (tokens, answers) in batches.items()
        }


def _prompt_set(
    task: str, kb: KnowledgeBase, tokens: Tensor, answers: Tensor, corrupted: Tensor, wrong: Tensor, entities: list[str]
) -> PromptSet:
    candidates = torch.zeros(len(tokens), kb.d_vocab, dtype=torch.bool)
    candidates[:, kb.value0 : kb.value0 + kb.n_values] = True
    text = lambda row: " ".join(str(int(t)) for t in row)  # noqa: E731
    templates = [f"recall r{e.split('r')[1]}" if "r" in e else task for e in entities] if task == "recall" else task
    entities = (
        [e.split("r")[0] for e in entities] if task == "recall" else entities
    )  # split by entity: every relation of an entity in one half
    items = pd.DataFrame(
        dict(
            task=task,
            family="kb" if task == "recall" else "two_hop",
            template=templates,
            entity=entities,
            prompt=[text(r) for r in tokens],
            answer=[str(int(a)) for a in answers],
            corrupted_prompt=[text(r) for r in corrupted],
            corrupted_answer=[str(int(a)) for a in wrong],
            n_tokens=SEQ_LEN,
        )
    )
    return PromptSet(task, items, list(tokens), list(corrupted), answers, wrong, candidates)


def prompt_sets(
    kb: KnowledgeBase, n_reasoning: int, *, max_recall: int | None = None, seed: int = 1
) -> dict[str, PromptSet]:
    """Every memorised fact (or the first max_recall) and n_reasoning fresh 2-hop problems, each with a corrupted partner.

    Recall's partner asks about another entity (same relation) with a different answer. Reasoning's
    partner keeps the same facts and asks about the other chain's start (w instead of x, answer v2):
    a minimal pair, so patching finds what carries the query through the two lookups rather than
    everything that reads the facts.
    """
    facts = kb.facts()
    pairs = [(e, r) for e in range(kb.n_entities) for r in range(kb.n_relations)][:max_recall]
    entity, relation = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    tokens, answers = recall_batch(kb, entity, relation)
    partner = torch.tensor(
        [
            next(e2 for k in range(1, kb.n_entities) if facts[(e2 := (e + k) % kb.n_entities), r] != facts[e, r])
            for e, r in pairs
        ]
    )
    corrupted, wrong = recall_batch(kb, partner, relation)
    fact_tokens, names, _, problem_answers = problems(kb, n_reasoning, torch.Generator().manual_seed(seed))
    query = torch.full((n_reasoning, 1), QUERY)
    r_tokens, c_tokens = (torch.cat([fact_tokens, query, names[:, chain, None]], 1) for chain in (0, 1))  # x, then w
    return {
        "recall": _prompt_set("recall", kb, tokens, answers, corrupted, wrong, [f"e{e}r{r}" for e, r in pairs]),
        "reasoning": _prompt_set(
            "reasoning",
            kb,
            r_tokens,
            problem_answers[:, 0],
            c_tokens,
            problem_answers[:, 1],
            [f"x{int(t)}" for t in r_tokens[:, -1]],
        ),
    }
