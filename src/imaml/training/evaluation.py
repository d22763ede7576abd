"""Meta-test: adapt to held-out tasks in batches and report the mean query metric ± 95% CI."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
    per class (:meth:`Problem.in_class_batches`), averaged: BatchNorm, which normalizes with
    the batch's statistics, then sees batches of the size a k-query task has (the released
    code's is k = 1), while every query image is still scored. 0 scores the query set at once.
    """
    scorer = problem
    if query_batch_shots:
        scorer = problem.in_class_batches(sampler.ways, query_batch_shots)
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
            loss, metric = vmap(scorer.score, chunk_size=chunk)(phi, b.xq, b.yq)
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
