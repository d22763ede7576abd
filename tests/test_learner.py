"""The model-level API (imaml.IMAML, MAML, Reptile) against the functional one, in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import imaml
from imaml.testing import make_mlp, make_regression_batch

INNER = imaml.GD(steps=4, lr=0.1)
SOLVER = imaml.CG(iters=4)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).to(logits.dtype).mean()


def make_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 3),
    ).double()


def classification_batch(num_tasks: int = 3, n: int = 6, seed: int = 0) -> tuple[Tensor, ...]:
    """(xs, ys, xq, yq): images (B, n, 1, 4, 4) float64 and labels (B, n) in [0, 3)."""
    g = torch.Generator().manual_seed(seed)
    xs, xq = (torch.randn(num_tasks, n, 1, 4, 4, generator=g, dtype=torch.float64) for _ in "sq")
    ys, yq = (torch.randint(0, 3, (num_tasks, n), generator=g) for _ in "sq")
    return xs, ys, xq, yq


def regression_problem():
    """An MLP, its loss, metrics (none), a regression meta-batch, the inner optimizer."""
    return make_mlp(), F.mse_loss, {}, make_regression_batch(), INNER


def classification_problem():
    """A tiny conv net with batch-statistics BatchNorm, cross-entropy and an accuracy metric
    (two inner steps: vmapped convolutions' second derivatives are slow on the CPU)."""
    batch = classification_batch()
    return make_conv(), F.cross_entropy, {"accuracy": accuracy}, batch, imaml.GD(2, 0.1)


PROBLEMS = pytest.mark.parametrize("problem", [regression_problem, classification_problem])


def functional_loss(model: nn.Module, loss, metrics):
    """The functional API's ``loss_fn(params, x, y)`` for the same model, loss and metrics."""

    def loss_fn(params, x, y):
        out = functional_call(model, params, (x,))
        if not metrics:
            return loss(out, y)
        return loss(out, y), {k: fn(out, y) for k, fn in metrics.items()}

    return loss_fn


def grads_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_trees_close(a: dict[str, Tensor], b: dict[str, Tensor], tol: float = 1e-12) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=tol, msg=k)


def learner_and_reference(kind: str, model, loss, metrics, inner):
    """A learner of ``kind`` and the functional call ``(params, xs, ys, xq, yq) -> (grads, info)``
    that it must equal."""
    loss_fn, aux = functional_loss(model, loss, metrics), bool(metrics)
    if kind == "imaml":
        learner = imaml.IMAML(model, loss, lam=2.0, inner=inner, solver=SOLVER, metrics=metrics)
        return learner, lambda p, xs, ys, xq, yq: imaml.meta_gradient(
            loss_fn, p, (xs, ys), (xq, yq), lam=2.0, inner=inner, solver=SOLVER, has_aux=aux
        )
    if kind in ("maml", "fomaml"):
        first = kind == "fomaml"
        learner = imaml.MAML(model, loss, inner=inner, first_order=first, metrics=metrics)
        return learner, lambda p, xs, ys, xq, yq: imaml.maml_gradient(
            loss_fn, p, (xs, ys), (xq, yq), inner=inner, first_order=first, has_aux=aux
        )
    learner = imaml.Reptile(model, loss, inner=inner, metrics=metrics)
    return learner, lambda p, xs, ys, xq, yq: imaml.reptile_gradient(
        loss_fn, p, (xs, ys), inner=inner, has_aux=aux
    )


@PROBLEMS
@pytest.mark.parametrize("kind", ["imaml", "maml", "fomaml", "reptile"])
def test_meta_backward_equals_functional_gradient(problem, kind):
    model, loss, metrics, (xs, ys, xq, yq), inner = problem()
    learner, reference = learner_and_reference(kind, model, loss, metrics, inner)
    expected, expected_info = reference(dict(model.named_parameters()), xs, ys, xq, yq)
    info = learner.meta_backward((xs, ys), (xq, yq))
    assert_trees_close(grads_of(model), expected)
    assert_trees_close(info, expected_info)
    if metrics and kind != "reptile":
        assert info["query_accuracy"].shape == (3,)


def test_maml_first_order_differs_from_second_order():
    """The two MAML learners compute different gradients (so the tests above tell them apart)."""
    model = make_mlp()
    xs, ys, xq, yq = make_regression_batch()
    grads = []
    for first_order in (False, True):
        model.zero_grad()
        imaml.MAML(model, F.mse_loss, inner=INNER, first_order=first_order).meta_backward(
            (xs, ys), (xq, yq)
        )
        grads.append(grads_of(model))
    assert max((grads[0][k] - grads[1][k]).abs().max() for k in grads[0]) > 1e-4


def test_meta_backward_accumulates_like_backward():
    model = make_mlp()
    xs, ys, xq, yq = make_regression_batch()
    learner = imaml.IMAML(model, F.mse_loss, lam=2.0, inner=INNER, solver=SOLVER)
    learner.meta_backward((xs, ys), (xq, yq))
    once = grads_of(model)
    learner.meta_backward((xs, ys), (xq, yq))
    assert_trees_close(grads_of(model), {k: 2 * v for k, v in once.items()})
    model.zero_grad()
    learner.meta_backward((xs, ys), (xq, yq))
    assert_trees_close(grads_of(model), once)


