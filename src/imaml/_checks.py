"""Input checks of the functional API: once per call, outside ``vmap``, as one-line errors.

:func:`prepare` is the door every gradient function goes through: it checks θ
(:func:`check_params`), the splits' task dimensions (:func:`num_tasks`) and the splits against
a model's loss (:meth:`imaml.losses.ModelLoss.check_splits`), and wraps ``loss_fn`` so that its
output is checked (:func:`loss_parts`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from imaml import tree
from imaml.losses import ModelLoss
from imaml.objective import check_scalar_loss
from imaml.types import Batch, LossAndAux, Params, ParamsLike, SplitLike, TaskLoss


def check_params(params: ParamsLike) -> Params:
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


def check_adapted(phi: ParamsLike, theta: Params, tasks: int) -> Params:
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


def as_batch(split: SplitLike, name: str) -> Batch:
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
    loss_fn: TaskLoss, has_aux: bool
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
    loss_fn: TaskLoss,
    params: ParamsLike,
    has_aux: bool,
    **splits: SplitLike,
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
