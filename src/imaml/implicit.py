"""The implicit meta-gradient of iMAML (Rajeswaran et al. 2019, Algorithm 2), batched over tasks.

For each task i with support loss ``L_s`` and query loss ``L_q``:

    φ*  ≈ argmin_φ  L_s(φ) + (λ/2)‖φ − θ‖²            (any inner optimizer, from φ = θ)
    g_i = (I + H/λ)⁻¹ ∇L_q(φ*),   H = ∇²L_s(φ*)        (any linear solver, from HVPs)

and the meta-gradient is the mean of ``g_i`` over the B tasks. The inner path is never
differentiated, so memory does not grow with the number of inner steps.

:func:`meta_gradient` does both; :func:`adapt` is the first line alone (test-time adaptation)
and :func:`implicit_gradient` the second, at φ from anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vmap

from imaml import tree
from imaml._batching import adapt_tasks, cache_chunk, query_gradients, task_mean
from imaml._checks import check_adapted, check_lam, prepare
from imaml.diagnostics import Diagnostics, inner_stationarity
from imaml.inner import InnerOptimizer
from imaml.objective import Objective
from imaml.solvers import LinearSolver
from imaml.types import Batch, LossAndAux, Params, ParamsLike, SplitLike, TaskLoss


def meta_gradient(
    loss_fn: TaskLoss,
    params: ParamsLike,
    support: SplitLike,
    query: SplitLike,
    *,
    lam: float,
    inner: InnerOptimizer,
    solver: LinearSolver,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> tuple[Params, Diagnostics]:
    """The iMAML meta-gradient of a meta-batch of B tasks, computed for all tasks at once.

    :func:`adapt` then :func:`implicit_gradient`, on inputs checked once.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` for ONE task: a 0-d tensor, or with
            ``has_aux`` a pair ``(loss, {name: 0-d tensor})`` (e.g. an accuracy).
            Typically ``F.cross_entropy(functional_call(model, params, (x,)), y)``.
        params: the meta-parameters θ, ``{name: tensor}`` (e.g. ``model.named_parameters()``).
        support: tensors with dim 0 indexing the tasks, e.g. ``(xs, ys)`` with xs of shape
            (B, N·K, C, H, W) and ys of shape (B, N·K).
        query: the query set, laid out like ``support`` (its own number of examples).
        lam: the proximal strength λ > 0.
        inner: the inner optimizer (:mod:`imaml.inner`), run from θ on each task.
        solver: the linear solver (:mod:`imaml.solvers`) for ``(I + H/λ) g = ∇L_q(φ*)``.
        has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
        chunk_size: process tasks in vmap chunks of this size to bound memory (None: all).
            On the CPU the query pass takes smaller chunks by itself when the query sets
            are large (:func:`imaml._batching.cache_chunk`); the result does not change.

    Returns:
        ``(grads, info)`` as :func:`implicit_gradient` returns them, at the φ* of ``inner``.

    Raises:
        ValueError, naming the tensor, before any batched computation: zero tasks, an empty
            support or query set, tensors whose dim 0 (the tasks) differ; and for the losses
            of :mod:`imaml.losses`, inputs of another dtype than ``params`` (e.g. integer
            images), targets not shaped like the model's outputs, labels outside
            ``[0, classes)``. The checks run once per call (:func:`imaml._checks.prepare`).
    """
    lam = check_lam(lam)
    theta, (support, query), support_loss, query_loss = prepare(
        loss_fn, params, has_aux, support=support, query=query
    )
    phi = adapt_tasks(support_loss, theta, support, lam, inner, chunk_size)
    return _implicit_gradient(
        support_loss, query_loss, theta, phi, support, query, lam, solver, chunk_size
    )


def implicit_gradient(
    loss_fn: TaskLoss,
    params: ParamsLike,
    phi: ParamsLike,
    support: SplitLike,
    query: SplitLike,
    *,
    lam: float,
    solver: LinearSolver,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> tuple[Params, Diagnostics]:
    """The iMAML meta-gradient at given inner solutions φ (one per task), however found.

    For each task, ``g_i = (I + H/λ)⁻¹ ∇L_q(φ_i)`` with ``H = ∇²L_s(φ_i)``: exact when φ_i
    minimizes ``L_s(φ) + (λ/2)‖φ − θ‖²``. Use it with φ from your own inner loop (any
    optimizer, not differentiated), or to compare solvers on the same φ without adapting
    again; :func:`meta_gradient` is ``implicit_gradient`` at ``adapt``'s φ.

    Args:
        loss_fn, params, support, query, lam, solver, has_aux, chunk_size: as in
            :func:`meta_gradient`.
        phi: the adapted parameters, ``{name: tensor of shape (B, *params[name].shape)}``
            (what :func:`adapt` returns); treated as constants (detached).

    Returns:
        ``(grads, info)``: ``grads`` shaped like ``params`` (the mean over tasks; the
        direction that increases the query loss, as ``.grad`` would hold), and ``info``, a
        :class:`~imaml.diagnostics.Diagnostics` with every field set, (B,) tensors read by
        name as in a dict: ``support_loss`` and ``query_loss`` at φ, ``inner_grad_norm``
        (‖∇L_s(φ) + λ(φ − θ)‖), ``inner_distance`` (‖φ − θ‖), ``inner_stationarity`` (0 at
        the exact minimizer, ``inf`` when φ = θ), ``solver_residual`` (‖A g − b‖/‖b‖),
        ``solver_min_curvature`` and ``solver_max_curvature`` (extreme ``vᵀAv/vᵀv`` of
        ``A = I + H/λ``, NaN if the solver does not say), ``solver_correction``
        (``‖g − ∇L_q(φ)‖/‖∇L_q(φ)‖``) and ``query_<name>`` for each aux entry; each field's
        meaning is documented on :class:`~imaml.diagnostics.Diagnostics`.

    Raises:
        ValueError: as :func:`meta_gradient`; or ``phi`` does not have ``params``' names, or
            its tensors are not shaped ``(B, *params[name].shape)`` for the B tasks of
            ``support``.
    """
    lam = check_lam(lam)
    theta, (support, query), support_loss, query_loss = prepare(
        loss_fn, params, has_aux, support=support, query=query
    )
    phi = check_adapted(phi, theta, support[0].shape[0])
    return _implicit_gradient(
        support_loss, query_loss, theta, phi, support, query, lam, solver, chunk_size
    )


def adapt(
    loss_fn: TaskLoss,
    params: ParamsLike,
    support: SplitLike,
    *,
    lam: float,
    inner: InnerOptimizer,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> Params:
    """Adapt θ to each of B tasks: ``φ_i ≈ argmin L_s,i(φ) + (λ/2)‖φ − θ‖²``.

    ``lam = 0`` gives plain adaptation on the support loss (as MAML and Reptile evaluate).
    Returns ``{name: tensor of shape (B, *param.shape)}``; evaluate task i with
    ``{k: v[i] for k, v in phi.items()}`` or vmap over the leading dimension. Bad inputs
    raise a ValueError as in :func:`meta_gradient`.
    """
    lam = check_lam(lam, allow_zero=True)
    theta, (support,), support_loss, _ = prepare(loss_fn, params, has_aux, support=support)
    return adapt_tasks(support_loss, theta, support, lam, inner, chunk_size)


def _implicit_gradient(
    support_loss: Callable[..., Tensor],
    query_loss: Callable[..., LossAndAux],
    theta: Params,
    phi: Params,
    support: Batch,
    query: Batch,
    lam: float,
    solver: LinearSolver,
    chunk_size: int | None,
) -> tuple[Params, Diagnostics]:
    """:func:`implicit_gradient` on checked inputs."""

    def solve(theta: Params, phi: Params, s: Batch, q_grad: Params):
        s_loss, s_grad, hess = Objective(lambda p: support_loss(p, *s)).linearize(phi)

        def matvec(v: Params) -> Params:
            return tree.axpy(1.0 / lam, hess(v), v)

        solution = solver(matvec, q_grad)
        step = tree.sub(phi, theta)
        inner_grad_norm = tree.norm(tree.axpy(lam, step, s_grad))
        nan = torch.full_like(solution.residual, math.nan)
        curvature = [
            nan if c is None else c for c in (solution.min_curvature, solution.max_curvature)
        ]
        correction = tree.norm(tree.sub(solution.x, q_grad)) / tree.norm(q_grad)
        return (
            solution.x, s_loss, inner_grad_norm, tree.norm(step), solution.residual, correction,
            *curvature,
        )  # fmt: skip

    q_grad, q_loss, aux = query_gradients(query_loss, phi, query, chunk_size)
    per_task, s_loss, inner_grad_norm, distance, residual, correction, min_curv, max_curv = vmap(
        solve, in_dims=(None, 0, 0, 0), chunk_size=cache_chunk(support, chunk_size)
    )(theta, phi, support, q_grad)
    info = Diagnostics(
        support_loss=s_loss,
        query_loss=q_loss,
        inner_grad_norm=inner_grad_norm,
        inner_distance=distance,
        inner_stationarity=inner_stationarity(inner_grad_norm, distance, lam),
        solver_residual=residual,
        solver_min_curvature=min_curv,
        solver_max_curvature=max_curv,
        solver_correction=correction,
        aux=aux,
    )
    return task_mean(per_task), info
