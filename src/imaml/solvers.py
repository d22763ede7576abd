"""Linear solvers for ``A x = b`` from matrix-vector products only.

Every solver has the same signature, so they swap freely::

    solver(matvec, b) -> Solution(x, residual)

``matvec`` maps a parameter dict to a parameter dict (``v ↦ A v``), ``b`` is a parameter dict,
and ``residual`` is the 0-d tensor ``‖A x − b‖ / ‖b‖``. Solvers run a fixed number of
iterations with masked updates and no host synchronization, so they run under
``torch.func.vmap`` (one system per task) and on the GPU without stalls.

The numerical algorithms (:func:`conjugate_gradient`, :func:`minres`, :func:`neumann_series`,
:func:`dense_solve`) are separate from the policy objects (:class:`CG`, :class:`MINRES`,
:class:`Neumann`, :class:`Dense`) that the meta-gradient takes. ``I + H/λ`` is symmetric but,
for a non-convex support loss and a small λ, not always positive definite: CG may then diverge
(residual above 1), MINRES may not. :func:`lanczos_extremes` bounds the extreme eigenvalues
of ``A`` from the Lanczos process of MINRES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.func import vmap

from imaml import tree
from imaml.types import MatVec, Params

"""``v ↦ A v`` for a linear operator A on parameter dicts."""

_TINY = 1e-30


class Solution(NamedTuple):
    """A solver's answer: ``x`` shaped like ``b``, the relative residual ``‖Ax − b‖/‖b‖``,
    and optionally ``min_curvature`` and ``max_curvature``, the smallest and largest
    ``vᵀAv/vᵀv`` the solver found (0-d).

    ``min_curvature`` is an upper bound on the smallest eigenvalue of ``A``: a negative value
    proves ``A`` indefinite (CG is then unreliable; for ``I + H/λ``, raise λ or use MINRES).
    ``max_curvature`` is a lower bound on the largest: for ``A = I + H/λ`` the Hessian of the
    proximal inner objective is ``λA``, so gradient descent with step ``lr`` cannot converge
    to that point when ``lr·λ·max_curvature > 2``. CG and MINRES report the extreme Ritz
    values of their Krylov space (eigenvalues of the Lanczos matrix they build anyway: no
    extra matvec, no host sync), Dense the exact values; None where a solver does not
    estimate them.
    """

    x: Params
    residual: Tensor
    min_curvature: Tensor | None = None
    max_curvature: Tensor | None = None


class LinearSolver(Protocol):
    """Anything called as ``solver(matvec, b) -> Solution``; implement this for your own."""

    def __call__(self, matvec: MatVec, b: Params) -> Solution: ...


def _relative(residual_sq: Tensor, b_sq: Tensor) -> Tensor:
    return torch.sqrt(residual_sq / torch.clamp(b_sq, min=_TINY))


def conjugate_gradient(
    matvec: MatVec,
    b: Params,
    iters: int,
    tol: float = 0.0,
    stop_on_negative_curvature: bool = False,
) -> Solution:
    """Conjugate gradient from ``x0 = 0`` for a symmetric ``A``; ``iters`` matvecs.

    Iteration stops (its updates are masked out) once ``‖r‖ ≤ tol·‖b‖``, so a converged
    solve keeps its solution. With ``stop_on_negative_curvature`` it also stops at a
    direction ``p`` with ``pᵀAp ≤ 0`` (truncated Newton-CG). The residual returned is CG's
    recursively updated one, equal to ``‖b − Ax‖/‖b‖`` up to round-off; ``min_curvature``
    and ``max_curvature`` are the extreme Ritz values of ``A`` from CG's Lanczos matrix
    (Golub & Van Loan §11.3.5: ``T[k, k] = 1/α_k + β_{k−1}/α_{k−1}``,
    ``T[k, k+1] = √β_k/α_k``), the direction where CG stopped at negative curvature
    included. That matrix stops growing where the iterates stop or where the recurrence
    breaks down: where ``‖r‖²`` falls to the bottom of the dtype's range (below
    ``finfo.tiny / finfo.eps``: 1e-292 in float64, 1e-31 in float32), its ratios would be
    rounding noise. The iterates themselves go on to ``iters`` (or ``tol``).
    """
    x = tree.zeros_like(b)
    r = b
    p = r
    rs = tree.dot(r, r)
    b_sq = rs
    threshold = (tol * tol) * b_sq
    info = torch.finfo(rs.dtype)
    breakdown = info.tiny / info.eps
    running = torch.ones_like(rs, dtype=torch.bool)  # once stopped, stopped for good
    recording = running  # whether the Lanczos matrix still grows; once stopped, for good
    lanczos: list[tuple[Tensor, Tensor, Tensor]] = []  # (recorded, T[k, k], T[k, k + 1])
    previous = torch.zeros_like(rs)  # β_{k−1}/α_{k−1}
    for _ in range(iters):
        entered = running & (rs > threshold)
        recording = recording & entered & (rs > breakdown)
        ap = matvec(p)
        pap = tree.dot(p, ap)
        inv_alpha = pap / torch.where(recording, rs, torch.ones_like(rs))
        active = entered
        if stop_on_negative_curvature:
            active = active & (pap > 0)
        running = active
        alpha = torch.where(active, rs / torch.where(active, pap, torch.ones_like(pap)), 0.0)
        x = tree.axpy(alpha, p, x)
        r = tree.axpy(-alpha, ap, r)
        rs_new = tree.dot(r, r)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), 0.0)
        lanczos.append((recording, inv_alpha + previous, torch.sqrt(beta) * inv_alpha))
        previous = beta * inv_alpha
        p = tree.axpy(beta, p, r)
        rs = torch.where(active, rs_new, rs)
    return Solution(x, _relative(rs, b_sq), *_extreme_ritz_values(lanczos))


def minres(matvec: MatVec, b: Params, iters: int, tol: float = 0.0) -> Solution:
    """MINRES (Paige & Saunders 1975) from ``x0 = 0`` for a symmetric, possibly indefinite ``A``.

    Iterate k minimizes ``‖b − A x‖`` over the Krylov space ``span{b, Ab, …, A^(k−1) b}``,
    so the residual never grows (it is at most 1, where CG's can blow up on an indefinite
    system). ``iters`` matvecs; updates are masked out once ``‖r‖ ≤ tol·‖b‖`` or the Krylov
    space is exhausted: the next Lanczos vector's norm falls to ``finfo.eps`` times the
    largest Lanczos entry so far (an estimate of ``‖A‖``, so the test does not depend on the
    scale of ``b``). The residual returned is the recursively updated one (Lanczos with
    Givens rotations), equal to ``‖b − Ax‖/‖b‖`` up to round-off; ``min_curvature`` and
    ``max_curvature`` are the extreme eigenvalues of the Lanczos tridiagonal matrix of the
    iterations that ran (Ritz values of ``A``).
    """
    beta1 = tree.norm(b)
    zero = torch.zeros_like(beta1)
    x = tree.zeros_like(b)
    w, w_prev = x, x
    r_prev, r = x, b
    beta, beta_prev = beta1, torch.ones_like(beta1)
    cs, sn = -torch.ones_like(beta1), zero
    dbar, eps, phibar = zero, zero, beta1
    threshold = tol * beta1
    roundoff = torch.finfo(beta1.dtype).eps
    exhausted = zero  # roundoff·(the largest |T[j, j]|, T[j, j + 1] so far), round-off of ‖A‖
    active = torch.ones_like(beta1, dtype=torch.bool)
    lanczos: list[tuple[Tensor, Tensor, Tensor]] = []  # (active, T[k, k], T[k, k + 1])
    for k in range(iters):
        active = active & (phibar > threshold) & (beta > exhausted)  # once stopped, for good
        v = tree.scale(r, 1.0 / torch.where(active, beta, torch.ones_like(beta)))
        y = matvec(v)
        if k > 0:
            y = tree.axpy(-beta / beta_prev, r_prev, y)
        alpha = tree.dot(v, y)
        y = tree.axpy(-alpha / torch.where(active, beta, torch.ones_like(beta)), r, y)
        r_prev, r = r, y
        beta_prev, beta = beta, tree.norm(y)
        lanczos.append((active, alpha, beta))
        exhausted = torch.maximum(exhausted, roundoff * torch.maximum(alpha.abs(), beta))
        # Apply the previous rotation to the new column of the tridiagonal matrix, then a new
        # rotation that annihilates its subdiagonal entry beta.
        eps_prev = eps
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        eps = sn * beta
        dbar = -cs * beta
        gamma = torch.sqrt(gbar * gbar + beta * beta).clamp(min=_TINY)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        w_prev, w = w, tree.scale(tree.axpy(-eps_prev, w_prev, tree.axpy(-delta, w, v)), 1 / gamma)
        x = tree.where(active, tree.axpy(phi, w, x), x)
        phibar = torch.where(active, sn * phibar, phibar)
    return Solution(x, phibar / beta1.clamp(min=_TINY), *_extreme_ritz_values(lanczos))


def lanczos_extremes(matvec: MatVec, b: Params, iters: int) -> tuple[Tensor, Tensor]:
    """The smallest and largest Ritz values of a symmetric ``A`` after ``iters`` Lanczos steps
    started at ``b``: ``(min, max)``, each 0-d.

    They are inner bounds on the extreme eigenvalues of ``A`` (``λ_min ≤ min``,
    ``max ≤ λ_max``), exact once the Krylov space holds the extreme eigenvectors' components
    of ``b`` (``iters`` ≥ n in exact arithmetic). ``iters`` matvecs, no host sync: the
    Lanczos process of :func:`minres`, which stops early where the Krylov space is exhausted
    (so the same numbers as its ``min_curvature`` and ``max_curvature``); NaN for ``b = 0``.
    Runs under ``vmap``.
    """
    solution = minres(matvec, b, iters)
    assert solution.min_curvature is not None and solution.max_curvature is not None
    return solution.min_curvature, solution.max_curvature


def _extreme_ritz_values(lanczos: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """The smallest and largest eigenvalues of the Lanczos matrix of the iterations that ran
    (NaN if none).

    ``lanczos`` holds, per iteration, whether it ran and its diagonal and upper entries. The
    iterations that did not run (a suffix) are decoupled, with the first diagonal entry on
    their diagonal: a Rayleigh quotient of the leading block, so within its eigenvalues. The
    largest eigenvalue of T is minus the smallest of −T (the sign of the off-diagonal does
    not change the eigenvalues).
    """
    active, diagonal, upper = (torch.stack(column) for column in zip(*lanczos, strict=True))
    diagonal = torch.where(active, diagonal, diagonal[0])
    upper = torch.where(active[1:], upper[:-1], 0.0)
    smallest = smallest_tridiagonal_eigenvalue(diagonal, upper)
    largest = -smallest_tridiagonal_eigenvalue(-diagonal, upper)
    return (torch.where(active[0], smallest, math.nan), torch.where(active[0], largest, math.nan))


def smallest_tridiagonal_eigenvalue(
    diagonal: Tensor, upper: Tensor, points: int = 32, rounds: int = 8
) -> Tensor:
    """The smallest eigenvalue of the symmetric tridiagonal matrix with these entries.

    ``diagonal`` has shape (k,), ``upper`` (k − 1,) (the off-diagonal). Found by multisection
    of the Gershgorin interval with Sturm counts: ``rounds`` rounds of ``points`` points, to
    ``width / (points − 1)^rounds`` (about 1e-12 of the interval by default). Unlike
    ``torch.linalg.eigvalsh`` it does not synchronize a CUDA device with the host, and it
    runs under ``vmap``.
    """
    radius = torch.zeros_like(diagonal)
    radius[..., 1:] += upper.abs()
    radius[..., :-1] += upper.abs()
    lo, hi = (diagonal - radius).min(), (diagonal + radius).max()
    fraction = torch.linspace(0.0, 1.0, points, dtype=diagonal.dtype, device=diagonal.device)
    for _ in range(rounds):
        x = lo + (hi - lo) * fraction
        # Sturm count: the number of eigenvalues below x is the number of negative pivots
        # of the LDLᵀ factorization of T − xI.
        pivot = diagonal[0] - x
        below = (pivot < 0).to(torch.int64)
        for i in range(1, diagonal.shape[-1]):
            safe = torch.where(pivot == 0, torch.finfo(pivot.dtype).tiny, pivot)
            pivot = diagonal[i] - x - upper[i - 1] ** 2 / safe
            below = below + (pivot < 0).to(torch.int64)
        # Counts grow with x; the smallest eigenvalue lies after the last point with none below.
        j = ((below == 0).sum() - 1).clamp(0, points - 2)
        lo, hi = x[j], x[j + 1]
    return (lo + hi) / 2


def neumann_series(matvec: MatVec, b: Params, iters: int, alpha: float) -> Solution:
    """``x = α Σ_{k<iters} (I − αA)^k b``; ``iters`` matvecs, the last one for the residual.

    Converges when the spectrum of ``αA`` lies in (0, 2). The residual is exact:
    ``b − A x = (I − αA)^iters b``.
    """
    v = b
    acc = b
    for k in range(iters):
        v = tree.axpy(-alpha, matvec(v), v)
        if k < iters - 1:
            acc = tree.add(acc, v)
    return Solution(tree.scale(acc, alpha), _relative(tree.dot(v, v), tree.dot(b, b)))


def dense_matrix(matvec: MatVec, like: Params) -> Tensor:
    """The (n, n) matrix of ``matvec`` on trees shaped like ``like`` (n = total numel)."""
    flat, unflatten = tree.flatten(like)
    eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
    columns = vmap(lambda e: tree.flatten(matvec(unflatten(e)))[0])(eye)
    return columns.T


def dense_solve(matvec: MatVec, b: Params) -> Solution:
    """Form ``A`` from n matvecs and solve exactly; the reference for small models."""
    flat_b, unflatten = tree.flatten(b)
    a = dense_matrix(matvec, b)
    x = torch.linalg.solve(a, flat_b)
    r = a @ x - flat_b
    eigenvalues = torch.linalg.eigvalsh((a + a.T) / 2)
    relative = _relative(r @ r, flat_b @ flat_b)
    return Solution(unflatten(x), relative, eigenvalues[0], eigenvalues[-1])


@dataclass(frozen=True)
class _Krylov:
    """``iters`` matvecs of a Krylov method, stopping early at ``‖r‖ ≤ tol·‖b‖``."""

    iters: int
    tol: float = 0.0

    def __post_init__(self) -> None:
        _check_iters(self.iters)
        if self.tol < 0:
            raise ValueError(f"{type(self).__name__} tol must be >= 0, got {self.tol}")


@dataclass(frozen=True)
class CG(_Krylov):
    """Conjugate gradient with ``iters`` matvecs, stopping early at ``‖r‖ ≤ tol·‖b‖``.

    The paper's solver (Algorithm 2); needs ``A`` symmetric positive definite.
    """

    def __call__(self, matvec: MatVec, b: Params) -> Solution:
        return conjugate_gradient(matvec, b, self.iters, self.tol)


@dataclass(frozen=True)
class MINRES(_Krylov):
    """MINRES with ``iters`` matvecs, stopping early at ``‖r‖ ≤ tol·‖b‖``.

    For ``I + H/λ`` that may be indefinite (small λ, a non-convex support loss): the residual
    never exceeds 1, where CG may diverge.
    """

    def __call__(self, matvec: MatVec, b: Params) -> Solution:
        return minres(matvec, b, self.iters, self.tol)


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series ``α Σ_{k<iters} (I − αA)^k b``; ``iters`` matvecs."""

    iters: int
    alpha: float

    def __post_init__(self) -> None:
        _check_iters(self.iters)
        if not self.alpha > 0:
            raise ValueError(f"Neumann alpha must be > 0, got {self.alpha}")

    def __call__(self, matvec: MatVec, b: Params) -> Solution:
        return neumann_series(matvec, b, self.iters, self.alpha)


@dataclass(frozen=True)
class Dense:
    """Exact solve by forming the matrix: n matvecs and O(n³) work for n parameters."""

    def __call__(self, matvec: MatVec, b: Params) -> Solution:
        return dense_solve(matvec, b)


def _check_iters(iters: int) -> None:
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")


SOLVERS: dict[str, type[LinearSolver]] = {
    "cg": CG,
    "minres": MINRES,
    "neumann": Neumann,
    "dense": Dense,
}
"""The linear solvers a config names (``imaml.solver``), name → class.

A config builds one from ``imaml.solver_iters`` (as ``iters``, where the class has that field)
and ``[imaml.solver_options]``, the class's other fields; registering a class here is all a
new solver needs to be reachable from a config.
"""
