"""The type aliases of the library, in one place (as :mod:`torch.types` does for torch).

Tensor shapes: B is the number of tasks of a meta-batch, N the examples of one task's split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

Params = dict[str, Tensor]
"""Named tensors, e.g. ``dict(model.named_parameters())``: the pytrees of :mod:`imaml.tree`."""

ParamsLike = Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]
"""What the functional API takes as parameters: a mapping, or ``model.named_parameters()``."""

Batch = tuple[Tensor, ...]
"""One split of a meta-batch: tensors whose dim 0 indexes the B tasks, e.g. ``(xs, ys)``."""

SplitLike = Tensor | Sequence[Tensor]
"""What the functional API takes as a split: a :data:`Batch`, a list of tensors or one tensor."""

Pair = tuple[Tensor, Tensor] | Sequence[Tensor]
"""A split for a learner: ``(x, y)`` with x of shape (B, N, ...) and y of shape (B, N, ...)."""

TaskLoss = Callable[..., Any]
"""``loss_fn(params, *batch) -> loss`` for ONE task (the functional API's ``loss_fn``): a 0-d
tensor, or with ``has_aux`` a pair ``(loss, {name: 0-d tensor})``."""

LossAndAux = tuple[Tensor, dict[str, Tensor]]
"""A :data:`TaskLoss`'s output in one form: the 0-d loss and its (possibly empty) aux dict."""

ParamsLoss = Callable[[Params], Tensor]
"""A function of one task's parameters returning a 0-d loss (:attr:`imaml.Objective.loss`)."""

OutputLoss = Callable[[Tensor, Tensor], Tensor]
"""``loss(output, target) -> 0-d tensor`` for one task, e.g. ``F.cross_entropy`` (learners)."""

MatVec = Callable[[Params], Params]
"""A linear operator ``v ↦ A v`` on trees, e.g. a Hessian-vector product."""
