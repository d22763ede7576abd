"""Ready-made per-task ``loss_fn`` for a ``torch.nn.Module``, in the form the engine takes.

Each checks its tensors: the shapes of targets against the model's outputs on every call
(static, so it runs under ``vmap``), and, through :meth:`ModelLoss.check_splits`, which the
gradient entry points call once per call outside ``vmap``, the input dtypes, the targets of
every split and the range of class labels. A loss may run its model on class-balanced
batches of a task's examples (:class:`ClassBatches`), as a BatchNorm network sees a smaller task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from imaml.types import Batch, Params


@dataclass(frozen=True)
class ClassBatches:
    """Class-balanced batches of one task's examples: ``shots`` examples of each of ``ways``
    classes per batch.

    A task's examples are laid out class by class, ``Q`` of each (``[0] * Q + [1] * Q + ...``,
    as :class:`imaml.data.TaskSampler` lays them out; a regression task is one "class"). Batch
    ``g`` holds examples ``g·k .. g·k + k - 1`` of every class (``k = shots``), so a network with
    BatchNorm, which normalizes with the statistics of its batch, sees each batch as it sees a
    task with ``k`` examples per class, e.g. the released code's 1-query tasks at ``k = 1``.
    """

    ways: int
    shots: int

    def __post_init__(self) -> None:
        if self.ways < 1 or self.shots < 1:
            raise ValueError(f"ways and shots must be >= 1, got {self.ways} and {self.shots}")

    def count(self, examples: int) -> int:
        """How many batches ``examples`` examples make; a ValueError unless they split evenly."""
        size = self.ways * self.shots
        if examples % size:
            raise ValueError(
                f"{examples} examples do not split into batches of {self.shots} of each of "
                f"{self.ways} classes ({size} examples)"
            )
        return examples // size

    def split(self, t: Tensor) -> Tensor:
        """One task's ``t`` (ways·Q, ...) as its batches (Q / shots, ways·shots, ...)."""
        groups = self.count(t.shape[0])
        t = t.reshape(self.ways, groups, self.shots, *t.shape[1:]).transpose(0, 1)
        return t.reshape(groups, self.ways * self.shots, *t.shape[3:])

    def merge(self, t: Tensor) -> Tensor:
        """The inverse of :meth:`split`: (G, ways·shots, ...) back to (ways·G·shots, ...)."""
        groups = t.shape[0]
        t = t.reshape(groups, self.ways, self.shots, *t.shape[2:]).transpose(0, 1)
        return t.reshape(self.ways * groups * self.shots, *t.shape[3:])


class ModelLoss(ABC):
    """A per-task loss ``loss_fn(params, x, y)`` of ``model``, run with ``params`` through
    ``torch.func.functional_call``; subclasses say how targets are checked and scored.

    With ``batches``, the model runs once per class-balanced batch of the examples
    (:class:`ClassBatches`) and the loss is taken over all of them: with batches of equal size,
    the mean of the batches' losses and accuracies. Without, it runs on all examples at once.
    """

    kind = "loss"

    def __init__(self, model: nn.Module, batches: ClassBatches | None = None) -> None:
        self.model = model
        self.batches = batches

    def outputs(self, params: Params, x: Tensor) -> Tensor:
        """The model's outputs for one task's inputs ``x`` (N, *input_shape), in ``x``'s order."""
        if self.batches is None or self.batches.count(x.shape[0]) == 1:
            return functional_call(self.model, params, (x,))
        per_batch = vmap(lambda xb: functional_call(self.model, params, (xb,)))
        return self.batches.merge(per_batch(self.batches.split(x)))

    @abstractmethod
    def check_targets(self, outputs: torch.Size, y: Tensor, name: str) -> None:
        """Raise a ValueError naming ``name`` unless one task's targets ``y`` fit its outputs
        of shape ``outputs``."""

    def check_splits(self, params: Params, splits: Mapping[str, Batch]) -> dict[str, torch.Size]:
        """Check each split ``(xs, ys)`` (dim 0 indexing the B > 0 tasks) before a batched call.

        The inputs must have a dtype of ``params`` and the targets fit the model's outputs,
        whose shape comes from a forward pass on the split's first task (no gradient: a
        small fraction of a batched call's cost; the engine's models are pure functions,
        since ``vmap`` forbids random and in-place ops, so it has no side effect). Returns
        each split's per-task output shape; raises a ValueError naming the tensor.
        """
        dtypes = sorted({str(p.dtype) for p in params.values()})
        shapes = {}
        for name, split in splits.items():
            if len(split) != 2:
                raise ValueError(
                    f"{name} must be (xs, ys) for {self.kind}, got {len(split)} tensors"
                )
            x, y = split
            if str(x.dtype) not in dtypes:
                raise ValueError(
                    f"{name}[0] (the inputs) has dtype {x.dtype}, but the parameters are "
                    f"{' and '.join(dtypes)}; convert the inputs, e.g. with .to({dtypes[0]})"
                )
            with torch.no_grad():
                shapes[name] = self.outputs(params, x[0]).shape
            self.check_targets(shapes[name], y[0], f"{name}[1]")
        return shapes


