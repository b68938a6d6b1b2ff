"""Recall and reasoning prompts over real entities, their corrupted partners, and how they are scored.

Recall asks for a memorised fact ("The capital of France is" -> " Paris"). Reasoning gives the
facts in the prompt and asks for their 2-hop composition through a bridge ("Tokyo is the capital of
Japan. Japan is in Asia. Therefore Tokyo is in" -> " Asia"). Every answer is scored by its first
token: top-1 over the vocabulary ("first token") and against the first tokens of the same
family's other answers ("distractor": the answer's log-prob beats every same-type distractor's). The relation
families themselves (facts and templates): circuits.recall_reasoning.families.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from circuits.recall_reasoning.families import FAMILIES, NO_COPY_FAMILIES, Family, families  # noqa: F401 (re-exported)
from interp.errors import InterpError

TASKS = ("recall", "reasoning")


@dataclass
class PromptSet:
    """One task's items as token rows of possibly different lengths, each with a same-length corrupted partner.

    items: one row per item (task, family, template, entity, prompt, answer, corrupted_prompt, corrupted_answer, n_tokens).
    """

    task: str
    items: pd.DataFrame
    tokens: list[Int[Tensor, " pos"]]
    corrupted: list[Int[Tensor, " pos"]]
    answer_ids: Int[Tensor, " item"]
    wrong_ids: Int[Tensor, " item"]  # the corrupted partner's answer
    candidate_ids: Bool[Tensor, "item d_vocab"]  # first tokens of the same family's answers (the answer included)

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, keep: Sequence[int] | Tensor) -> PromptSet:
        keep = [int(i) for i in keep]
        return PromptSet(
            self.task,
            self.items.iloc[keep].reset_index(drop=True),
            [self.tokens[i] for i in keep],
            [self.corrupted[i] for i in keep],
            self.answer_ids[keep],
            self.wrong_ids[keep],
            self.candidate_ids[keep],
        )

    def length_groups(self) -> dict[int, list[int]]:
        """Item indices by token length: each group runs as one batch without padding."""
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(self.tokens):
            groups.setdefault(len(row), []).append(i)
        return groups


def first_token(model: HookedTransformer, answer: str) -> int:
    """The id of the answer's first token, with the leading space it has after a prompt."""
    return int(model.to_tokens(" " + answer, prepend_bos=False)[0, 0])


def _prompt(family: Family, task: str, template: str, fact: tuple[str, str, str]) -> str:
    entity, bridge, answer = fact
    return (
        template.format(entity=entity)
        if task == "recall"
        else template.format(entity=entity, bridge=bridge, answer=answer)
    )


