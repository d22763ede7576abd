"""Inner optimizers: approximate minimizers of one task's :class:`~imaml.objective.Objective`.

Every inner optimizer has the same signature, so they swap freely::

    optimizer(objective, init) -> params

``objective`` is one task's :class:`~imaml.objective.Objective` (the proximal iMAML objective,
or the plain loss for MAML and Reptile), ``init`` the starting parameters (θ), and the result
the adapted parameters φ, shaped like ``init``. Implementations run a fixed number of steps,
with no host synchronization and no data-dependent Python branches, so that they run under
``torch.func.vmap`` (one task each) and can be differentiated through (MAML).

To write your own, implement :class:`InnerOptimizer`; a plain function works too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from imaml import tree
from imaml.objective import Objective
from imaml.solvers import conjugate_gradient
from imaml.types import Params


class InnerOptimizer(Protocol):
    """Anything called as ``optimizer(objective, init) -> params``."""

    def __call__(self, objective: Objective, init: Params) -> Params: ...


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")


@dataclass(frozen=True)
class GD:
    """``steps`` steps of gradient descent ``φ ← φ − lr·∇f(φ)`` (the paper's iMAML-GD)."""

    steps: int
    lr: float

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        _check_positive("lr", self.lr)

    def __call__(self, objective: Objective, init: Params) -> Params:
        params = init
        for _ in range(self.steps):
            params = tree.axpy(-self.lr, objective.grad(params), params)
        return params


@dataclass(frozen=True)
class Adam:
    """``steps`` steps of Adam (Kingma & Ba) with bias correction, from fresh moments."""

    steps: int
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        _check_positive("lr", self.lr)
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")

    def __call__(self, objective: Objective, init: Params) -> Params:
        b1, b2 = self.betas
        params = init
        m = tree.zeros_like(init)
        v = tree.zeros_like(init)
        for t in range(1, self.steps + 1):
            g = objective.grad(params)
            m = tree.map_(lambda m_, g_: b1 * m_ + (1 - b1) * g_, m, g)
            v = tree.map_(lambda v_, g_: b2 * v_ + (1 - b2) * g_ * g_, v, g)
            params = tree.map_(
                functools.partial(
                    _adam_update, lr=self.lr * (1 - b2**t) ** 0.5 / (1 - b1**t), eps=self.eps
                ),
                params,
                m,
                v,
            )
        return params


def _adam_update(p: Tensor, m: Tensor, v: Tensor, *, lr: float, eps: float) -> Tensor:
    return p - lr * m / (_sqrt_zero_safe(v) + eps)


def _sqrt_zero_safe(v: Tensor) -> Tensor:
    """``sqrt(v)`` for ``v >= 0``, whose derivative at ``v = 0`` is 0 rather than inf.

    MAML differentiates through the inner Adam steps: where a gradient entry is exactly 0 (a
    dead ReLU unit), ``v = 0`` and ``d sqrt(v)`` is inf, times a zero ``dv``: NaN. The values
    are those of ``torch.sqrt``.
    """
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), 0.0)


@dataclass(frozen=True)
class HessianFree:
    """Truncated Newton-CG with a backtracking line search (the paper's iMAML-HF).

    Each of ``steps`` steps solves ``∇²f(φ) d = −∇f(φ)`` with ``cg_iters`` CG iterations
    (stopping at negative curvature; steepest descent if the very first direction has
    negative curvature), then takes ``φ ← φ + t·d`` for the largest
    ``t ∈ {1, decay, decay², …}`` (``ls_steps`` candidates) that satisfies the Armijo
    condition ``f(φ + t d) ≤ f(φ) + c·t·∇f(φ)ᵀd``, or no step if none does. All candidates
    are evaluated (forward passes only) and one is selected with masks, so the search has
    no host synchronization.
    """

    steps: int
    cg_iters: int = 5
    ls_steps: int = 10
    decay: float = 0.5
    armijo: float = 1e-4

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        if self.cg_iters < 1 or self.ls_steps < 1:
            raise ValueError("cg_iters and ls_steps must be >= 1")
        if not 0 < self.decay < 1:
            raise ValueError(f"decay must lie in (0, 1), got {self.decay}")
        if not 0 < self.armijo < 1:
            raise ValueError(f"armijo must lie in (0, 1), got {self.armijo}")

    def __call__(self, objective: Objective, init: Params) -> Params:
        params = init
        for _ in range(self.steps):
            value, g, hvp = objective.linearize(params)
            neg_g = tree.scale(g, -1.0)
            d = conjugate_gradient(hvp, neg_g, self.cg_iters, stop_on_negative_curvature=True).x
            # A zero direction means negative curvature at once: fall back to steepest descent.
            d = tree.where(tree.dot(d, d) > 0, d, neg_g)
            slope = tree.dot(g, d)
            chosen = torch.zeros_like(value)
            for j in reversed(range(self.ls_steps)):
                t = self.decay**j
                trial = objective.value(tree.axpy(t, d, params))
                accept = trial <= value + self.armijo * t * slope
                chosen = torch.where(accept, torch.full_like(chosen, t), chosen)
            params = tree.axpy(chosen, d, params)
        return params


OPTIMIZERS: dict[str, type[InnerOptimizer]] = {"gd": GD, "adam": Adam, "hf": HessianFree}
"""The inner optimizers a config names (``inner.optimizer``), name → class.

A config builds one from ``inner.steps``, ``inner.lr`` (where the class has an ``lr`` field)
and ``[inner.options]``, the class's other fields; registering a class here is all a new
optimizer needs to be reachable from a config.
"""
