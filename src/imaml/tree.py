"""Arithmetic on parameter dictionaries (``dict[str, Tensor]``), the pytrees of this library.

Every function is pure and works the same on one task's parameters or, under
``torch.func.vmap``, on a batch of them. Reductions (:func:`dot`, :func:`norm`) return a
0-d tensor (never a Python float), so nothing here synchronizes with the device.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from imaml.types import Params


def map_(fn: Callable[..., Tensor], *trees: Mapping[str, Tensor]) -> Params:
    """Apply ``fn`` leaf by leaf to trees with the same keys: ``{k: fn(t1[k], t2[k], ...)}``."""
    first = trees[0]
    return {k: fn(*(t[k] for t in trees)) for k in first}


def add(a: Params, b: Params) -> Params:
    """``a + b`` leafwise."""
    return {k: a[k] + b[k] for k in a}


def sub(a: Params, b: Params) -> Params:
    """``a - b`` leafwise."""
    return {k: a[k] - b[k] for k in a}


def scale(a: Params, s: Tensor | float) -> Params:
    """``s * a`` for a scalar ``s`` (a 0-d tensor or a float)."""
    return {k: s * v for k, v in a.items()}


def axpy(s: Tensor | float, x: Params, y: Params) -> Params:
    """``s * x + y`` leafwise, for a scalar ``s``, one fused kernel per leaf."""
    if isinstance(s, Tensor):
        return {k: torch.addcmul(y[k], s, x[k]) for k in x}
    return {k: torch.add(y[k], x[k], alpha=s) for k in x}


def zeros_like(a: Params) -> Params:
    """A tree of zeros shaped like ``a``."""
    return {k: torch.zeros_like(v) for k, v in a.items()}


def dot(a: Params, b: Params) -> Tensor:
    """Inner product ``sum_k <a[k], b[k]>`` as a 0-d tensor."""
    return functools.reduce(operator.add, (torch.sum(a[k] * b[k]) for k in a))


def norm(a: Params) -> Tensor:
    """Euclidean norm of all leaves together, as a 0-d tensor."""
    return torch.sqrt(dot(a, a))


def where(cond: Tensor, a: Params, b: Params) -> Params:
    """Leafwise ``torch.where(cond, a, b)`` for a 0-d boolean ``cond`` (batched under vmap)."""
    return {k: torch.where(cond, a[k], b[k]) for k in a}


def detach(a: Mapping[str, Tensor]) -> Params:
    """A copy of the tree whose leaves are detached from any autograd graph."""
    return {k: v.detach() for k, v in a.items()}


def flatten(a: Params) -> tuple[Tensor, Callable[[Tensor], Params]]:
    """Concatenate all leaves into one vector of shape (n,) and return it with its inverse.

    The inverse maps any tensor of shape (n,) back to a tree shaped like ``a``.
    """
    keys = list(a)
    shapes = [a[k].shape for k in keys]
    sizes = [a[k].numel() for k in keys]
    flat = torch.cat([a[k].reshape(-1) for k in keys])

    def unflatten(vec: Tensor) -> Params:
        parts = torch.split(vec, sizes)
        return {k: p.reshape(s) for k, p, s in zip(keys, parts, shapes, strict=True)}

    return flat, unflatten
