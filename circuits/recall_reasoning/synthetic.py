"""A controlled setting: a small transformer trained on a synthetic knowledge base, where what must be memorised is known.

Tokens: filler, query, 1-hop query (training only), relations, KB entities, values, and fresh names (never in the KB).
    recall    [F F F F F F F e r Q]                   -> kb[e, r]: a memorised fact (a value)
    reasoning [x y  w u  y v  u v2  x Q] (each pair of facts in random order) -> v: the answer
              composes two facts given in context (2-hop: x -> y -> v; w -> u -> v2 distracts),
              x, y, w, u fresh names, v != v2 values.
Both tasks have the same length and end on Q, so no length confound enters the screen; the answer is
always a value token, so the same-type distractors are the other values.
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

FILLER, QUERY, HOP1 = 0, 1, 2
SEQ_LEN = 10


@dataclass(frozen=True)
class KnowledgeBase:
    """n_entities x n_relations memorised facts over n_values values; n_fresh names for in-context facts."""

    n_entities: int = 32
    n_relations: int = 2
    n_values: int = 16
    n_fresh: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.n_values < 2 or self.n_fresh < 4 or self.n_entities < 2 or self.n_relations < 1:
            raise InterpError(f"KnowledgeBase: need n_values >= 2, n_fresh >= 4, n_entities >= 2, n_relations >= 1; got {self}.")

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


def recall_batch(kb: KnowledgeBase, entity: Int[Tensor, " b"], relation: Int[Tensor, " b"]) -> tuple[Int[Tensor, "b seq"], Int[Tensor, " b"]]:
    tokens = torch.full((len(entity), SEQ_LEN), FILLER)
    tokens[:, -3] = kb.entity0 + entity
    tokens[:, -2] = kb.relation0 + relation
    tokens[:, -1] = QUERY
    return tokens, kb.facts()[entity, relation]


def reasoning_batch(kb: KnowledgeBase, n: int, generator: torch.Generator, *, hops: int = 2) -> tuple[Int[Tensor, "n seq"], Int[Tensor, " n"]]:
    """n fresh problems: first-hop facts (x y), (w u) in slots 0-1 and second-hop facts (y v), (u v2) in slots 2-3, each pair in random order.

    hops=2 asks x's second-hop value v (query QUERY); hops=1 asks x's first-hop name y (query HOP1,
    an auxiliary training target that teaches the lookup the 2-hop answer composes twice).
    """
    names = kb.fresh0 + torch.stack([torch.randperm(kb.n_fresh, generator=generator)[:4] for _ in range(n)])  # x, y, w, u
    values = kb.value0 + torch.stack([torch.randperm(kb.n_values, generator=generator)[:2] for _ in range(n)])  # v, v2
    x, y, w, u = names.unbind(1)
    first = torch.stack([torch.stack([x, y], 1), torch.stack([w, u], 1)], 1)  # [n, fact, (head, tail)]
    second = torch.stack([torch.stack([y, values[:, 0]], 1), torch.stack([u, values[:, 1]], 1)], 1)
    swap_first, swap_second = (torch.rand(n, generator=generator) < 0.5 for _ in range(2))
    first = torch.where(swap_first[:, None, None], first.flip(1), first)
    second = torch.where(swap_second[:, None, None], second.flip(1), second)
    tokens = torch.full((n, SEQ_LEN), FILLER)
    tokens[:, :8] = torch.cat([first, second], 1).flatten(1)
    tokens[:, 8], tokens[:, 9] = x, QUERY if hops == 2 else HOP1
    return tokens, values[:, 0] if hops == 2 else y


@dataclass(frozen=True)
class SyntheticTraining:
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    steps: int = 3000
    batch_size: int = 128
    hop1_batch: int = 16  # of batch_size: 1-hop lookups, an auxiliary target
    lr: float = 1e-3
    weight_decay: float = 0.01
    seed: int = 0


def build_model(kb: KnowledgeBase, settings: SyntheticTraining) -> HookedTransformer:
    spec = dict(n_layers=settings.n_layers, d_model=settings.d_model, n_heads=settings.n_heads, d_head=settings.d_model // settings.n_heads,
                d_mlp=settings.d_mlp, d_vocab=kb.d_vocab, n_ctx=SEQ_LEN, act_fn="gelu_new", normalization_type="LN",
                positional_embedding_type="standard", default_prepend_bos=False, model_name="recall-reasoning-synthetic")
    return load_model(spec, seed=settings.seed)


def train(kb: KnowledgeBase, settings: SyntheticTraining, *, progress: bool = False) -> tuple[HookedTransformer, pd.DataFrame]:
    """Train on half recall facts, half fresh problems (mostly 2-hop, hop1_batch 1-hop), loss on the answer only; returns the model and its training curve."""
    model = build_model(kb, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=settings.steps, pct_start=0.1)
    half = settings.batch_size // 2
    curve = []
    steps = range(settings.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="synthetic model")
    model.train()
    with torch.enable_grad():
        for step in steps:
            entity = torch.randint(kb.n_entities, (half,), generator=generator)
            relation = torch.randint(kb.n_relations, (half,), generator=generator)
            recall_tokens, recall_answers = recall_batch(kb, entity, relation)
            reasoning_tokens, reasoning_answers = reasoning_batch(kb, settings.batch_size - half - settings.hop1_batch, generator)
            hop1_tokens, hop1_answers = reasoning_batch(kb, settings.hop1_batch, generator, hops=1)
            logits = model(torch.cat([recall_tokens, reasoning_tokens, hop1_tokens]))[:, -1]
            losses = torch.nn.functional.cross_entropy(logits, torch.cat([recall_answers, reasoning_answers, hop1_answers]), reduction="none")
            loss = losses.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 50 == 0 or step == settings.steps - 1:
                correct = (logits.argmax(-1) == torch.cat([recall_answers, reasoning_answers, hop1_answers]))[: settings.batch_size - settings.hop1_batch]
                losses = losses[: settings.batch_size - settings.hop1_batch]
                losses = losses.detach()
                curve.append(dict(step=step, loss=float(losses.mean()), recall_loss=float(losses[:half].mean()), reasoning_loss=float(losses[half:].mean()),
                                  recall_acc=float(correct[:half].float().mean()), reasoning_acc=float(correct[half:].float().mean())))
    model.eval()
    return model, pd.DataFrame(curve)


def _prompt_set(task: str, kb: KnowledgeBase, tokens: Tensor, answers: Tensor, corrupted: Tensor, wrong: Tensor, entities: list[str]) -> PromptSet:
    candidates = torch.zeros(len(tokens), kb.d_vocab, dtype=torch.bool)
    candidates[:, kb.value0 : kb.value0 + kb.n_values] = True
    text = lambda row: " ".join(str(int(t)) for t in row)  # noqa: E731
    items = pd.DataFrame(dict(task=task, family="kb" if task == "recall" else "two_hop", template=task, entity=entities,
                              prompt=[text(r) for r in tokens], answer=[str(int(a)) for a in answers],
                              corrupted_prompt=[text(r) for r in corrupted], corrupted_answer=[str(int(a)) for a in wrong], n_tokens=SEQ_LEN))
    return PromptSet(task, items, list(tokens), list(corrupted), answers, wrong, candidates)


def prompt_sets(kb: KnowledgeBase, n_reasoning: int, *, max_recall: int | None = None, seed: int = 1) -> dict[str, PromptSet]:
    """Every memorised fact (or the first max_recall) and n_reasoning fresh 2-hop problems, each with a corrupted partner.

    Recall's partner asks about another entity (same relation) with a different answer; reasoning's
    partner is another 2-hop problem (new names) with a different answer.
    """
    facts = kb.facts()
    pairs = [(e, r) for e in range(kb.n_entities) for r in range(kb.n_relations)][:max_recall]
    entity, relation = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    tokens, answers = recall_batch(kb, entity, relation)
    partner = torch.tensor([next(e2 for k in range(1, kb.n_entities) if facts[(e2 := (e + k) % kb.n_entities), r] != facts[e, r]) for e, r in pairs])
    corrupted, wrong = recall_batch(kb, partner, relation)
    generator = torch.Generator().manual_seed(seed)
    r_tokens, r_answers = reasoning_batch(kb, n_reasoning, generator)
    c_tokens, c_answers = reasoning_batch(kb, 4 * n_reasoning, generator)
    pick = [next(j for j in range(i, len(c_answers)) if c_answers[j] != r_answers[i]) for i in range(n_reasoning)]
    return {
        "recall": _prompt_set("recall", kb, tokens, answers, corrupted, wrong, [f"e{e}r{r}" for e, r in pairs]),
        "reasoning": _prompt_set("reasoning", kb, r_tokens, r_answers, c_tokens[pick], c_answers[pick], [f"x{int(t)}" for t in r_tokens[:, 8]]),
    }