class ClassificationLoss(ModelLoss):
    """Cross-entropy with ``{"accuracy": ...}`` as aux; see :func:`classification_loss`."""

    kind = "classification_loss"

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``(cross-entropy, {"accuracy": ...})`` of one task: x (N, *input), y (N,) int64."""
        logits = self.outputs(params, x)
        self.check_targets(logits.shape, y, "y")
        return F.cross_entropy(logits, y), {"accuracy": accuracy(logits, y)}

    def check_targets(self, outputs: torch.Size, y: Tensor, name: str) -> None:
        """Labels must be int64 class indices shaped like the logits ``outputs`` less the last
        (class) dimension."""
        if y.dtype != torch.int64:
            raise ValueError(
                f"{name} (the labels) has dtype {y.dtype}; {self.kind} needs int64 class "
                "indices (convert with .long())"
            )
        if tuple(y.shape) != tuple(outputs[:-1]):
            raise ValueError(
                f"{name} (the labels) has shape {tuple(y.shape)} per task, but the logits have "
                f"shape {tuple(outputs)}: the labels must have shape {tuple(outputs[:-1])}"
            )

    def check_splits(self, params: Params, splits: Mapping[str, Batch]) -> dict[str, torch.Size]:
        """:meth:`ModelLoss.check_splits`, and every label in ``[0, classes)`` (classes: the
        logits' last dimension), in one host synchronization for all splits."""
        shapes = super().check_splits(params, splits)
        bounds = torch.stack([torch.stack(split[1].aminmax()) for split in splits.values()])
        for (name, shape), (low, high) in zip(shapes.items(), bounds.tolist(), strict=True):
            if low < 0 or high >= shape[-1]:
                raise ValueError(
                    f"{name}[1] holds labels from {low} to {high}, but the model outputs "
                    f"{shape[-1]} classes: labels must be in [0, {shape[-1]})"
                )
        return shapes


class RegressionLoss(ModelLoss):
    """Mean squared error; see :func:`regression_loss`."""

    kind = "regression_loss"

    def __call__(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        """The mean squared error of one task: x (N, d_in), y shaped like the outputs."""
        predictions = self.outputs(params, x)
        self.check_targets(predictions.shape, y, "y")
        return torch.mean((predictions - y) ** 2)

    def check_targets(self, outputs: torch.Size, y: Tensor, name: str) -> None:
        """The targets must have the predictions' shape ``outputs`` (no broadcasting)."""
        if tuple(y.shape) != tuple(outputs):
            raise ValueError(
                f"{name} (the targets) has shape {tuple(y.shape)} per task, but the predictions "
                f"have shape {tuple(outputs)}; they must match (no broadcasting)"
            )


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """The fraction of rows of ``logits`` (N, C) whose argmax is ``labels`` (N,): a 0-d tensor
    of ``logits``' dtype. A metric for :class:`imaml.IMAML`'s ``metrics=`` as well."""
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()


def classification_loss(
    model: nn.Module, batches: ClassBatches | None = None
) -> ClassificationLoss:
    """``loss_fn(params, x, y) -> (cross-entropy, {"accuracy": ...})`` for one task.

    ``x`` has shape (N, *input_shape) and ``y`` shape (N,) with int64 class indices in
    ``[0, classes)``. Use with ``has_aux=True``. The model runs through
    ``torch.func.functional_call`` with ``params``, on all N examples at once or, with
    ``batches``, once per class-balanced batch (:class:`ClassBatches`). Wrong label shapes or
    dtypes raise a ValueError; so do out-of-range labels when given to the gradient entry points.
    """
    return ClassificationLoss(model, batches)


def regression_loss(model: nn.Module, batches: ClassBatches | None = None) -> RegressionLoss:
    """``loss_fn(params, x, y) -> mean squared error`` for one task; x (N, d_in), y (N, d_out).

    ``y`` must have exactly the shape of the model's outputs: a ValueError otherwise (a
    target of shape (N,) against outputs (N, 1) would broadcast to an (N, N) error).
    ``batches`` as in :func:`classification_loss` (a regression task is one class).
    """
    return RegressionLoss(model, batches)