def build_prompts(
    model: HookedTransformer, task: str, family_names: Sequence[str] | None = None, *, max_entities: int | None = None
) -> tuple[PromptSet, int]:
    """Every (family, template, entity) prompt of `task` that has a corrupted partner; returns it and the count without one.

    max_entities: use the first n entities of each family (quick runs).
    The corrupted partner is the same template with another entity of the family whose answer has
    a different first token and whose prompt has the same token length (the first such entity).
    """
    if task not in TASKS:
        raise InterpError(f"build_prompts(task={task!r}): choose one of {', '.join(TASKS)}.")
    prepend = model.cfg.default_prepend_bos
    rows, tokens, corrupted, answers, wrongs, candidates, unpaired = [], [], [], [], [], [], 0
    for family in families(family_names):
        facts = family.facts[:max_entities]
        answer_ids = {fact[2]: first_token(model, fact[2]) for fact in facts}
        family_candidates = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
        family_candidates[list(set(answer_ids.values()))] = True
        templates = family.recall_templates if task == "recall" else family.reasoning_templates
        for template in templates:  # a reasoning-only family (no recall templates) adds no recall items
            prompts = [_prompt(family, task, template, fact) for fact in facts]
            rows_t = [model.to_tokens(p, prepend_bos=prepend)[0] for p in prompts]
            for i, fact in enumerate(facts):
                partner = next(
                    (
                        j
                        for j, other in enumerate(facts)
                        if answer_ids[other[2]] != answer_ids[fact[2]] and len(rows_t[j]) == len(rows_t[i])
                    ),
                    None,
                )
                if partner is None:
                    unpaired += 1
                    continue
                other = facts[partner]
                rows.append(
                    dict(
                        task=task,
                        family=family.name,
                        template=template,
                        entity=fact[0],
                        prompt=prompts[i],
                        answer=fact[2],
                        corrupted_prompt=prompts[partner],
                        corrupted_answer=other[2],
                        n_tokens=len(rows_t[i]),
                    )
                )
                tokens.append(rows_t[i])
                corrupted.append(rows_t[partner])
                answers.append(answer_ids[fact[2]])
                wrongs.append(answer_ids[other[2]])
                candidates.append(family_candidates)
    if not rows:
        raise InterpError(
            f"build_prompts: no {task} prompt has a same-length corrupted partner in families {family_names}; add entities to the families."
        )
    return PromptSet(
        task,
        pd.DataFrame(rows),
        tokens,
        corrupted,
        torch.tensor(answers),
        torch.tensor(wrongs),
        torch.stack(candidates),
    ), unpaired


@dataclass
class ReferencePool:
    """Prompts that mean / resample ablation may take their values from, never scored: one row per prompt (template, entity, prompt) and its tokens."""

    items: pd.DataFrame
    tokens: list[Int[Tensor, " pos"]]

    def __len__(self) -> int:
        return len(self.tokens)


def free_bridges(family: Family) -> tuple[str, ...]:
    """The family's bridges when they are fresh names shared by several facts (people, objects, nonce words); () when each fact has its own (a capital)."""
    bridges = tuple(dict.fromkeys(fact[1] for fact in family.facts))
    return bridges if len(bridges) < len(family.facts) else ()


def reference_pool(
    model: HookedTransformer, family_names: Sequence[str] | None = None, *, max_entities: int | None = None
) -> ReferencePool:
    """Every template of both tasks filled with every entity (the first max_entities of each family) and, where the family's bridges
    are fresh names, with every bridge: the prompts a template-matched reference may draw from (the caller keeps the
    evaluation half's entities out). A fresh name carries no fact, so each bridge variant is as much an item of the template
    as the built one, and the reasoning templates' cells grow by the number of bridges (8) over the items alone.
    """
    prepend = model.cfg.default_prepend_bos
    rows = []
    for family in families(family_names):
        facts = family.facts[:max_entities]
        bridges = free_bridges(family)
        for task, templates in (("recall", family.recall_templates), ("reasoning", family.reasoning_templates)):
            for template in templates:
                for entity, bridge, answer in facts:
                    for b in (bridges or (bridge,)) if task == "reasoning" else (bridge,):
                        text = _prompt(family, task, template, (entity, b, answer))
                        rows.append(dict(task=task, family=family.name, template=template, entity=entity, prompt=text))
    items = pd.DataFrame(rows).drop_duplicates("prompt").reset_index(drop=True)
    return ReferencePool(items, [model.to_tokens(text, prepend_bos=prepend)[0] for text in items["prompt"]])


def correct_by_first_token(
    logits: Float[Tensor, "batch d_vocab"], answer_ids: Int[Tensor, " batch"]
) -> Bool[Tensor, " batch"]:
    """The answer's first token is the top-1 prediction over the whole vocabulary."""
    return logits.argmax(-1) == answer_ids.to(logits.device)


