"""One meta-step, split into parts that data-parallel training reuses.

1. :func:`sample_shard`: this process's share of meta-step ``k``'s global meta-batch, a pure
   function of (seed, k, rank);
2. a :data:`GradientFn` (:func:`make_gradient_fn`): the meta-gradient of those tasks;
3. :meth:`imaml.distributed.World.mean`: the mean over processes (identity for one process);
4. :func:`apply_gradients`: a ``torch.optim`` step with the gradients, at the learning rate
   :func:`outer_lr` gives for step ``k`` (:func:`set_learning_rate`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import imaml
from imaml.config import Config, TrainConfig
from imaml.data import TaskBatch, TaskSampler
from imaml.diagnostics import Diagnostics
from imaml.distributed import World
from imaml.released import released_gradient
from imaml.training.builders import Problem, build_inner, build_solver
from imaml.types import Params

GradientFn = Callable[[Params, TaskBatch], tuple[Params, Diagnostics]]
"""``(params, tasks) -> (grads, info)``: a meta-gradient (mean over the tasks, shaped like
params) and (B,) diagnostics per task, as :func:`imaml.meta_gradient` returns."""


def _released(config: Config, problem: Problem) -> GradientFn:
    released = {
        "lam": config.imaml.lam,
        "steps": config.inner.steps,
        "lr": config.inner.lr,
        "cg_damping": config.released.cg_damping,
        "lam_damping": config.released.lam_damping,
        "cg_steps": config.imaml.solver_iters,
        "has_aux": problem.has_aux,
        "chunk_size": config.train.chunk_size or None,
        "inner": None if config.released.inner_loop else build_inner(config.inner),
        "solver": None if config.released.solve else build_solver(config),
    }

    def released_fn(params: Params, tasks: TaskBatch) -> tuple[Params, Diagnostics]:
        support, query = (tasks.xs, tasks.ys), (tasks.xq, tasks.yq)
        return released_gradient(problem.loss_fn, params, support, query, **released)

    return released_fn


def _common(config: Config, problem: Problem) -> dict[str, Any]:
    """The keyword arguments of every gradient of the engine: inner optimizer, aux, chunks."""
    return {
        "inner": build_inner(config.inner),
        "has_aux": problem.has_aux,
        "chunk_size": config.train.chunk_size or None,
    }


def _imaml(config: Config, problem: Problem) -> GradientFn:
    lam, solver, common = config.imaml.lam, build_solver(config), _common(config, problem)

    def imaml_fn(params: Params, tasks: TaskBatch) -> tuple[Params, Diagnostics]:
        support, query = (tasks.xs, tasks.ys), (tasks.xq, tasks.yq)
        return imaml.meta_gradient(
            problem.loss_fn, params, support, query, lam=lam, solver=solver, **common
        )

    return imaml_fn


def _maml(config: Config, problem: Problem, first_order: bool) -> GradientFn:
    common = _common(config, problem)

    def maml_fn(params: Params, tasks: TaskBatch) -> tuple[Params, Diagnostics]:
        support, query = (tasks.xs, tasks.ys), (tasks.xq, tasks.yq)
        return imaml.maml_gradient(
            problem.loss_fn, params, support, query, first_order=first_order, **common
        )

    return maml_fn


def _reptile(config: Config, problem: Problem) -> GradientFn:
    common = _common(config, problem)

    def reptile_fn(params: Params, tasks: TaskBatch) -> tuple[Params, Diagnostics]:
        return imaml.reptile_gradient(problem.loss_fn, params, (tasks.xs, tasks.ys), **common)

    return reptile_fn


ALGORITHMS: dict[str, Callable[[Config, Problem], GradientFn]] = {
    "imaml": _imaml,
    "imaml-released": _released,
    "maml": functools.partial(_maml, first_order=False),
    "fomaml": functools.partial(_maml, first_order=True),
    "reptile": _reptile,
}
"""The meta-gradients of ``algorithm``: name → ``(config, problem) -> GradientFn``.

imaml: :func:`imaml.meta_gradient`; imaml-released: :func:`imaml.released.released_gradient`
(the released code's pipeline, ``[released]`` dampings and pieces); maml / fomaml:
:func:`imaml.maml_gradient`; reptile: :func:`imaml.reptile_gradient` (θ − φ, adapted on the
support set).
"""


def make_gradient_fn(config: Config, problem: Problem) -> GradientFn:
    """The meta-gradient of the config's ``algorithm`` for a batch of tasks (:data:`ALGORITHMS`),
    with the network run on query sets in batches of ``train.query_batch_shots`` images per
    class when that is set (:meth:`Problem.in_class_batches`)."""
    if config.train.query_batch_shots:
        problem = problem.in_class_batches(config.data.ways, config.train.query_batch_shots)
    return ALGORITHMS[config.algorithm](config, problem)


def sample_shard(sampler: TaskSampler, world: World, meta_batch: int, step: int) -> TaskBatch:
    """This process's tasks of meta-step ``step``: its slice of the global meta-batch.

    The global meta-batch of step k is tasks ``k·meta_batch … (k+1)·meta_batch − 1`` of the
    sampler, a pure function of (seed, k) whatever the number of processes.
    """
    return sampler.sample(meta_batch, step=step, rank=world.rank, world_size=world.size)


def all_finite(loss: Tensor, grads: Params) -> bool:
    """Whether ``loss`` and every gradient entry are finite (one host synchronization)."""
    flags = [torch.isfinite(loss).all(), *(torch.isfinite(g).all() for g in grads.values())]
    return bool(torch.stack(flags).all())


def outer_lr(config: TrainConfig, step: int) -> float:
    """The outer learning rate of the update from meta-step ``step`` to ``step + 1``.

    ``config.outer_lr`` times ``config.outer_lr_gamma`` for each milestone ``m`` with
    ``m <= step`` (torch's ``MultiStepLR``): a pure function of the step, so a resumed run, or
    one resumed with new milestones, needs no scheduler state.
    """
    reached = sum(step >= m for m in config.outer_lr_milestones)
    return config.outer_lr * config.outer_lr_gamma**reached


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer`` to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def apply_gradients(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], grads: Params
) -> None:
    """Set each parameter's ``.grad`` to ``grads[name]`` and take one optimizer step."""
    for name, p in params.items():
        p.grad = grads[name]
    optimizer.step()
