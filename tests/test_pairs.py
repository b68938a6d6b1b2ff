"""The built-in prompt pairs hold what interp.patching.pairs says of them, on the bundled model."""

import torch

from interp.patching.pairs import CAPITALS, builtin_pairs


def test_builtin_pairs_are_five_tokens_and_answered_correctly(model):
    pairs = builtin_pairs()
    assert len(pairs) == len(CAPITALS) == 16
    tokens = model.to_tokens([p["clean"] for p in pairs])
    assert tokens.shape == (16, 5)  # BOS + "The capital of X is": one token length, so no alignment is needed
    answer = torch.tensor([model.to_single_token(p["answer"]) for p in pairs])
    wrong = torch.tensor([model.to_single_token(p["wrong"]) for p in pairs])
    with torch.no_grad():
        logits = model(tokens)[:, -1]
    rows = torch.arange(16)
    # the right capital beats the corrupted prompt's capital, and is the model's top token, for every pair
    assert (logits[rows, answer] > logits[rows, wrong]).all()
    assert (logits.argmax(-1) == answer).all(), [
        p["clean"] for p, ok in zip(pairs, logits.argmax(-1) == answer) if not ok
    ]