def test_frozen_parameters_get_no_gradient_and_stay_fixed():
    model = make_mlp()
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    xs, ys, xq, yq = make_regression_batch()
    learner = imaml.IMAML(model, F.mse_loss, lam=2.0, inner=INNER, solver=SOLVER)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert (
        sorted(learner.meta_parameters()) == sorted(trainable) == ["0.bias", "2.bias", "2.weight"]
    )
    # functional_call takes the frozen weight from the module: the reference θ omits it.
    expected, _ = imaml.meta_gradient(
        functional_loss(model, F.mse_loss, {}), trainable, (xs, ys), (xq, yq),
        lam=2.0, inner=INNER, solver=SOLVER,
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    learner.meta_backward((xs, ys), (xq, yq))
    assert model[0].weight.grad is None
    assert_trees_close({n: p.grad for n, p in trainable.items()}, expected)
    optimizer.step()
    assert torch.equal(model[0].weight, frozen)
    assert set(learner.adapt((xs, ys)).params) == set(trainable)


@PROBLEMS
@pytest.mark.parametrize("kind", ["imaml", "maml"])
def test_adapted_model_equals_functional_call_with_adapt(problem, kind):
    model, loss, metrics, (xs, ys, xq, _), inner = problem()
    learner, _ = learner_and_reference(kind, model, loss, metrics, inner)
    lam = 2.0 if kind == "imaml" else 0.0
    phi = imaml.adapt(
        functional_loss(model, loss, metrics), dict(model.named_parameters()), (xs, ys),
        lam=lam, inner=inner, has_aux=bool(metrics),
    )  # fmt: skip
    adapted = learner.adapt((xs, ys))
    assert len(adapted) == 3
    outputs = adapted(xq)
    for i in range(3):
        expected = functional_call(model, {k: v[i] for k, v in phi.items()}, (xq[i],))
        torch.testing.assert_close(outputs[i], expected, rtol=0, atol=1e-12)
        torch.testing.assert_close(adapted.task(i)(xq[i]), expected, rtol=0, atol=1e-12)
    assert adapted.task(0) is not model
    assert not torch.equal(outputs[0], model(xq[0]))  # adaptation changed something


def test_training_loop_with_adam_lowers_query_loss():
    """Twenty meta-steps of iMAML with torch.optim.Adam: held-out post-adaptation MSE falls."""
    model = make_mlp(hidden=16)
    learner = imaml.IMAML(model, F.mse_loss, lam=1.0, inner=imaml.GD(5, 0.1), solver=SOLVER)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    xs_t, ys_t, xq_t, yq_t = make_regression_batch(num_tasks=8, seed=99)

    def held_out_mse() -> float:
        with torch.no_grad():
            return F.mse_loss(learner.adapt((xs_t, ys_t))(xq_t), yq_t).item()

    before = held_out_mse()
    for step in range(20):
        xs, ys, xq, yq = make_regression_batch(num_tasks=4, seed=step)
        optimizer.zero_grad()
        info = learner.meta_backward((xs, ys), (xq, yq))
        optimizer.step()
    assert info["query_loss"].shape == (4,)
    assert held_out_mse() < 0.7 * before


@pytest.mark.parametrize(
    "support, query, match",
    [
        (torch.zeros(3, 5, 1), None, "support must be a pair"),
        ([torch.zeros(3, 5, 1)], None, "support must be a pair"),
        ((torch.zeros(3, 5, 1), "y"), None, "support must be a pair"),
        ((torch.zeros(3, 5, 1), torch.zeros(2, 5, 1)), None, "dim 0 must be the number of tasks"),
        ((torch.zeros(5), torch.zeros(5)), None, r"shape \(B tasks, N examples"),
        ("q", (torch.zeros(2, 5, 1),) * 2, "support must be a pair"),
        ((torch.zeros(3, 5, 1),) * 2, (torch.zeros(2, 5, 1),) * 2, "number of tasks"),
        ((torch.zeros(3, 5, 1),) * 2, None, "needs query sets"),
    ],
)
def test_bad_inputs_are_one_line_value_errors(support, query, match):
    learner = imaml.IMAML(make_mlp(), F.mse_loss, lam=2.0, inner=INNER, solver=SOLVER)
    with pytest.raises(ValueError, match=match) as error:
        learner.meta_backward(support, query)
    assert "\n" not in str(error.value)


def test_bad_models_and_adapted_inputs_are_one_line_errors():
    xs, ys, xq, _ = make_regression_batch()
    frozen = make_mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad=True"):
        imaml.MAML(frozen, F.mse_loss, inner=INNER)
    with pytest.raises(ValueError, match="lam"):
        imaml.IMAML(make_mlp(), F.mse_loss, lam=0.0, inner=INNER, solver=SOLVER)
    running = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double()
    with pytest.raises(ValueError, match="track_running_stats=False"):
        imaml.Reptile(running, F.mse_loss, inner=INNER).meta_backward((xs, ys))
    running.eval()  # fixed running statistics are fine
    imaml.Reptile(running, F.mse_loss, inner=INNER).meta_backward((xs, ys))
    adapted = imaml.Reptile(make_mlp(), F.mse_loss, inner=INNER).adapt((xs, ys))
    with pytest.raises(ValueError, match="leading task dimension of 3"):
        adapted(xq[:2])
    with pytest.raises(IndexError, match="out of range"):
        adapted.task(3)


def test_top_level_names():
    """``import imaml`` alone gives the subpackages and the common names."""
    assert imaml.data.Omniglot and imaml.data.Sinusoid and imaml.models.Conv4
    assert imaml.inner.GD is imaml.GD and imaml.inner.Adam is imaml.Adam
    assert imaml.inner.HessianFree is imaml.HessianFree
    for name in ("CG", "MINRES", "Neumann", "Dense"):
        assert getattr(imaml, name) is getattr(imaml.solvers, name)
    for name in imaml.__all__:
        assert hasattr(imaml, name), name
    assert {"IMAML", "MAML", "Reptile", "meta_gradient", "adapt"} <= set(imaml.__all__)
