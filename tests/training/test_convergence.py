"""inner_progress against the closed forms of linear least squares."""

from __future__ import annotations

import pytest
import torch

import imaml
from imaml.data import TaskBatch
from imaml.testing import LinearTasks, linear_loss
from imaml.training import Adaptation, Problem, inner_progress


def test_inner_progress_measures_the_distance_to_the_proximal_minimizer(
    linear_tasks: LinearTasks,
) -> None:
    """Linear least squares, where φ* = (H + λI)⁻¹(c + λθ) in closed form."""
    lam, t = 0.7, linear_tasks
    tasks = TaskBatch(t.xs, t.ys, t.xq, t.yq)
    b = tasks.xs.shape[0]
    problem = Problem(torch.nn.Identity(), linear_loss, has_aux=False, metric="mse")
    theta = t.theta_vec
    phi = torch.stack([t.prox_solution(i, lam) for i in range(b)])
    grad0 = torch.stack([h @ theta - c for h, c in map(t.quadratic, tasks.xs, tasks.ys)])

    start = inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(0, 0.1), lam))
    assert torch.equal(start.distance, torch.zeros(b))
    torch.testing.assert_close(start.grad_norm, grad0.norm(dim=-1))
    torch.testing.assert_close(start.objective, start.support_loss)
    # ∇²f = H + λI everywhere; Lanczos over all n dimensions finds its extreme eigenvalues
    n = theta.numel()
    exact = inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(0, 0.1), lam), n)
    eigenvalues = lam * torch.stack([t.eigenvalues(i, lam) for i in range(b)])
    torch.testing.assert_close(exact.min_curvature, eigenvalues[:, 0])
    torch.testing.assert_close(exact.max_curvature, eigenvalues[:, -1])
    assert torch.all(start.max_curvature <= eigenvalues[:, -1] + 1e-9)  # a Ritz value

    end = inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(2000, 0.1), lam))
    torch.testing.assert_close(end.distance, (phi - theta).norm(dim=-1))
    assert end.grad_norm.max() < 1e-10
    query = torch.stack([linear_loss(t.unflatten(phi[i]), t.xq[i], t.yq[i]) for i in range(b)])
    torch.testing.assert_close(end.query_metric, query)
    torch.testing.assert_close(
        end.objective, end.support_loss + 0.5 * lam * (phi - theta).pow(2).sum(-1)
    )


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
def test_inner_progress_rejects_a_bad_lam(linear_tasks: LinearTasks, lam: float) -> None:
    t = linear_tasks
    problem = Problem(torch.nn.Identity(), linear_loss, has_aux=False, metric="mse")
    tasks = TaskBatch(t.xs, t.ys, t.xq, t.yq)
    with pytest.raises(ValueError, match=r"lam .* positive finite number or 0"):
        inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(1, 0.1), lam))
