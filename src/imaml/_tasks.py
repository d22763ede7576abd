"""Input checks and the batched-over-tasks plumbing shared by iMAML and the baselines."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from imaml import tree
from imaml.inner import InnerOptimizer
from imaml.losses import ModelLoss
from imaml.objective import Objective, check_scalar_loss
from imaml.tree import Params

Batch = tuple[Tensor, ...]
"""One split of a meta-batch: tensors whose dim 0 indexes the B tasks, e.g. ``(xs, ys)``."""

LossAndAux = tuple[Tensor, dict[str, Tensor]]


def check_params(params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> Params:
    """Validate ``params`` and return a detached dict (the meta-parameters θ)."""
    params = dict(params)
    if not params:
        raise ValueError("params is empty: pass e.g. dict(model.named_parameters())")
    for name, value in params.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"params[{name!r}] is a {type(value).__name__}, not a tensor")
        if not torch.is_floating_point(value):
            raise TypeError(
                f"params[{name!r}] has dtype {value.dtype}; meta-parameters must be "
                "floating-point tensors (convert with .float() or .double())"
            )
    return tree.detach(params)


def check_adapted(
    phi: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], theta: Params, tasks: int
) -> Params:
    """Validate adapted parameters against θ and B = ``tasks``; return them detached."""
    phi = dict(phi)
    if set(phi) != set(theta):
        raise ValueError(
            f"phi must have the names of params; missing {sorted(set(theta) - set(phi))}, "
            f"unexpected {sorted(set(phi) - set(theta))}"
        )
    for name, value in phi.items():
        expected = (tasks, *theta[name].shape)
        if not isinstance(value, Tensor) or value.shape != expected:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"phi[{name!r}] must be a tensor of shape {expected} (one row per task, as "
                f"imaml.adapt returns), got {got}"
            )
        if (value.dtype, value.device) != (theta[name].dtype, theta[name].device):
            raise ValueError(
                f"phi[{name!r}] is {value.dtype} on {value.device}, but params[{name!r}] is "
                f"{theta[name].dtype} on {theta[name].device}; adapt on the same dtype and device"
            )
    return tree.detach(phi)


def check_lam(lam: float, allow_zero: bool = False) -> float:
    """Return ``lam`` as a float if it is a finite positive number (or 0 with ``allow_zero``:
    plain adaptation, without the proximal term), else raise ValueError."""
    lam = float(lam)
    if allow_zero and lam == 0.0:
        return lam
    if not (lam > 0 and lam < float("inf")):
        raise ValueError(
            f"lam (the proximal regularization strength λ) must be a positive finite number"
            f"{' or 0' if allow_zero else ''}, got {lam}; the paper uses lam=2.0 for Omniglot"
        )
    return lam


def as_batch(split: Tensor | Sequence[Tensor], name: str) -> Batch:
    """Turn a tensor or a sequence of tensors into a tuple of tensors, checking its type."""
    if isinstance(split, Tensor):
        return (split,)
    split = tuple(split)
    if not split or not all(isinstance(t, Tensor) for t in split):
        raise TypeError(f"{name} must be a tensor or a non-empty tuple of tensors, e.g. (xs, ys)")
    return split


def num_tasks(**splits: Batch) -> int:
    """The common leading (task) dimension B ≥ 1 of all tensors.

    ValueError, naming the tensor, if the sizes differ, if B = 0, or if a tensor holds no
    elements (an empty support or query set).
    """
    sizes = {}
    for name, batch in splits.items():
        for i, t in enumerate(batch):
            if t.dim() == 0:
                raise ValueError(f"{name}[{i}] is 0-d; its dim 0 must index the tasks")
            sizes[f"{name}[{i}]"] = t.shape[0]
    if len(set(sizes.values())) != 1:
        detail = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            f"every tensor's dim 0 must be the number of tasks B, but they differ ({detail})"
        )
    first, tasks = next(iter(sizes.items()))
    if tasks == 0:
        raise ValueError(f"{first} has 0 tasks (its dim 0): pass at least one task")
    for name, batch in splits.items():
        for i, t in enumerate(batch):
            if t.numel() == 0:
                raise ValueError(
                    f"{name}[{i}] has shape {tuple(t.shape)}, no elements: every task needs "
                    f"a non-empty {name} set"
                )
    return tasks


def loss_parts(
    loss_fn: Callable[..., Any], has_aux: bool
) -> tuple[Callable[..., Tensor], Callable[..., LossAndAux]]:
    """Split ``loss_fn`` into ``(loss only, (loss, aux dict))`` versions, checking its output."""

    def with_aux(params: Params, *batch: Tensor) -> LossAndAux:
        out = loss_fn(params, *batch)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
                raise TypeError("with has_aux=True, loss_fn must return (loss, dict of tensors)")
            loss, aux = out
        else:
            loss, aux = out, {}
        return check_scalar_loss(loss, "loss_fn"), aux

    def loss_only(params: Params, *batch: Tensor) -> Tensor:
        return with_aux(params, *batch)[0]

    return loss_only, with_aux


def prepare(
    loss_fn: Callable[..., Any],
    params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
    has_aux: bool,
    **splits: Tensor | Sequence[Tensor],
) -> tuple[Params, list[Batch], Callable[..., Tensor], Callable[..., LossAndAux]]:
    """Validate a gradient function's inputs, once per call and outside ``vmap``.

    Checks θ, the splits' task dimensions (:func:`num_tasks`) and, for a ``loss_fn`` of
    :mod:`imaml.losses`, the splits against the model (input dtypes, target shapes, label
    range: :meth:`~imaml.losses.ModelLoss.check_splits`). Returns ``(θ, [each split as a
    tuple of tensors], loss only, (loss, aux))``.
    """
    theta = check_params(params)
    batches = {name: as_batch(split, name) for name, split in splits.items()}
    num_tasks(**batches)
    if isinstance(loss_fn, ModelLoss):
        loss_fn.check_splits(theta, batches)
    return theta, list(batches.values()), *loss_parts(loss_fn, has_aux)


def map_tasks(
    fn: Callable[..., Any], theta: Params, *splits: Batch, chunk_size: int | None = None
) -> Any:
    """``vmap`` of ``fn(theta, *per_task_splits)`` over the tasks (θ shared by all)."""
    in_dims = (None, *(0,) * len(splits))
    return vmap(fn, in_dims=in_dims, chunk_size=chunk_size)(theta, *splits)


CPU_CHUNK_ELEMENTS = 2**18
"""Input elements (all tensors of a split, summed over tasks) per vmap chunk on the CPU."""


def cache_chunk(split: Batch, chunk_size: int | None) -> int | None:
    """The vmap chunk size for a pass over ``split``: ``chunk_size``, made smaller on the CPU.

    On the CPU, a pass over all tasks' query (or large support) sets at once makes
    activations of hundreds of MB whose batched convolutions and normalizations are
    memory-bound; chunks of tasks with at most :data:`CPU_CHUNK_ELEMENTS` input elements
    keep them in cache (conv4 Omniglot, 75 query images a task: 4 tasks a chunk, a query
    pass 1.4-1.8x faster on 2 cores; 25 support images, 5-way 5-shot: 13 tasks a chunk).
    Small inputs (e.g. sinusoid regression) stay in one chunk, where per-chunk overhead
    would dominate. Other devices keep ``chunk_size``.
    """
    if split[0].device.type != "cpu":
        return chunk_size
    per_task = sum(t[0].numel() for t in split)
    fit = max(1, CPU_CHUNK_ELEMENTS // max(per_task, 1))
    if fit >= split[0].shape[0]:
        return chunk_size
    return fit if chunk_size is None else min(fit, chunk_size)


def task_mean(per_task: Params) -> Params:
    """Average a tree with a leading task dimension over that dimension."""
    return {k: v.mean(dim=0) for k, v in per_task.items()}


def query_gradients(
    query_loss: Callable[..., LossAndAux], phi: Params, query: Batch, chunk_size: int | None
) -> tuple[Params, Tensor, dict[str, Tensor]]:
    """``∇L_q(φ_i)``, ``L_q(φ_i)`` and the aux dict of each task, in cache-sized vmap chunks.

    ``phi`` holds a leading task dimension B; returns a tree shaped like ``phi``, a (B,)
    tensor and a dict of (B,) tensors. Chunks as :func:`cache_chunk` says.
    """

    def one_task(phi: Params, q: Batch) -> tuple[Params, Tensor, dict[str, Tensor]]:
        g, (loss, aux) = grad_and_value(lambda p: query_loss(p, *q), has_aux=True)(phi)
        return g, loss, aux

    return vmap(one_task, chunk_size=cache_chunk(query, chunk_size))(phi, query)


def adapt_task(
    support_loss: Callable[..., Tensor],
    theta: Params,
    support: Batch,
    lam: float,
    inner: InnerOptimizer,
) -> Params:
    """One task's φ: ``inner`` run from θ on ``L_s(φ) + (λ/2)‖φ − θ‖²`` (λ = 0: ``L_s`` alone).

    ``support`` holds one task's tensors (no task dimension); differentiable in θ when
    ``inner`` is (MAML backpropagates through it).
    """
    center = theta if lam > 0 else None
    return inner(Objective(lambda p: support_loss(p, *support), center, lam), theta)


def adapt_tasks(
    support_loss: Callable[..., Tensor],
    theta: Params,
    support: Batch,
    lam: float,
    inner: InnerOptimizer,
    chunk_size: int | None,
) -> Params:
    """:func:`adapt_task` for each of the B tasks of ``support``: a tree with a leading B.

    In vmap chunks of ``chunk_size`` tasks, smaller on the CPU for large support sets
    (:func:`cache_chunk`); the result does not depend on the chunking.
    """

    def one_task(theta: Params, s: Batch) -> Params:
        return adapt_task(support_loss, theta, s, lam, inner)

    return map_tasks(one_task, theta, support, chunk_size=cache_chunk(support, chunk_size))


def support_fit(
    support_loss: Callable[..., Tensor], phi: Params, support: Batch, chunk_size: int | None
) -> tuple[Tensor, Tensor]:
    """``L_s(φ_i)`` and ``‖∇L_s(φ_i)‖`` of each task at its adapted φ_i: two (B,) tensors."""

    def one_task(phi: Params, s: Batch) -> tuple[Tensor, Tensor]:
        loss, grad = Objective(lambda p: support_loss(p, *s)).value_and_grad(phi)
        return loss, tree.norm(grad)

    return vmap(one_task, chunk_size=chunk_size)(phi, support)