def correct_by_distractors(
    logits: Float[Tensor, "batch d_vocab"],
    answer_ids: Int[Tensor, " batch"],
    candidate_ids: Bool[Tensor, "batch d_vocab"],
) -> Bool[Tensor, " batch"]:
    """The answer's log-prob beats every other same-family answer's (log-softmax is monotone, so logits compare the same)."""
    answer_logit = logits.gather(-1, answer_ids[:, None].to(logits.device))[:, 0]
    others = candidate_ids.to(logits.device).clone()
    others[torch.arange(len(others)), answer_ids] = False
    best_other = logits.masked_fill(~others, float("-inf")).max(-1).values
    return answer_logit > best_other


def last_logits(model: HookedTransformer, prompts: PromptSet, fwd_hooks_for=None) -> Float[Tensor, "item d_vocab"]:
    """Last-position logits of every item, one batch per token length; fwd_hooks_for(tokens) gives hooks per batch."""
    out = torch.empty(len(prompts), model.cfg.d_vocab)
    with torch.no_grad():
        for indices in prompts.length_groups().values():
            tokens = torch.stack([prompts.tokens[i] for i in indices]).to(model.cfg.device)
            hooks = fwd_hooks_for(indices, tokens) if fwd_hooks_for is not None else []
            out[indices] = model.run_with_hooks(tokens, fwd_hooks=hooks)[:, -1].float().cpu()
    return out


def score(logits: Float[Tensor, "item d_vocab"], prompts: PromptSet) -> pd.DataFrame:
    """Per item: correct by first token, correct against distractors, and the answer's log-prob."""
    logprobs = logits.log_softmax(-1)
    return prompts.items[["task", "family", "template", "entity", "n_tokens"]].assign(
        correct_first_token=correct_by_first_token(logits, prompts.answer_ids).numpy(),
        correct_distractor=correct_by_distractors(logits, prompts.answer_ids, prompts.candidate_ids).numpy(),
        answer_logprob=logprobs.gather(-1, prompts.answer_ids[:, None])[:, 0].numpy(),
    )


def keep_correct(model: HookedTransformer, prompts: PromptSet) -> tuple[PromptSet, pd.DataFrame]:
    """Drop the items the unablated model gets wrong (against distractors, which the ablations are scored by); returns the kept set and every item's score."""
    scores = score(last_logits(model, prompts), prompts)
    keep = scores.index[scores["correct_distractor"]].tolist()
    if not keep:
        raise InterpError(
            f"keep_correct: the model answers none of the {len(prompts)} {prompts.task} prompts correctly; nothing is left to analyse."
        )
    return prompts.subset(keep), scores.assign(kept=scores["correct_distractor"])


# --- the held-out split ------------------------------------------------------------------------


def concat(task: str, parts: Sequence[PromptSet]) -> PromptSet:
    """One PromptSet of several (their items relabelled `task`)."""
    items = pd.concat([p.items for p in parts], ignore_index=True).assign(task=task)
    return PromptSet(
        task,
        items,
        [t for p in parts for t in p.tokens],
        [t for p in parts for t in p.corrupted],
        torch.cat([p.answer_ids for p in parts]),
        torch.cat([p.wrong_ids for p in parts]),
        torch.cat([p.candidate_ids for p in parts]),
    )


