"""MAML, first-order MAML and Reptile meta-gradients, batched over tasks like iMAML's.

All three adapt with the plain (unregularized) support loss, using any inner optimizer of
:mod:`imaml.inner`, so that every method shares the same inputs and outputs.
"""

from __future__ import annotations

from torch.func import grad

from imaml import tree
from imaml._batching import (
    adapt_task,
    adapt_tasks,
    cache_chunk,
    map_tasks,
    query_gradients,
    support_fit,
    task_mean,
)
from imaml._checks import prepare
from imaml.diagnostics import Diagnostics
from imaml.inner import InnerOptimizer
from imaml.types import Batch, Params, ParamsLike, SplitLike, TaskLoss


def maml_gradient(
    loss_fn: TaskLoss,
    params: ParamsLike,
    support: SplitLike,
    query: SplitLike,
    *,
    inner: InnerOptimizer,
    first_order: bool = False,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> tuple[Params, Diagnostics]:
    """MAML's meta-gradient ``∇_θ L_q(φ(θ))``, backpropagating through the inner steps.

    ``φ(θ)`` is ``inner`` run on the unregularized support loss from θ. With
    ``first_order``, the inner path is not differentiated: the gradient is ``∇L_q(φ)``
    (first-order MAML). Memory grows with the number of inner steps unless first-order.
    On the CPU, large query sets go through in cache-sized chunks of tasks (the whole
    per-task graph for MAML, the query pass for first-order MAML), as in
    :func:`imaml.meta_gradient`; the result does not change.

    Arguments, shapes and input checks (ValueErrors) are those of :func:`imaml.meta_gradient`
    (without ``lam`` and ``solver``). Returns ``(grads, info)``: grads shaped like
    ``params`` (mean over the B tasks), info a :class:`~imaml.diagnostics.Diagnostics` of (B,)
    tensors: ``support_loss`` and ``query_loss`` at φ, ``inner_grad_norm`` (‖∇L_s(φ)‖) and
    ``query_<name>`` per aux entry (the other fields None).
    """
    theta, (support, query), support_loss, query_loss = prepare(
        loss_fn, params, has_aux, support=support, query=query
    )

    def through_inner_loop(theta: Params, s: Batch, q: Batch):
        def adapted_query_loss(th: Params):
            phi = adapt_task(support_loss, th, s, 0.0, inner)
            q_loss, aux = query_loss(phi, *q)
            return q_loss, (phi, q_loss, aux)

        g, (phi, q_loss, aux) = grad(adapted_query_loss, has_aux=True)(theta)
        return g, phi, q_loss, aux

    if first_order:  # adapt all tasks, then the query passes in cache-sized chunks
        phi = adapt_tasks(support_loss, theta, support, 0.0, inner, chunk_size)
        per_task, q_loss, aux = query_gradients(query_loss, phi, query, chunk_size)
    else:  # one graph per task through its inner loop, in cache-sized chunks of tasks
        per_task, phi, q_loss, aux = map_tasks(
            through_inner_loop, theta, support, query,
            chunk_size=cache_chunk((*support, *query), chunk_size),
        )  # fmt: skip

    s_loss, s_grad_norm = support_fit(support_loss, phi, support, chunk_size)
    info = Diagnostics(support_loss=s_loss, query_loss=q_loss, inner_grad_norm=s_grad_norm, aux=aux)
    return task_mean(per_task), info


def reptile_gradient(
    loss_fn: TaskLoss,
    params: ParamsLike,
    support: SplitLike,
    *,
    inner: InnerOptimizer,
    has_aux: bool = False,
    chunk_size: int | None = None,
) -> tuple[Params, Diagnostics]:
    """Reptile's update direction ``θ − φ`` (mean over tasks), φ adapted on the support loss.

    An optimizer step along ``−grads`` moves θ toward the adapted parameters; with SGD at
    learning rate ε it is Reptile's ``θ ← θ + ε(φ̄ − θ)``. Returns ``(grads, info)``: info, a
    :class:`~imaml.diagnostics.Diagnostics`, holds (B,) tensors ``support_loss`` and
    ``inner_grad_norm`` (‖∇L_s(φ)‖) at φ (the other fields None). Inputs are checked as by
    :func:`imaml.meta_gradient`.
    """
    theta, (support,), support_loss, _ = prepare(loss_fn, params, has_aux, support=support)
    phi = adapt_tasks(support_loss, theta, support, 0.0, inner, chunk_size)
    s_loss, s_grad_norm = support_fit(support_loss, phi, support, chunk_size)
    info = Diagnostics(support_loss=s_loss, inner_grad_norm=s_grad_norm)
    return task_mean(tree.sub(theta, phi)), info  # θ broadcasts over the B tasks of φ
