"""imaml.objective: the proximal inner objective against closed forms and torch.func.hessian,
in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian

import imaml
from imaml import tree
from imaml.objective import Objective, check_scalar_loss

G = torch.Generator().manual_seed(0)
M = torch.randn(5, 5, generator=G, dtype=torch.float64)
A = M @ M.T + torch.eye(5, dtype=torch.float64)  # symmetric positive definite
B = torch.randn(5, generator=G, dtype=torch.float64)
PHI = {"u": torch.randn(2, generator=G, dtype=torch.float64)}
PHI["v"] = torch.randn(3, generator=G, dtype=torch.float64)
CENTER = {k: torch.randn(v.shape, generator=G, dtype=torch.float64) for k, v in PHI.items()}
V = {k: torch.randn(v.shape, generator=G, dtype=torch.float64) for k, v in PHI.items()}


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return tree.flatten(params)[0]


def quadratic(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """½ φᵀAφ − bᵀφ + sin(φ₀)·φ₁², φ = [u, v]: a quadratic plus a non-quadratic term."""
    x = flat(params)
    return 0.5 * x @ A @ x - B @ x + torch.sin(x[0]) * x[1] ** 2


def on_vector(objective: Objective):
    """The objective as a function of the flat vector [u, v]."""
    unflatten = tree.flatten(PHI)[1]
    return lambda x: objective.value(unflatten(x))


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_value_grad_and_hvp_against_closed_forms_and_hessian(lam: float) -> None:
    objective = Objective(quadratic, CENTER if lam else None, lam)
    x, c, v = flat(PHI), flat(CENTER), flat(V)
    value = quadratic(PHI) + 0.5 * lam * (x - c) @ (x - c)
    extra = torch.zeros(5, dtype=torch.float64)
    extra[0] = torch.cos(x[0]) * x[1] ** 2
    extra[1] = 2 * torch.sin(x[0]) * x[1]
    grad = A @ x - B + extra + lam * (x - c)
    hess = hessian(on_vector(objective))(x)

    torch.testing.assert_close(objective.value(PHI), value, rtol=1e-14, atol=0)
    f, g = objective.value_and_grad(PHI)
    torch.testing.assert_close(f, value, rtol=1e-14, atol=0)
    torch.testing.assert_close(flat(g), grad, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(flat(objective.grad(PHI)), grad, rtol=1e-13, atol=1e-14)
    f, g, hvp = objective.linearize(PHI)
    torch.testing.assert_close(f, value, rtol=1e-14, atol=0)
    torch.testing.assert_close(flat(g), grad, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(flat(hvp(V)), hess @ v, rtol=1e-13, atol=1e-14)
    # the proximal term adds λI to the Hessian: linearize's products are of the whole f
    plain = hessian(on_vector(Objective(quadratic)))(x)
    torch.testing.assert_close(hess, plain + lam * torch.eye(5, dtype=torch.float64))


def test_hessian_vector_product_matches_finite_differences(mlp_problem):
    loss_fn, params, (xs, ys, _, _) = mlp_problem
    phi = tree.detach(params)
    objective = imaml.Objective(lambda p: loss_fn(p, xs[0], ys[0]), center=phi, lam=0.7)
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in phi.items()}
    value, grad, hvp = objective.linearize(phi)
    eps = 1e-5
    _, g_plus = objective.value_and_grad(tree.axpy(eps, v, phi))
    _, g_minus = objective.value_and_grad(tree.axpy(-eps, v, phi))
    fd = tree.scale(tree.sub(g_plus, g_minus), 1 / (2 * eps))
    torch.testing.assert_close(flat(hvp(v)), flat(fd), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(value, objective.value(phi))
    torch.testing.assert_close(flat(grad), flat(objective.value_and_grad(phi)[1]))


def test_bad_objectives_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="lam must be >= 0"):
        Objective(quadratic, CENTER, -1.0)
    with pytest.raises(ValueError, match="needs a center"):
        Objective(quadratic, None, 0.5)


def test_check_scalar_loss_names_the_caller() -> None:
    loss = torch.tensor(1.5, dtype=torch.float64)
    assert check_scalar_loss(loss, "loss_fn") is loss
    with pytest.raises(ValueError, match=r"loss_fn must return a scalar .*got shape \(3,\)"):
        check_scalar_loss(torch.ones(3), "loss_fn")
    with pytest.raises(TypeError, match="loss_fn must return a tensor, got float"):
        check_scalar_loss(1.5, "loss_fn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"floating-point loss, got torch\.int64"):
        check_scalar_loss(torch.tensor(1), "loss_fn")
