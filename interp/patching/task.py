"""PatchingTask: clean/corrupted prompt pairs, their answers, and the metric a patch is scored by.

Patching follows `transformer_lens.patching`: run the CORRUPTED prompts, patch in CLEAN
activations at one place, and score the last-position logits. A named metric is averaged over
the prompts, as TransformerLens's `patching_metric` returns one number for the batch.

Prompts of different token lengths are an error unless `align=True`, which left-pads every
prompt to the longest one and passes an attention mask. Left, because the metric reads the last
position and so both prompts of a pair must end at the same index; with the mask (and the
mask-aware rotary/positional offsets of TransformerLens) a padded prompt computes what it would
unpadded. Positions then count in the padded sequence: position p of a pair is the same distance
from the end in both prompts, and a patch into a pad position has no effect (pads are masked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components import Unembed
from transformer_lens.utilities.activation_functions import apply_softcap

from interp import metrics
from interp.errors import InterpError, ShapeMismatchError, did_you_mean
from interp.hooks import token_rows

METRICS = ("logit_diff", "answer_prob", "accuracy", "kl_div")
MetricFn = Callable[[Float[Tensor, "batch 1 d_vocab"]], Tensor]


def _answer_ids(model: HookedTransformer, answers, n_prompts: int, argument: str) -> Int[Tensor, " batch"]:
    if isinstance(answers, (str, int)):
        answers = [answers]
    if len(answers) != n_prompts:
        raise ShapeMismatchError(f"{argument}: expected one answer per prompt pair ({n_prompts}), got {len(answers)}.")
    ids = []
    for answer in answers:
        if isinstance(answer, str):
            tokens = model.to_tokens(answer, prepend_bos=False)[0]
            if len(tokens) != 1:
                pieces = [model.tokenizer.decode(t) for t in tokens] if model.tokenizer else tokens.tolist()
                raise InterpError(
                    f"{argument}: {answer!r} is {len(tokens)} tokens {pieces}; each answer must be a single token (mind the leading space, e.g. ' Paris')."
                )
            ids.append(int(tokens[0]))
        else:
            ids.append(int(answer))
    ids_tensor = torch.tensor(ids, device=model.cfg.device)
    if not ((0 <= ids_tensor) & (ids_tensor < model.cfg.d_vocab)).all():
        raise ShapeMismatchError(f"{argument}: token ids must lie in 0..{model.cfg.d_vocab - 1}, got {ids}.")
    return ids_tensor


def _left_pad(
    rows: list[Tensor], length: int, pad_id: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    tokens = torch.full((len(rows), length), pad_id, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros((len(rows), length), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        tokens[i, length - len(row) :] = row
        mask[i, length - len(row) :] = 1
    return tokens, mask


class PatchingTask:
    """Clean and corrupted prompts (pairwise), answers, and a metric; baselines computed on creation.

    metric: a name in METRICS, or a function of last-position logits [batch, 1, d_vocab] returning
    a scalar or one value per prompt (a TransformerLens `patching_metric` reading `logits[:, -1]`
    works as is). "logit_diff" needs `wrong_answers`; "kl_div" is KL(clean || patched).
    """

    @classmethod
    def from_pairs(
        cls, model: HookedTransformer, pairs, *, metric: str = "logit_diff", align: bool = False
    ) -> PatchingTask:
        """A task from prompt pairs: dicts with clean, corrupted, answer, wrong (interp.patching.pairs reads them from files)."""
        fields = {key: [p[key] for p in pairs] for key in ("clean", "corrupted", "answer", "wrong")}
        return cls(
            model, fields["clean"], fields["corrupted"], fields["answer"], fields["wrong"], metric=metric, align=align
        )

    def __init__(
        self,
        model: HookedTransformer,
        clean_prompts: Sequence[str] | Int[Tensor, "batch clean_pos"],
        corrupted_prompts: Sequence[str] | Int[Tensor, "batch corrupted_pos"],
        answers: str | int | Sequence[str | int] | Int[Tensor, " batch"],
        wrong_answers: str | int | Sequence[str | int] | Int[Tensor, " batch"] | None = None,
        metric: str | MetricFn = "logit_diff",
        *,
        align: bool = False,
    ):
        self.model = model
        clean_rows = token_rows(model, clean_prompts, argument="clean_prompts")
        corrupted_rows = token_rows(model, corrupted_prompts, argument="corrupted_prompts")
        if len(clean_rows) != len(corrupted_rows):
            raise ShapeMismatchError(
                f"clean_prompts has {len(clean_rows)} prompts but corrupted_prompts has {len(corrupted_rows)}; they are pairs, so pass the same number."
            )
        self.clean_tokens, self.corrupted_tokens, self.clean_mask, self.corrupted_mask = self._pair_tokens(
            clean_rows, corrupted_rows, align
        )
        self.n_prompts, self.seq_len = self.clean_tokens.shape
        self.answer_tokens = _answer_ids(model, answers, self.n_prompts, "answers")
        self.wrong_tokens = (
            None if wrong_answers is None else _answer_ids(model, wrong_answers, self.n_prompts, "wrong_answers")
        )
        self.metric_name, self._metric_fn = self._resolve_metric(metric)
        with torch.no_grad():
            self.shortformer_pos_embed = model.input_to_embed(
                self.corrupted_tokens, attention_mask=self.corrupted_mask
            )[2]
            self.clean_logits = self._last_logits(self.clean_tokens)
            self.corrupted_logits = self._last_logits(self.corrupted_tokens)
            self.clean_metric = float(self.score(self.clean_logits[:, None])[0])
            self.corrupted_metric = float(self.score(self.corrupted_logits[:, None])[0])

    def _pair_tokens(self, clean_rows: list[Tensor], corrupted_rows: list[Tensor], align: bool):
        lengths = {len(r) for r in clean_rows + corrupted_rows}
        if len(lengths) == 1:
            return torch.stack(clean_rows), torch.stack(corrupted_rows), None, None
        if not align:
            for i, (c, x) in enumerate(zip(clean_rows, corrupted_rows)):
                if len(c) != len(x):
                    raise ShapeMismatchError(
                        f"Pair {i}: the clean prompt has {len(c)} tokens but the corrupted prompt has {len(x)}. "
                        "Use prompts of one token length, or pass align=True to left-pad to a common length."
                    )
            raise ShapeMismatchError(
                f"Prompt pairs have different token lengths ({sorted(lengths)}). Use one token length for every prompt, or pass align=True to left-pad."
            )
        tokenizer = self.model.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        length = max(lengths)
        clean, clean_mask = _left_pad(clean_rows, length, pad_id)
        corrupted, corrupted_mask = _left_pad(corrupted_rows, length, pad_id)
        return clean, corrupted, clean_mask, corrupted_mask

    def _resolve_metric(self, metric: str | MetricFn) -> tuple[str, MetricFn | None]:
        if callable(metric):
            return getattr(metric, "__name__", "custom"), metric
        if metric not in METRICS:
            raise InterpError(
                f"metric={metric!r} is not a known metric.{did_you_mean(str(metric), METRICS)} Known: {', '.join(METRICS)}, or pass a function of the logits."
            )
        if metric == "logit_diff" and self.wrong_tokens is None:
            raise InterpError(
                "metric='logit_diff' needs wrong_answers (one wrong answer per pair, e.g. the corrupted prompt's answer)."
            )
        return metric, None

    def _last_logits(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
        mask = self.clean_mask if tokens is self.clean_tokens else self.corrupted_mask
        return self.model(tokens, attention_mask=mask)[:, -1]

    def score(self, logits: Float[Tensor, "variants_x_batch 1 d_vocab"]) -> Float[Tensor, " variants"]:
        """The metric averaged over prompts, per variant; variants of the batch are stacked variant-major."""
        n_variants = logits.shape[0] // self.n_prompts
        if self._metric_fn is not None:
            return torch.stack([self._metric_fn(chunk).float().mean() for chunk in logits.split(self.n_prompts)])
        answer = self.answer_tokens.repeat(n_variants)
        if self.metric_name == "logit_diff":
            per_prompt = metrics.logit_diff(logits, answer, self.wrong_tokens.repeat(n_variants))
        elif self.metric_name == "answer_prob":
            per_prompt = metrics.answer_prob(logits, answer)
        elif self.metric_name == "accuracy":
            per_prompt = metrics.accuracy(logits, answer)
        else:
            per_prompt = metrics.kl_div(logits, self.clean_logits.repeat(n_variants, 1))
        return per_prompt.view(n_variants, self.n_prompts).float().mean(1)


def last_position_logits(
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch 1 d_vocab"]:
    """Final norm and unembedding of the last position only (the metric reads nothing else)."""
    last = resid[:, -1:]
    if model.cfg.normalization_type is not None:
        last = model.ln_final(last)
    unembed = model.unembed
    if type(unembed) is Unembed and unembed.W_U.dtype in (torch.float32, torch.float64):
        # TransformerLens copies W_U to transposed contiguous memory on every call (to match HF's bfloat16 rounding):
        # for this model as long as the product itself; in float32 the product reads the transposed view as is
        logits = unembed.hook_out(F.linear(unembed.hook_in(last), unembed.W_U.T, unembed.b_U))
    else:
        logits = unembed(last)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
