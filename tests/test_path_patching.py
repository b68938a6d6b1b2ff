"""Exact path patching against a slow reference that reruns the whole model with frozen
activations (plain TransformerLens hooks, one head at a time), and against a closed form."""

import pytest
import torch

from interp import metrics
from interp.errors import InterpError, UnknownSiteError
from interp.patching import PatchingTask
from interp.path_patching import path_patch
from interp.sites import Site


@pytest.fixture(scope="module")
def tiny_task(tiny_model):
    tokens = torch.randint(0, tiny_model.cfg.d_vocab, (2, 3, 6), generator=torch.Generator().manual_seed(1))
    return PatchingTask(tiny_model, tokens[0], tokens[1], answers=[3, 7, 11], wrong_answers=[9, 1, 4])


@torch.no_grad()
def slow_path_patch(task, sender: Site, receivers, through_mlps: bool) -> float:
    model, cfg = task.model, task.model.cfg
    _, clean = model.run_with_cache(task.clean_tokens)
    _, corrupted = model.run_with_cache(task.corrupted_tokens)

    def is_sender(name, head, position):
        return name == sender.hook_name and sender.head in (None, head) and sender.position in (None, position)

    def freeze_z(z, hook):
        for h in range(cfg.n_heads):
            for p in range(task.seq_len):
                z[:, p, h] = (clean if is_sender(hook.name, h, p) else corrupted)[hook.name][:, p, h]
        return z

    def mlp_out(out, hook):
        for p in range(task.seq_len):
            if is_sender(hook.name, None, p):
                out[:, p] = clean[hook.name][:, p]
            elif not through_mlps:
                out[:, p] = corrupted[hook.name][:, p]
        return out

    run1 = [(f"blocks.{layer}.attn.hook_z", freeze_z) for layer in range(cfg.n_layers)] + [
        (f"blocks.{layer}.hook_mlp_out", mlp_out) for layer in range(cfg.n_layers)
    ]

    def score(logits):
        return float(metrics.logit_diff(logits, task.answer_tokens, task.wrong_tokens).mean())

    if receivers == "logits":
        return score(model.run_with_hooks(task.corrupted_tokens, fwd_hooks=run1))
    with model.hooks(fwd_hooks=run1):
        _, paths = model.run_with_cache(task.corrupted_tokens)

    def set_receiver(act, hook):
        for r in receivers:
            if r.hook_name == hook.name:
                act[r.index()] = paths[hook.name][r.index()]
        return act

    return score(
        model.run_with_hooks(task.corrupted_tokens, fwd_hooks=[(r.hook_name, set_receiver) for r in receivers])
    )


SENDERS = [
    Site(0, "z", head=1),
    Site(0, "z", head=3, position=4),
    Site(1, "z", head=0),
    Site(1, "z"),
    Site(0, "mlp_out"),
    Site(1, "mlp_out", position=5),
]
RECEIVERS = [Site(2, "q", head=1), Site(2, "k", head=0), Site(2, "v", head=1, position=5)]


@pytest.mark.parametrize("through_mlps", [True, False])
def test_paths_to_later_heads_match_the_slow_reference(tiny_task, through_mlps):
    ours = path_patch(tiny_task, SENDERS, RECEIVERS, through_mlps=through_mlps)
    for sender, value in zip(SENDERS, ours["metric"]):
        assert value == pytest.approx(slow_path_patch(tiny_task, sender, RECEIVERS, through_mlps), abs=1e-5), sender
    assert list(ours.layer) == [s.layer for s in SENDERS] and ours.receivers.str.contains("attn.hook_q").all()
    # The effect must not be trivially zero on this random model, or the comparison proves nothing.
    assert (ours["metric"] - tiny_task.corrupted_metric).abs().max() > 1e-3


def test_one_variant_per_batch_gives_the_same_numbers(tiny_task):
    batched = path_patch(tiny_task, SENDERS, RECEIVERS)
    one_by_one = path_patch(tiny_task, SENDERS, RECEIVERS, memory_budget=1)
    torch.testing.assert_close(
        torch.tensor(one_by_one.metric.to_numpy()), torch.tensor(batched.metric.to_numpy()), atol=1e-5, rtol=0
    )


def test_direct_path_to_logits_matches_the_closed_form(tiny_task):
    model, sender = tiny_task.model, Site(1, "z", head=2)
    ours = path_patch(tiny_task, [sender], "logits", through_mlps=False).metric.item()
    _, clean = model.run_with_cache(tiny_task.clean_tokens)
    _, corrupted = model.run_with_cache(tiny_task.corrupted_tokens)
    # Everything else frozen: the final residual moves by exactly the head's change through W_O.
    delta = (clean[sender.hook_name][:, -1, 2] - corrupted[sender.hook_name][:, -1, 2]) @ model.blocks[1].attn.W_O[2]
    resid = corrupted[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, -1] + delta
    logits = model.unembed(model.ln_final(resid[:, None]))[:, 0]
    expected = metrics.logit_diff(logits, tiny_task.answer_tokens, tiny_task.wrong_tokens).mean().item()
    assert ours == pytest.approx(expected, abs=1e-5)
    assert ours == pytest.approx(slow_path_patch(tiny_task, sender, "logits", through_mlps=False), abs=1e-5)


def test_paths_to_logits_through_mlps_match_the_slow_reference(tiny_task):
    ours = path_patch(tiny_task, SENDERS, "logits")
    for sender, value in zip(SENDERS, ours["metric"]):
        assert value == pytest.approx(slow_path_patch(tiny_task, sender, "logits", True), abs=1e-5), sender


def test_bad_senders_and_receivers_say_what_to_pass(tiny_task):
    with pytest.raises(InterpError, match="no path runs"):
        path_patch(tiny_task, [Site(2, "z", head=0)], [Site(2, "q", head=0)])
    with pytest.raises(UnknownSiteError, match="not a sender"):
        path_patch(tiny_task, [Site(0, "resid_post")], "logits")
    with pytest.raises(UnknownSiteError, match="not a receiver"):
        path_patch(tiny_task, [Site(0, "z", head=0)], [Site(2, "z", head=0)])
    with pytest.raises(InterpError, match="senders is empty"):
        path_patch(tiny_task, [], "logits")
    with pytest.raises(InterpError, match="receivers is empty"):
        path_patch(tiny_task, [Site(0, "z", head=0)], [])
    with pytest.raises(InterpError, match="memory_budget"):
        path_patch(tiny_task, [Site(0, "z", head=0)], "logits", memory_budget=0)
