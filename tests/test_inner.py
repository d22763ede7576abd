"""Inner optimizers: each solves a convex proximal problem, and the protocol takes user code."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import imaml
from imaml import tree
from imaml.inner import GD, Adam, HessianFree
from imaml.objective import Objective
from imaml.testing import linear_loss


def logistic_problem(seed: int = 0):
    """A convex proximal objective: logistic regression plus (λ/2)‖φ − θ‖²."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(5, generator=g, dtype=torch.float64) > 0).double()
    theta = {
        "w": torch.randn(5, generator=g, dtype=torch.float64),
        "b": torch.zeros((), dtype=torch.float64),
    }

    def loss(p):
        return F.binary_cross_entropy_with_logits(x @ p["w"] + p["b"], y)

    return Objective(loss, theta, lam=0.5), theta


@pytest.mark.parametrize(
    "optimizer",
    [GD(steps=200, lr=0.5), Adam(steps=300, lr=0.05), HessianFree(steps=6, cg_iters=6)],
    ids=["gd", "adam", "hf"],
)
def test_inner_optimizer_drives_gradient_norm_down(optimizer):
    objective, theta = logistic_problem()
    start = tree.norm(objective.value_and_grad(theta)[1])
    phi = optimizer(objective, theta)
    value, g = objective.value_and_grad(phi)
    assert tree.norm(g) < 1e-4 * start
    assert value < objective.value(theta)


def test_hessian_free_line_search_never_increases_the_objective():
    objective, theta = logistic_problem(seed=1)
    values = [objective.value(theta)]
    phi = theta
    for _ in range(5):
        phi = HessianFree(steps=1, cg_iters=2, ls_steps=4)(objective, phi)
        values.append(objective.value(phi))
    assert all(b <= a for a, b in itertools.pairwise(values))


def test_hessian_free_handles_negative_curvature():
    # cos(x) + x⁴/10 per coordinate is concave near 0, where it starts: the first CG
    # direction has negative curvature. Its minima lie at |x| ≈ 1.3457 (f ≈ 0.551 each).
    def loss(p):
        return torch.cos(p["x"]).sum() + 0.1 * (p["x"] ** 4).sum()

    objective = Objective(loss)
    start = {"x": torch.tensor([0.1, -0.2], dtype=torch.float64)}
    phi = HessianFree(steps=10, cg_iters=2)(objective, start)
    torch.testing.assert_close(
        phi["x"].abs(), torch.full((2,), 1.3457, dtype=torch.float64), atol=1e-4, rtol=0
    )
    assert tree.norm(objective.value_and_grad(phi)[1]) < 1e-6


def test_zero_steps_returns_the_start():
    objective, theta = logistic_problem()
    for optimizer in (GD(0, 0.1), Adam(0, 0.1), HessianFree(0)):
        assert optimizer(objective, theta) is theta


def test_user_defined_inner_optimizer_plugs_in(linear_tasks):
    def momentum_gd(objective, init):
        params, velocity = init, tree.zeros_like(init)
        for _ in range(200):
            _, g = objective.value_and_grad(params)
            velocity = tree.axpy(0.5, velocity, g)
            params = tree.axpy(-0.1, velocity, params)
        return params

    grads, info = imaml.meta_gradient(
        linear_loss,
        linear_tasks.theta,
        linear_tasks.support,
        linear_tasks.query,
        lam=2.0,
        inner=momentum_gd,
        solver=imaml.solvers.Dense(),
    )
    expected = torch.stack([linear_tasks.imaml_gradient(i, 2.0) for i in range(4)]).mean(0)
    torch.testing.assert_close(tree.flatten(grads)[0], expected, rtol=1e-6, atol=1e-9)
    assert torch.all(info["inner_grad_norm"] < 1e-8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GD(-1, 0.1),
        lambda: GD(1, 0.0),
        lambda: Adam(1, -0.1),
        lambda: HessianFree(1, cg_iters=0),
    ],
)
def test_bad_settings_are_rejected(make):
    with pytest.raises(ValueError):
        make()
