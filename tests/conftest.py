"""Shared test problems: linear-regression tasks with closed forms, and a small float64 MLP."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import imaml
from imaml.bench.accuracy import quadratic

torch.set_num_threads(2)


@dataclass
class LinearTasks:
    """B linear-regression tasks with support (xs, ys) and query (xq, yq), in float64.

    For features ``z = [x, 1]`` the loss is ``½φᵀHφ − cᵀφ + const`` with ``H = ZᵀZ/n`` and
    ``c = Zᵀy/n``, so every quantity of the paper has a closed form.
    """

    theta: dict[str, Tensor]
    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        return self.xs, self.ys

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        return self.xq, self.yq

    @property
    def theta_vec(self) -> Tensor:
        return torch.cat([self.theta["w"], self.theta["b"].reshape(1)])

    quadratic = staticmethod(quadratic)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        return {"w": vec[:-1], "b": vec[-1]}

    def prox_solution(self, i: int, lam: float) -> Tensor:
        """φ* = argmin L_s(φ) + λ/2‖φ − θ‖² of task i, flattened."""
        h, c = self.quadratic(self.xs[i], self.ys[i])
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        return torch.linalg.solve(h + lam * eye, c + lam * self.theta_vec)

    def imaml_gradient(self, i: int, lam: float) -> Tensor:
        """(I + H/λ)⁻¹ ∇L_q(φ*) of task i, flattened: the exact implicit meta-gradient."""
        phi = self.prox_solution(i, lam)
        h, _ = self.quadratic(self.xs[i], self.ys[i])
        hq, cq = self.quadratic(self.xq[i], self.yq[i])
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        return torch.linalg.solve(eye + h / lam, hq @ phi - cq)

    def eigenvalues(self, i: int, lam: float) -> Tensor:
        """The eigenvalues of task i's I + H/λ, ascending."""
        h, _ = self.quadratic(self.xs[i], self.ys[i])
        return 1 + torch.linalg.eigvalsh(h) / lam

    def gd_path(self, i: int, lr: float, steps: int) -> tuple[Tensor, Tensor]:
        """(φ_K, dφ_K/dθ) after K plain GD steps on task i's support loss."""
        h, c = self.quadratic(self.xs[i], self.ys[i])
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        phi, jac = self.theta_vec.clone(), eye.clone()
        for _ in range(steps):
            phi = phi - lr * (h @ phi - c)
            jac = (eye - lr * h) @ jac
        return phi, jac

    def query_grad(self, i: int, phi: Tensor) -> Tensor:
        hq, cq = self.quadratic(self.xq[i], self.yq[i])
        return hq @ phi - cq


def make_linear_tasks(num_tasks: int = 4, dim: int = 4, n: int = 10, seed: int = 0) -> LinearTasks:
    g = torch.Generator().manual_seed(seed)

    def sample(size: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(num_tasks, size, dim, generator=g, dtype=torch.float64)
        w = torch.randn(num_tasks, dim, 1, generator=g, dtype=torch.float64)
        return x, (x @ w).squeeze(-1) + 0.1 * torch.randn(num_tasks, size, generator=g).double()

    xs, ys = sample(n)
    xq, yq = sample(2 * n)
    # Query targets come from the same task weights as support in real meta-learning; for the
    # closed-form checks any targets do, and independent ones exercise more of the algebra.
    theta = {
        "w": torch.randn(dim, generator=g, dtype=torch.float64),
        "b": torch.randn((), generator=g, dtype=torch.float64),
    }
    return LinearTasks(theta, xs, ys, xq, yq)


@pytest.fixture
def linear_tasks() -> LinearTasks:
    return make_linear_tasks()


def make_mlp(seed: int = 0, hidden: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()


def make_regression_batch(num_tasks: int = 3, n: int = 10, seed: int = 0) -> tuple[Tensor, ...]:
    """Sinusoid-like regression tasks (xs, ys, xq, yq) in float64."""
    g = torch.Generator().manual_seed(seed)
    amp = 0.5 + torch.rand(num_tasks, 1, 1, generator=g, dtype=torch.float64)
    phase = torch.rand(num_tasks, 1, 1, generator=g, dtype=torch.float64)
    xs = 4 * torch.rand(num_tasks, n, 1, generator=g, dtype=torch.float64) - 2
    xq = 4 * torch.rand(num_tasks, 2 * n, 1, generator=g, dtype=torch.float64) - 2
    return xs, amp * torch.sin(xs + phase), xq, amp * torch.sin(xq + phase)


@pytest.fixture
def mlp_problem():
    model = make_mlp()
    return imaml.regression_loss(model), dict(model.named_parameters()), make_regression_batch()


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """``$IMAML_DATA``, the folder holding ``omniglot/``; skips the test where it is absent."""
    data = os.environ.get("IMAML_DATA")
    if not data:
        pytest.skip("IMAML_DATA is not set: no Omniglot copy to train on")
    if not (Path(data) / "omniglot").is_dir():
        pytest.skip(f"IMAML_DATA={data} holds no omniglot/ folder")
    return Path(data)
