import math

import pytest
import torch

from interp import metrics
from interp.errors import ShapeMismatchError
from tests.shapecheck import shapes_unchecked


@pytest.fixture
def logits():
    return torch.randn(4, 3, 11, generator=torch.Generator().manual_seed(0))


def test_logit_diff_matches_a_loop(logits):
    answer, wrong = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 5, 6, 10])
    expected = [logits[b, -1, answer[b]] - logits[b, -1, wrong[b]] for b in range(4)]
    torch.testing.assert_close(metrics.logit_diff(logits, answer, wrong), torch.stack(expected))
    # [batch, d_vocab] logits are read as the last position already
    torch.testing.assert_close(metrics.logit_diff(logits[:, -1], answer, wrong), torch.stack(expected))


def test_answer_prob_and_accuracy_match_softmax_and_argmax(logits):
    answer = torch.tensor([1, 2, 3, 4])
    expected = [math.exp(logits[b, -1, answer[b]]) / sum(math.exp(x) for x in logits[b, -1].tolist()) for b in range(4)]
    torch.testing.assert_close(metrics.answer_prob(logits, answer), torch.tensor(expected))
    top = logits[:, -1].argmax(-1)
    answer_with_hits = torch.where(torch.arange(4) % 2 == 0, top, (top + 1) % 11)
    assert metrics.accuracy(logits, answer_with_hits).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_kl_div_matches_torch_kl_div(logits):
    clean = torch.randn(4, 3, 11, generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.kl_div(
        logits[:, -1].log_softmax(-1), clean[:, -1].log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    torch.testing.assert_close(metrics.kl_div(logits, clean), expected)
    assert metrics.kl_div(clean, clean).abs().max() < 1e-6


def test_restoration_is_zero_at_corrupted_one_at_clean_and_nan_without_gap():
    values = metrics.restoration(torch.tensor([-2.0, 3.0, 0.5]), clean=3.0, corrupted=-2.0)
    torch.testing.assert_close(values, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert torch.isnan(metrics.restoration(1.0, clean=2.0, corrupted=2.0))


def test_bad_inputs_name_the_argument(logits, unchecked_shapes):
    with (
        pytest.raises(ShapeMismatchError, match=r"answer_tokens: expected one token id per prompt, shape \[4\]"),
        shapes_unchecked(),
    ):
        metrics.answer_prob(logits, torch.tensor([1, 2]))
    with pytest.raises(ShapeMismatchError, match=r"wrong_tokens: token ids must lie in 0\.\.10"):
        metrics.logit_diff(logits, torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 3, 11]))
    with pytest.raises(ShapeMismatchError, match="answer_tokens: expected integer token ids"):
        metrics.accuracy(logits, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    with pytest.raises(ShapeMismatchError, match=r"logits: expected logits of shape \[batch, pos, d_vocab\]"):
        metrics.accuracy(logits[0, 0], torch.tensor([1]))
    with pytest.raises(ShapeMismatchError, match="clean_logits: expected the shape"):
        metrics.kl_div(logits, logits[:2])
