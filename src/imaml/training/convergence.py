"""How far adaptation gets on the inner problems: distance to the proximal minimizer, gradient
norm and curvature at the adapted parameters (:func:`inner_progress`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from imaml import tree
from imaml._batching import adapt_tasks
from imaml._checks import check_lam, prepare
from imaml.data import TaskBatch
from imaml.objective import Objective
from imaml.solvers import lanczos_extremes
from imaml.training.builders import Problem
from imaml.training.evaluation import Adaptation
from imaml.types import Params


@dataclass(frozen=True)
class InnerProgress:
    """How far adaptation got on B tasks' inner problems ``f(φ) = L_s(φ) + (λ/2)‖φ − θ‖²``.

    Each field is a (B,) tensor, at the adapted φ of each task: ``objective`` f(φ),
    ``support_loss`` L_s(φ), ``grad_norm`` ‖∇f(φ)‖ (0 at an exact minimizer, which the
    implicit meta-gradient assumes), ``distance`` ‖φ − θ‖, ``query_metric``, the problem's
    metric of φ on the query set, and ``min_curvature`` / ``max_curvature``, the extreme
    Ritz values of the Hessian ∇²f(φ) from Lanczos (inner bounds on its extreme
    eigenvalues): gradient descent with step ``lr`` cannot settle at φ when
    ``lr·max_curvature > 2``.
    """

    objective: Tensor
    support_loss: Tensor
    grad_norm: Tensor
    distance: Tensor
    query_metric: Tensor
    min_curvature: Tensor
    max_curvature: Tensor


def inner_progress(
    problem: Problem,
    params: Params,
    tasks: TaskBatch,
    adaptation: Adaptation,
    curvature_iters: int = 20,
) -> InnerProgress:
    """Adapt ``params`` (θ) to the B ``tasks`` as ``adaptation`` says and measure the result
    (shapes of ``tasks``: :class:`~imaml.data.TaskBatch`; each result field is (B,)).

    Sweeping ``adaptation.inner``'s steps shows whether the inner optimizer converges to the
    minimizer of the proximal problem and what query metric that minimizer has. The
    curvatures come from ``curvature_iters`` Lanczos steps (Hessian-vector products) started
    at ∇f(φ) (:func:`imaml.solvers.lanczos_extremes`).
    """
    lam = check_lam(adaptation.lam, allow_zero=True)
    theta, (support,), support_loss, _ = prepare(
        problem.loss_fn, params, problem.has_aux, support=(tasks.xs, tasks.ys)
    )
    with torch.no_grad():  # torch.func.grad still differentiates inside
        phi = adapt_tasks(
            support_loss, theta, support, lam, adaptation.inner, adaptation.chunk_size
        )

        def measure(
            phi: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
        ) -> tuple[Tensor, ...]:
            objective = Objective(lambda p: support_loss(p, xs, ys), theta, lam)
            value, grads, hvp = objective.linearize(phi)
            return (
                value,
                support_loss(phi, xs, ys),
                tree.norm(grads),
                tree.norm(tree.sub(phi, theta)),
                problem.score(phi, xq, yq)[1],
                *lanczos_extremes(hvp, grads, curvature_iters),
            )

        return InnerProgress(*vmap(measure)(phi, tasks.xs, tasks.ys, tasks.xq, tasks.yq))
