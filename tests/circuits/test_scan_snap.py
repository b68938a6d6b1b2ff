"""Scan and snap: data, batched SGD, the ODEs and the measures, each against an independent computation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.integrate import solve_ivp

from circuits.scan_snap.data import SequenceClasses, layout_for, run_generators, sample_batch
from circuits.scan_snap.dynamics import (
    PopulationProblem,
    integrate_population,
    limit_composition,
    population_rhs,
    snap_dynamics,
)
from circuits.scan_snap.measures import distinct_entropy, kendall_tau_distinct, theorem3_frame
from circuits.scan_snap.model import RunSpec, TrainSettings, scan_snap_logits, train_runs
from circuits.scan_snap.transformer import TransformerSettings, build_attention_transformer
from interp.errors import InterpError

SMALL = SequenceClasses(n_queries=2, next_per_query=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only waits on the other processes sharing the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_hot_logits(Y, Z, context, query, vocab_mask):
    """The paper's model written with one-hot matrices, position by position (the slow, obvious way)."""
    X = F.one_hot(context, Y.shape[-1]).float()  # batch ctx vocab
    attention = torch.softmax(torch.einsum("btv,bv->bt", X, Z[query]), dim=-1)
    pooled = torch.einsum("bt,btv->bv", attention, X)
    f = pooled / pooled.norm(dim=-1, keepdim=True)
    return (f @ Y).masked_fill(~vocab_mask, float("-inf"))