def split_by_entity(prompts: dict[str, PromptSet], seed: int = 0) -> tuple[dict[str, PromptSet], dict[str, PromptSet]]:
    """Split both tasks' items by entity into a localisation half and an evaluation half (seeded, the same entity in the same half for both tasks).

    Every localisation item's corrupted partner must not be an evaluated prompt: a partner that is one is
    replaced by another localisation item of the same family, template and token length with a different
    answer token (the first such), and the item is dropped when there is none. So the sets are chosen
    without running any evaluated prompt.
    """
    entities = sorted({e for p in prompts.values() for e in p.items["entity"]})
    if len(entities) < 2:
        raise InterpError(
            f"split_by_entity: the items hold {len(entities)} entity; at least two are needed to split them."
        )
    order = torch.randperm(len(entities), generator=torch.Generator().manual_seed(seed)).tolist()
    localise_entities = {entities[i] for i in order[: len(entities) // 2]}
    localisation, evaluation = {}, {}
    for task, p in prompts.items():
        in_half = p.items["entity"].isin(localise_entities).to_numpy()
        localisation[task] = p.subset(np.flatnonzero(in_half))
        evaluation[task] = p.subset(np.flatnonzero(~in_half))
    evaluated = {prompt for p in evaluation.values() for prompt in p.items["prompt"]}
    for task, p in localisation.items():
        localisation[task] = _repair(p, evaluated)
    return localisation, evaluation


def _repair(prompts: PromptSet, forbidden: set[str]) -> PromptSet:
    items = prompts.items
    keep, corrupted, wrong, corrupted_prompt, corrupted_answer = [], [], [], [], []
    for i, row in items.iterrows():
        if row["corrupted_prompt"] not in forbidden:
            keep.append(i)
            corrupted.append(prompts.corrupted[i]), wrong.append(int(prompts.wrong_ids[i]))
            corrupted_prompt.append(row["corrupted_prompt"]), corrupted_answer.append(row["corrupted_answer"])
            continue
        partner = next(
            (
                j
                for j, other in items.iterrows()
                if j != i
                and other["family"] == row["family"]
                and other["template"] == row["template"]
                and len(prompts.tokens[j]) == len(prompts.tokens[i])
                and int(prompts.answer_ids[j]) != int(prompts.answer_ids[i])
            ),
            None,
        )
        if partner is None:
            continue
        keep.append(i)
        corrupted.append(prompts.tokens[partner]), wrong.append(int(prompts.answer_ids[partner]))
        corrupted_prompt.append(items.at[partner, "prompt"]), corrupted_answer.append(items.at[partner, "answer"])
    kept = prompts.subset(keep)
    kept.items = kept.items.assign(corrupted_prompt=corrupted_prompt, corrupted_answer=corrupted_answer)
    kept.corrupted = corrupted
    kept.wrong_ids = torch.tensor(wrong, dtype=prompts.wrong_ids.dtype)
    return kept


def references(localisation: PromptSet, evaluated: set[str]) -> dict[int, Tensor]:
    """Per token length, the reference prompts of mean / resample ablation: the localisation half's clean and corrupted prompts, never an evaluated one."""
    rows: dict[int, dict[str, Tensor]] = {}
    for i, row in localisation.items.iterrows():
        for text, tokens in (
            (row["prompt"], localisation.tokens[i]),
            (row["corrupted_prompt"], localisation.corrupted[i]),
        ):
            if text not in evaluated:
                rows.setdefault(len(tokens), {})[text] = tokens
    return {length: torch.stack(list(by_text.values())) for length, by_text in rows.items()}


def shuffle_labels(prompts: dict[str, PromptSet], seed: int) -> dict[str, PromptSet]:
    """The negative control: both tasks' items pooled and dealt back to 'recall' and 'reasoning' at random (the same counts)."""
    parts = []
    for task in TASKS:
        part = prompts[task].subset(range(len(prompts[task])))
        part.items = part.items.assign(true_task=task)
        parts.append(part)
    pooled = concat("pooled", parts)
    order = torch.randperm(len(pooled), generator=torch.Generator().manual_seed(seed)).tolist()
    n_recall = len(prompts["recall"])
    out = {}
    for task, indices in (("recall", sorted(order[:n_recall])), ("reasoning", sorted(order[n_recall:]))):
        part = pooled.subset(indices)
        part.task, part.items = task, part.items.assign(task=task)
        out[task] = part
    return out


def answer_in_prompt(prompts: PromptSet) -> np.ndarray:
    """Per item: the answer appears verbatim in the prompt as a whole word (so an in-context copy can produce it; "German" in "Germany" does not count)."""
    import re

    return np.array(
        [
            re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", prompt) is not None
            for answer, prompt in zip(prompts.items["answer"], prompts.items["prompt"])
        ],
        dtype=bool,
    )
