"""Reference problems for the tests and the benchmarks: small tasks whose answers are known.

- :class:`LinearTasks`: linear-regression tasks in float64, where the loss is quadratic
  (:func:`quadratic`) and every quantity of the paper has a closed form: the proximal inner
  solution φ*, the exact implicit meta-gradient, the eigenvalues of ``I + H/λ``, the path of
  plain gradient descent and its Jacobian. :func:`make_linear_tasks` samples the tests'
  small problem, :func:`spread_linear_tasks` the accuracy benchmark's ill-conditioned one.
- :func:`make_mlp` and :func:`make_regression_batch`: a float64 tanh MLP on sinusoid-like
  regression tasks, a non-quadratic problem small enough for finite differences.

Nothing here depends on pytest: the test suite's fixtures (``tests/conftest.py``) and the
scripts in ``benchmarks/`` import these functions alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from imaml.types import Params


def linear_loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Half mean squared error of ``x @ w + b`` on one task: x (n, d), y (n,), a 0-d loss."""
    return 0.5 * torch.mean((x @ params["w"] + params["b"] - y) ** 2)


def quadratic(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(H, c)`` with :func:`linear_loss` ``= ½φᵀHφ − cᵀφ + const`` in ``φ = [w, b]``.

    ``x`` (..., n, d) and ``y`` (..., n) give H of shape (..., d+1, d+1) and c of (..., d+1);
    leading dimensions (tasks) batch.
    """
    z = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)
    n = x.shape[-2]
    return z.mT @ z / n, (z.mT @ y.unsqueeze(-1)).squeeze(-1) / n


@dataclass(frozen=True)
class LinearTasks:
    """B linear-regression tasks for :func:`linear_loss`, in float64.

    θ is ``{"w": (d,), "b": ()}``; the support set is ``xs`` (B, n, d), ``ys`` (B, n), the
    query set ``xq`` (B, m, d), ``yq`` (B, m). With features ``z = [x, 1]`` each task's loss is
    ``½φᵀHφ − cᵀφ + const``, ``H = ZᵀZ/n`` and ``c = Zᵀy/n`` (:func:`quadratic`). Methods
    taking ``i`` answer for task i with parameters flattened as ``[w, b]`` (shape (d+1,)).
    """

    theta: dict[str, Tensor]
    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor

    quadratic = staticmethod(quadratic)

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        """``(xs, ys)``, the support split of all tasks."""
        return self.xs, self.ys

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        """``(xq, yq)``, the query split of all tasks."""
        return self.xq, self.yq

    @property
    def theta_vec(self) -> Tensor:
        """θ flattened as ``[w, b]``, shape (d+1,)."""
        return torch.cat([self.theta["w"], self.theta["b"].reshape(1)])

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """``[w, b]`` of shape (d+1,) back to ``{"w": (d,), "b": ()}``."""
        return {"w": vec[:-1], "b": vec[-1]}

    def prox_solution(self, i: int, lam: float) -> Tensor:
        """φ* = argmin L_s(φ) + λ/2‖φ − θ‖² of task i: ``(H + λI)⁻¹(c + λθ)``."""
        h, c = quadratic(self.xs[i], self.ys[i])
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        return torch.linalg.solve(h + lam * eye, c + lam * self.theta_vec)

    def imaml_gradient(self, i: int, lam: float) -> Tensor:
        """(I + H/λ)⁻¹ ∇L_q(φ*) of task i: the exact implicit meta-gradient."""
        h, _ = quadratic(self.xs[i], self.ys[i])
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        return torch.linalg.solve(eye + h / lam, self.query_grad(i, self.prox_solution(i, lam)))

    def exact_meta_gradient(self, lam: float) -> Tensor:
        """The mean of :meth:`imaml_gradient` over the B tasks, shape (d+1,)."""
        return torch.stack([self.imaml_gradient(i, lam) for i in range(len(self.xs))]).mean(0)

    def eigenvalues(self, i: int, lam: float) -> Tensor:
        """The eigenvalues of task i's I + H/λ, ascending, shape (d+1,)."""
        h, _ = quadratic(self.xs[i], self.ys[i])
        return 1 + torch.linalg.eigvalsh(h) / lam

    def gd_path(self, i: int, lr: float, steps: int) -> tuple[Tensor, Tensor]:
        """``(φ_K, dφ_K/dθ)``, shapes (d+1,) and (d+1, d+1), after K plain GD steps from θ on
        task i's support loss."""
        h, c = quadratic(self.xs[i], self.ys[i])
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        phi, jac = self.theta_vec.clone(), eye.clone()
        for _ in range(steps):
            phi = phi - lr * (h @ phi - c)
            jac = (eye - lr * h) @ jac
        return phi, jac

    def query_grad(self, i: int, phi: Tensor) -> Tensor:
        """∇L_q(φ) of task i at a flattened φ (d+1,): ``H_q φ − c_q``."""
        hq, cq = quadratic(self.xq[i], self.yq[i])
        return hq @ phi - cq


def make_linear_tasks(num_tasks: int = 4, dim: int = 4, n: int = 10, seed: int = 0) -> LinearTasks:
    """The tests' problem: ``num_tasks`` tasks, ``dim`` standard-normal features, ``n`` support
    and ``2n`` query points; query targets from weights of their own (any targets suit the
    closed-form checks, and independent ones exercise more of the algebra)."""
    g = torch.Generator().manual_seed(seed)

    def sample(size: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(num_tasks, size, dim, generator=g, dtype=torch.float64)
        w = torch.randn(num_tasks, dim, 1, generator=g, dtype=torch.float64)
        return x, (x @ w).squeeze(-1) + 0.1 * torch.randn(num_tasks, size, generator=g).double()

    xs, ys = sample(n)
    xq, yq = sample(2 * n)
    theta = {
        "w": torch.randn(dim, generator=g, dtype=torch.float64),
        "b": torch.randn((), generator=g, dtype=torch.float64),
    }
    return LinearTasks(theta, xs, ys, xq, yq)


def spread_linear_tasks(
    tasks: int, dim: int, support: int, query: int, seed: int = 0
) -> LinearTasks:
    """The accuracy benchmark's problem: features with scales spread over 1.5 decades
    (κ(I + H/λ) ≈ 13 at 40 features and λ = 1), ``support`` and ``query`` points a task."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 0.5, dim, dtype=torch.float64)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(tasks, n, dim, generator=g, dtype=torch.float64) * scales
        w = torch.randn(tasks, dim, generator=g, dtype=torch.float64)
        noise = 0.1 * torch.randn(tasks, n, generator=g, dtype=torch.float64)
        return x, torch.einsum("bnd,bd->bn", x, w) + noise

    (xs, ys), (xq, yq) = sample(support), sample(query)
    theta = {
        "w": torch.randn(dim, generator=g, dtype=torch.float64),
        "b": torch.randn((), generator=g, dtype=torch.float64),
    }
    return LinearTasks(theta, xs, ys, xq, yq)


def make_mlp(seed: int = 0, hidden: int = 8) -> nn.Module:
    """A float64 MLP 1 → ``hidden`` (tanh) → 1, initialized from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()


def make_regression_batch(num_tasks: int = 3, n: int = 10, seed: int = 0) -> tuple[Tensor, ...]:
    """Sinusoid-like regression tasks ``(xs, ys, xq, yq)`` in float64: xs, ys (B, n, 1) and
    xq, yq (B, 2n, 1), inputs in [-2, 2], amplitudes in [0.5, 1.5], phases in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + torch.rand(num_tasks, 1, 1, generator=g, dtype=torch.float64)
    phase = torch.rand(num_tasks, 1, 1, generator=g, dtype=torch.float64)
    xs = 4 * torch.rand(num_tasks, n, 1, generator=g, dtype=torch.float64) - 2
    xq = 4 * torch.rand(num_tasks, 2 * n, 1, generator=g, dtype=torch.float64) - 2
    return xs, amp * torch.sin(xs + phase), xq, amp * torch.sin(xq + phase)