def test_sampling_matches_the_class_distributions():
    spec = SequenceClasses(n_queries=3, next_per_query=2)
    layout = layout_for([spec])
    batch = sample_batch(layout, spec, run_generators([0]), torch.tensor([spec.n_classes]), 512, 201)
    counts = layout.slot_counts(batch.context[0]).sum(0)
    expected = spec.slot_weights() / spec.slot_weights().sum() * batch.context.numel()
    assert ((counts.double() - expected).abs() < 4 * expected.sqrt()).all()  # within 4 binomial standard deviations
    assert set(batch.classes.unique().tolist()) == set(range(spec.n_classes))
    for k in range(spec.n_classes):  # distinct tokens only ever come from their own class
        rows = batch.context[0][batch.classes[0] == k]
        distinct = rows[rows >= layout.n_common]
        assert ((distinct - layout.n_common) // layout.n_distinct == k).all()
        assert (batch.query[0][batch.classes[0] == k] == layout.query_offset + k // 2).all()
        assert (batch.label[0][batch.classes[0] == k] == layout.next_offset + k).all()


def test_logits_match_the_one_hot_model():
    specs = [SequenceClasses(n_queries=1, next_per_query=2), SequenceClasses(n_queries=3, next_per_query=2)]
    layout = layout_for(specs)
    torch.manual_seed(0)
    Y, Z = torch.randn(2, layout.d_vocab, layout.d_vocab), torch.randn(2, layout.max_queries, layout.d_vocab)
    generators = run_generators([3, 4])
    batch = sample_batch(layout, specs[1], generators, torch.tensor([2, 6]), 16, 33)
    mask = torch.stack([layout.vocab_mask(s) for s in specs])
    fast = scan_snap_logits(Y, Z, layout.slot_counts(batch.context), batch.classes, layout, mask)
    full_Z = torch.zeros(2, layout.d_vocab, layout.d_vocab)
    full_Z[:, layout.query_offset : layout.query_offset + layout.max_queries] = Z
    for r in range(2):
        slow = one_hot_logits(Y[r], full_Z[r], batch.context[r], batch.query[r], mask[r])
        assert torch.allclose(fast[r][mask[r].expand_as(slow)], slow[mask[r].expand_as(slow)], atol=1e-5)


def test_batched_sgd_equals_torch_optim_sgd_per_run():
    """Two optimisers per run (torch.optim.SGD with momentum) on the one-hot model, run by run."""
    spec = SequenceClasses(n_queries=2, next_per_query=2)
    runs = [RunSpec(spec, 5, 2.0, 0.5), RunSpec(spec, 6, 1.0, 3.0)]
    settings = TrainSettings(steps=3, batch_size=8, seq_len=17, init="uniform", momentum=0.9)
    trained = train_runs(runs, settings)
    layout = layout_for([spec])
    mask = layout.vocab_mask(spec)
    for r, run in enumerate(runs):
        generator = run_generators([run.seed])[0]
        bound = 1 / math.sqrt(layout.d_vocab)  # nn.Linear's default init for fan_in = vocabulary size
        Y = torch.nn.Parameter((torch.rand(layout.d_vocab, layout.d_vocab, generator=generator) * 2 - 1) * bound)
        Z = torch.zeros(layout.d_vocab, layout.d_vocab)
        Z[layout.query_offset : layout.query_offset + layout.max_queries] = (
            torch.rand(layout.max_queries, layout.d_vocab, generator=generator) * 2 - 1
        ) * bound
        Z = torch.nn.Parameter(Z)
        generators = [generator]
        opt_y = torch.optim.SGD([Y], lr=run.eta_y, momentum=0.9)
        opt_z = torch.optim.SGD([Z], lr=run.eta_z, momentum=0.9)
        for _ in range(settings.steps):
            batch = sample_batch(
                layout, spec, generators, torch.tensor([spec.n_classes]), settings.batch_size, settings.seq_len
            )
            loss = F.cross_entropy(one_hot_logits(Y, Z, batch.context[0], batch.query[0], mask), batch.label[0])
            opt_y.zero_grad(), opt_z.zero_grad()
            loss.backward()
            opt_y.step(), opt_z.step()
        assert torch.allclose(trained.Y[r], Y.detach(), atol=1e-5)
        assert torch.allclose(
            trained.Z[r], Z.detach()[layout.query_offset : layout.query_offset + layout.max_queries], atol=1e-5
        )


def test_a_run_trains_the_same_alone_or_inside_a_mixed_batch():
    runs = [
        RunSpec(SequenceClasses(n_queries=q, next_per_query=2), seed, 2.0 * eta, eta)
        for q, seed, eta in ((1, 0, 1.0), (3, 0, 0.5), (3, 1, 2.0))
    ]
    settings = TrainSettings(steps=4, batch_size=16, seq_len=33, init="uniform", momentum=0.9)
    together = train_runs(runs, settings)
    for r, run in enumerate(runs):
        alone = train_runs([run], settings)
        owned = together.layout.vocab_mask(run.classes).nonzero().flatten()  # the compact layout, in the same order
        assert torch.allclose(together.loss[:, r], alone.loss[:, 0], atol=1e-6)
        assert torch.allclose(together.Y[r][owned][:, owned], alone.Y[0], atol=1e-6)
        assert torch.allclose(together.Z[r, : run.classes.n_queries][:, owned], alone.Z[0], atol=1e-6)


def test_population_flow_is_the_gradient_of_the_long_sequence_loss():
    """With integer weights, a context holding each token weight-many times makes X^T b equal c_n exactly."""
    spec = SequenceClasses(
        n_queries=2, next_per_query=2, n_common=3, n_distinct=4, common_weight=2.0, distinct_weight_range=(1.0, 4.0)
    )
    layout = layout_for([spec])
    torch.manual_seed(1)
    Y = (0.3 * torch.randn(1, layout.d_vocab, layout.d_vocab)).requires_grad_()
    Z = (0.5 * torch.randn(1, layout.max_queries, layout.d_vocab)).requires_grad_()
    counts = spec.slot_weights().float().expand(1, spec.n_classes, -1)
    classes = torch.arange(spec.n_classes).view(1, -1)
    mask = layout.vocab_mask(spec).view(1, -1)
    logits = scan_snap_logits(Y, Z, counts, classes, layout, mask)
    loss = F.cross_entropy(logits[0], layout.next_of_class(classes[0]))
    grad_y, grad_z = torch.autograd.grad(loss, (Y, Z))
    probs = layout.conditional_probs(spec).float().unsqueeze(0)
    problem = PopulationProblem(
        layout,
        probs,
        torch.full((1, spec.n_classes), 1 / spec.n_classes),
        mask,
        torch.tensor([2.0]),
        torch.tensor([0.7]),
    )
    dY, dZ = population_rhs(Y.detach(), Z.detach(), problem)
    assert torch.allclose(dY, -2.0 * grad_y, atol=1e-6)
    assert torch.allclose(dZ, -0.7 * grad_z, atol=1e-6)


def test_rk4_matches_an_adaptive_solver():
    """integrate_population's fixed-step RK4 against scipy's adaptive solver on the same right-hand side."""
    spec = SequenceClasses(n_queries=1, next_per_query=2, n_common=2, n_distinct=3)
    layout = layout_for([spec])
    mask = layout.vocab_mask(spec).view(1, -1)
    problem = PopulationProblem(
        layout,
        layout.conditional_probs(spec).unsqueeze(0),
        torch.full((1, 2), 0.5, dtype=torch.float64),
        mask,
        torch.tensor([3.0], dtype=torch.float64),
        torch.tensor([2.0], dtype=torch.float64),
    )
    Y0, Z0 = (
        torch.zeros(1, layout.d_vocab, layout.d_vocab, dtype=torch.float64),
        torch.zeros(1, 1, layout.d_vocab, dtype=torch.float64),
    )
    trajectory = integrate_population(Y0, Z0, problem, 10, substeps=8)
    n_y = Y0.numel()

    def rhs(_t, state):
        dY, dZ = population_rhs(
            torch.from_numpy(state[:n_y]).view_as(Y0), torch.from_numpy(state[n_y:]).view_as(Z0), problem
        )
        return np.concatenate([dY.flatten().numpy(), dZ.flatten().numpy()])

    reference = solve_ivp(rhs, (0, 10), np.zeros(n_y + Z0.numel()), rtol=1e-10, atol=1e-12, method="DOP853").y[:, -1]
    assert np.allclose(trajectory.Y.flatten().numpy(), reference[:n_y], atol=1e-6)
    assert np.allclose(trajectory.Z.flatten().numpy(), reference[n_y:], atol=1e-6)
    assert trajectory.Z.abs().max() > 0.01  # attention did move


def test_snap_dynamics_decoder_scale_has_the_closed_form():
    """dh/dt = (eta_Y/K) M / (M - 1 + e^h), h(0) = 0  =>  (M - 1) h + e^h - 1 = eta_Y M t / K."""
    classes = SequenceClasses(n_queries=10)
    trajectory = snap_dynamics(classes, 1000, 2.0, 0.5, 5000.0, n_times=200)
    lhs = 999 * trajectory.h + np.exp(trajectory.h) - 1
    assert np.allclose(lhs, 2.0 * 1000 * trajectory.t / 10, rtol=1e-6)
    assert trajectory.snap_time == pytest.approx(10 * math.log(1000) / 2.0)
    assert np.all(np.diff(trajectory.z[:, classes.n_common :], axis=0) >= -1e-12)  # distinct logits only grow
    assert np.all(np.diff(trajectory.z[:, : classes.n_common], axis=0) <= 1e-12)  # common logits only fall


def test_theorem3_bounds_hold_along_the_reduced_ode():
    trajectory = snap_dynamics(SequenceClasses(n_queries=4), 50, 1.0, 3.0, 3000.0, n_times=300)
    frame = theorem3_frame(trajectory.f**2, trajectory.B, trajectory.t, 10)
    assert frame["holds"].all()
    assert (frame.groupby("distinct_rank")["r"].last() > frame.groupby("distinct_rank")["r"].first()).all()


def test_measures_against_hand_computations():
    layout = layout_for([SMALL])
    uniform = torch.cat([torch.full((10,), 0.05), torch.full((10,), 0.05)])
    assert float(distinct_entropy(uniform, layout)) == pytest.approx(math.log(10))
    increasing = torch.cat([torch.zeros(10), torch.linspace(0.01, 0.1, 10)]).view(1, -1)
    assert kendall_tau_distinct(increasing, layout) == pytest.approx(1.0)
    decreasing = torch.cat([torch.zeros(10), torch.linspace(0.1, 0.01, 10)]).view(1, -1)
    assert kendall_tau_distinct(decreasing, layout) == pytest.approx(-1.0)
    z = torch.tensor([[0.0, 1.0, 2.0]])
    p = torch.tensor([[0.5, 0.0, 0.5]])
    expected = torch.tensor([[0.5, 0.0, 0.5 * math.e**2]]) / (0.5 + 0.5 * math.e**2)
    assert torch.allclose(limit_composition(z, p), expected)


def test_transformer_sees_no_position():
    model = build_attention_transformer(30, 16, TransformerSettings(d_model=16))
    assert not model.pos_embed.W_pos.requires_grad and (model.pos_embed.W_pos == 0).all()
    torch.manual_seed(0)
    tokens = torch.randint(0, 30, (4, 16))
    shuffled = torch.cat([tokens[:, torch.randperm(15)], tokens[:, -1:]], dim=-1)
    assert torch.allclose(model(tokens)[:, -1], model(shuffled)[:, -1], atol=1e-5)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: SequenceClasses(n_queries=0), "n_queries=0"),
        (lambda: SequenceClasses(distinct_weight_range=(0.0, 1.0)), "distinct_weight_range"),
        (lambda: TrainSettings(init="normal"), "init='normal'"),
        (lambda: TrainSettings(momentum=1.0), "momentum=1.0"),
        (lambda: train_runs([]), "runs=[]"),
        (lambda: layout_for([SMALL, SequenceClasses(n_common=3)]), "differ in more than n_queries"),
        (lambda: sample_batch(layout_for([SMALL]), SMALL, run_generators([0]), torch.tensor([2]), 4, 1), "seq_len=1"),
        (lambda: snap_dynamics(SequenceClasses(n_queries=1), 1000, 1.0, 1.0, 100.0), "n_classes=1"),
        (lambda: TransformerSettings(lr=0.0), "lr=0.0"),
    ],
)
def test_bad_input_gets_a_clear_error(make, fragment):
    with pytest.raises(
        InterpError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        make()
