"""Meta-test: adapt to held-out tasks in batches and report the mean query metric ± 95% CI."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

import imaml
from imaml import checkpoint, tree, zoo
from imaml._tasks import adapt_tasks, cache_chunk, check_lam, prepare
from imaml.config import Config, ConfigError
from imaml.data import TaskBatch, TaskSampler
from imaml.objective import Objective
from imaml.solvers import minres
from imaml.training.components import (
    METRICS,
    DataSource,
    Problem,
    adaptation_lam,
    build_inner,
    build_problem,
    build_sampler,
)
from imaml.training.rundir import checkpoint_config, resolve_checkpoint
from imaml.tree import Params

EVAL_SEED = 0
"""The default seed of meta-test tasks: the same for every run, so that runs compare on the
same tasks."""


@dataclass(frozen=True)
class EvalResult:
    """The mean of a per-task query ``metric`` over ``tasks`` tasks, with its 95% CI.

    ``ci95`` is 1.96·std/√tasks (std over tasks, as the paper reports); ``loss`` is the mean
    query loss.
    """

    metric: str
    mean: float
    ci95: float
    loss: float
    tasks: int

    def to_dict(self) -> dict[str, Any]:
        """``{metric: mean, "ci95", "loss", "tasks"}``, e.g. ``{"accuracy": 0.98, ...}``."""
        return {self.metric: self.mean, "ci95": self.ci95, "loss": self.loss, "tasks": self.tasks}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> EvalResult:
        """The inverse of :meth:`to_dict`; other keys of ``record`` (``step``, ...) are ignored."""
        (metric,) = (name for name in METRICS if name in record)
        return cls(metric, record[metric], record["ci95"], record["loss"], record["tasks"])

    def __str__(self) -> str:
        if self.metric == "accuracy":
            return f"accuracy {100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
        return f"{self.metric} {self.mean:.4f} ± {self.ci95:.4f}"


@dataclass(frozen=True)
class Adaptation:
    """How test-time adaptation runs: the inner optimizer, λ (0: plain) and vmap chunking."""

    inner: imaml.inner.InnerOptimizer
    lam: float
    chunk_size: int | None = None

    @classmethod
    def of(cls, config: Config) -> Adaptation:
        """The config's adaptation: its inner optimizer (with ``eval.inner_steps`` if > 0)."""
        steps = config.eval.inner_steps or config.inner.steps
        return cls(
            build_inner(config.inner, steps),
            adaptation_lam(config),
            config.train.chunk_size or None,
        )


def evaluate(
    problem: Problem,
    params: Params,
    sampler: TaskSampler,
    adaptation: Adaptation,
    *,
    tasks: int,
    batch: int,
) -> EvalResult:
    """Adapt ``params`` to tasks ``0..tasks-1`` of ``sampler``, ``batch`` at a time, and score.

    Each batch runs as one :func:`imaml.adapt` call (vmapped over its tasks); the query metric
    of each adapted model is computed with vmapped forward passes (in cache-sized chunks of
    tasks on the CPU, :func:`imaml._tasks.cache_chunk`).
    """
    losses, metrics = [], []
    with torch.no_grad():
        for start in range(0, tasks, batch):
            b = sampler.sample_tasks(range(start, min(start + batch, tasks)))
            phi = imaml.adapt(
                problem.loss_fn,
                params,
                (b.xs, b.ys),
                lam=adaptation.lam,
                inner=adaptation.inner,
                has_aux=problem.has_aux,
                chunk_size=adaptation.chunk_size,
            )
            chunk = cache_chunk((b.xq, b.yq), adaptation.chunk_size)
            loss, metric = vmap(problem.score, chunk_size=chunk)(phi, b.xq, b.yq)
            losses.append(loss)
            metrics.append(metric)
    values = torch.cat(metrics).double()
    return EvalResult(
        metric=problem.metric,
        mean=values.mean().item(),
        ci95=1.96 * values.std(correction=0).item() / math.sqrt(tasks),
        loss=torch.cat(losses).double().mean().item(),
        tasks=tasks,
    )


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
    at ∇f(φ).
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
            lanczos = minres(hvp, grads, curvature_iters)
            return (
                value,
                support_loss(phi, xs, ys),
                tree.norm(grads),
                tree.norm(tree.sub(phi, theta)),
                problem.score(phi, xq, yq)[1],
                lanczos.min_curvature,
                lanczos.max_curvature,
            )

        return InnerProgress(*vmap(measure)(phi, tasks.xs, tasks.ys, tasks.xq, tasks.yq))


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint made ready to adapt: its file, config (with overrides), problem (model
    and loss), parameters on the device, and step."""

    path: Path
    config: Config
    problem: Problem
    params: Params
    step: int


def load_trained_model(
    path: str | Path, overrides: Sequence[str] = (), device: torch.device | str = "cpu"
) -> TrainedModel:
    """Load a checkpoint, a published model file (``.safetensors``) or a run directory's best
    checkpoint, with its config and ``KEY=VALUE`` ``overrides``, checking that its parameters
    fit the config's model."""
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":  # a published model file
        published = zoo.read_model(path)
        state = {"config": published.config, "params": published.params, "step": published.step}
    else:
        state = checkpoint.load(path)
    config = checkpoint_config(state, overrides)
    problem = build_problem(config)
    expected = {k: v.shape for k, v in problem.model.named_parameters()}
    params = {k: v.to(device) for k, v in state["params"].items()}
    if {k: v.shape for k, v in params.items()} != expected:
        raise checkpoint.CheckpointError(f"{path}: its parameters do not fit its config's model")
    return TrainedModel(path, config, problem, params, state["step"])


@dataclass(frozen=True)
class CheckpointEval:
    """:func:`evaluate_checkpoint`'s answer: the result, the split, the checkpoint used, its
    config and its step."""

    result: EvalResult
    split: str
    path: Path
    config: Config
    step: int


def evaluate_checkpoint(
    path: str | Path,
    source: DataSource,
    *,
    split: str | None = None,
    tasks: int | None = None,
    seed: int = EVAL_SEED,
    overrides: Sequence[str] = (),
    device: torch.device | str = "cpu",
) -> CheckpointEval:
    """Evaluate a checkpoint (or a run directory's best one) with its own config.

    Model, data set, episode shape and adaptation come from the checkpoint's config, with
    ``KEY=VALUE`` ``overrides`` applied (e.g. ``eval.inner_steps=32`` to adapt longer);
    ``split`` and ``tasks`` default to its ``eval.split`` and ``eval.tasks``.
    """
    model = load_trained_model(path, overrides, device)
    config = model.config
    split = split or config.eval.split
    tasks = config.eval.tasks if tasks is None else tasks
    if tasks < 1:
        raise ConfigError(f"the number of tasks must be > 0, got {tasks}")
    sampler = build_sampler(config, split, source, seed, device)
    result = evaluate(
        model.problem, model.params, sampler, Adaptation.of(config), tasks=tasks,
        batch=config.eval.batch,
    )  # fmt: skip
    return CheckpointEval(result, split, model.path, config, model.step)
