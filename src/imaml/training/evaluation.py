"""Meta-test: adapt to held-out tasks in batches and report the mean query metric ± 95% CI."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import vmap

import imaml
from imaml._batching import cache_chunk
from imaml.config import Config, ConfigError
from imaml.data import TaskSampler
from imaml.training.builders import (
    METRICS,
    DataSource,
    Problem,
    adaptation_lam,
    build_inner,
    build_sampler,
)
from imaml.training.loading import load_trained_model
from imaml.types import Params

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


def query_groups(
    xq: Tensor, yq: Tensor, query_shots: int, shots_per_group: int
) -> tuple[Tensor, Tensor]:
    """Split each task's query set into ``G = query_shots / shots_per_group`` groups.

    Group ``g`` holds query images ``g·k .. g·k + k - 1`` (``k = shots_per_group``) of every
    class, in class order, as the sampler lays out a query set (``[0] * Q + [1] * Q + ...``).
    A regression task (``query_shots`` points, one "class") splits into runs of ``k`` points.

    Args:
        xq: (B, N * Q, ...) query inputs of B tasks with N classes of Q = ``query_shots``.
        yq: (B, N * Q, ...) their labels or targets.
        query_shots: Q, the query examples per class.
        shots_per_group: k, a divisor of Q.

    Returns:
        ``(xq, yq)`` of shapes (B, G, N * k, ...).
    """
    if shots_per_group < 1 or query_shots % shots_per_group:
        raise ValueError(f"{shots_per_group} query shots per group do not divide {query_shots}")
    batch, examples = yq.shape[:2]
    ways, groups = examples // query_shots, query_shots // shots_per_group

    def split(t: Tensor) -> Tensor:
        t = t.reshape(batch, ways, groups, shots_per_group, *t.shape[2:]).transpose(1, 2)
        return t.reshape(batch, groups, ways * shots_per_group, *t.shape[4:])

    return split(xq), split(yq)


def evaluate(
    problem: Problem,
    params: Params,
    sampler: TaskSampler,
    adaptation: Adaptation,
    *,
    tasks: int,
    batch: int,
    query_batch_shots: int = 0,
) -> EvalResult:
    """Adapt ``params`` to tasks ``0..tasks-1`` of ``sampler``, ``batch`` at a time, and score.

    Each batch runs as one :func:`imaml.adapt` call (vmapped over its tasks); the query metric
    of each adapted model is computed with vmapped forward passes (in cache-sized chunks of
    tasks on the CPU, :func:`imaml._batching.cache_chunk`).

    ``query_batch_shots`` = k > 0 scores each task's query set in forward passes of k images
    per class (:func:`query_groups`) and averages over them: BatchNorm, which normalizes with
    the batch's statistics, then sees batches of the size a k-query task has (the released
    code's is k = 1), while every query image is still scored. 0 scores the query set at once.
    """
    score = problem.score
    if query_batch_shots:
        score = _averaged_over_groups(problem.score)
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
            xq, yq = b.xq, b.yq
            if query_batch_shots:
                xq, yq = query_groups(xq, yq, sampler.query_shots, query_batch_shots)
            chunk = cache_chunk((xq, yq), adaptation.chunk_size)
            loss, metric = vmap(score, chunk_size=chunk)(phi, xq, yq)
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


def _averaged_over_groups(
    score: Callable[[Params, Tensor, Tensor], tuple[Tensor, Tensor]],
) -> Callable[[Params, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``score`` of one task's query groups (G, n, ...), one forward pass each, averaged."""

    def grouped(params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss, metric = vmap(score, in_dims=(None, 0, 0))(params, x, y)
        return loss.mean(), metric.mean()

    return grouped


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
        batch=config.eval.batch, query_batch_shots=config.eval.query_batch_shots,
    )  # fmt: skip
    return CheckpointEval(result, split, model.path, config, model.step)
