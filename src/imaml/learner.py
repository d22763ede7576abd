"""The model-level API: meta-learn an ``nn.Module``'s parameters with iMAML, MAML or Reptile.

A learner wraps a model and a loss ``loss(output, target) -> scalar`` (e.g. ``F.cross_entropy``)
and fills the model's ``.grad`` with the meta-gradient, so a meta-step is the usual PyTorch step::

    learner = imaml.IMAML(model, F.cross_entropy, lam=2.0, inner=imaml.GD(16, 0.1),
                          solver=imaml.CG(5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    info = learner.meta_backward((xs, ys), (xq, yq))  # x: (B, N, ...), y: (B, N, ...)
    optimizer.step()
    adapted = learner.adapt((xs, ys))  # per-task adapted models
    logits = adapted(xq)  # (B, N, ways)

Underneath are the functional :func:`imaml.meta_gradient`, :func:`imaml.maml_gradient`,
:func:`imaml.reptile_gradient` and :func:`imaml.adapt`, with the same numbers.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

import imaml
from imaml._checks import check_lam, num_tasks
from imaml.diagnostics import Diagnostics
from imaml.inner import InnerOptimizer
from imaml.solvers import LinearSolver
from imaml.types import Batch, OutputLoss, Pair, Params

LossFn = OutputLoss
"""The former name of :data:`imaml.types.OutputLoss` here."""


class AdaptedModel:
    """A model adapted to each of B tasks: the model and its parameters per task.

    Calling it on inputs with a leading task dimension runs task i's parameters on input i
    (``torch.func.vmap`` over ``functional_call``); tensors that were not meta-learned (buffers,
    parameters with ``requires_grad=False``) are the model's own.

    Attributes:
        model: the wrapped module (its parameters are θ, not changed by adaptation).
        params: ``{name: tensor of shape (B, *param.shape)}``, the adapted parameters φ.
    """

    def __init__(self, model: nn.Module, params: Params, chunk_size: int | None = None) -> None:
        self.model = model
        self.params = params
        self.chunk_size = chunk_size

    @property
    def num_tasks(self) -> int:
        """B, the number of tasks adapted to."""
        return next(iter(self.params.values())).shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def __call__(self, x: Tensor) -> Tensor:
        """Outputs (B, N, ...) of each task's model on its inputs ``x`` of shape (B, N, ...)."""
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] != self.num_tasks:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"inputs must have a leading task dimension of {self.num_tasks} (one row per "
                f"adapted task), got {got}"
            )
        _check_running_stats(self.model)

        def one_task(params: Params, x: Tensor) -> Tensor:
            return functional_call(self.model, params, (x,))

        return vmap(one_task, chunk_size=self.chunk_size)(self.params, x)

    def task(self, i: int) -> nn.Module:
        """A copy of the model holding task ``i``'s adapted parameters (no gradients).

        Raises:
            IndexError: ``i`` is not in ``[-B, B)``.
        """
        if not -self.num_tasks <= i < self.num_tasks:
            raise IndexError(f"task {i} out of range for {self.num_tasks} adapted tasks")
        module = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.grad = None
                if name in self.params:
                    p.copy_(self.params[name][i])
        return module

    def __repr__(self) -> str:
        return f"AdaptedModel({type(self.model).__name__}, tasks={self.num_tasks})"


class MetaLearner(ABC):
    """What :class:`IMAML`, :class:`MAML` and :class:`Reptile` share; use one of them.

    The meta-parameters θ are the model's parameters with ``requires_grad=True``; the others
    and the buffers are held fixed (the module's own tensors in every ``functional_call``).

    Args:
        model: the network; ``model(x)`` maps one task's inputs (N, ...) to outputs (N, ...).
            BatchNorm must use batch statistics (``track_running_stats=False``, as
            :class:`imaml.models.Conv4`) or run in eval mode: running statistics cannot be
            updated per task.
        loss: ``loss(output, target) -> 0-d tensor`` for one task, e.g. ``F.cross_entropy``.
        inner: the inner optimizer (:mod:`imaml.inner`), run from θ on each task.
        metrics: optional ``{name: fn(output, target) -> 0-d tensor}`` (e.g. an accuracy),
            reported per task in ``info`` as ``query_<name>`` by IMAML and MAML.
        chunk_size: process tasks in vmap chunks of this size to bound memory (None: all).
    """

    _needs_query = True  # whether meta_backward needs the query sets
    _adapt_lam = 0.0  # the proximal strength of adaptation (0: plain)

    def __init__(
        self,
        model: nn.Module,
        loss: OutputLoss,
        *,
        inner: InnerOptimizer,
        metrics: Mapping[str, OutputLoss] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss):
            raise ValueError(f"loss must be a callable loss(output, target), got {loss!r}")
        metrics = dict(metrics or {})
        for name, fn in metrics.items():
            if not callable(fn):
                raise ValueError(f"metrics[{name!r}] must be a callable fn(output, target)")
        if not callable(inner):
            raise ValueError("inner must be an inner optimizer: (objective, init) -> params")
        self.model = model
        self.loss = loss
        self.inner = inner
        self.metrics = metrics
        self.chunk_size = chunk_size
        self.meta_parameters()  # fails early for a model with nothing to meta-learn

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        """θ: the model's parameters with ``requires_grad=True``, by name.

        Raises:
            ValueError: the model has none.
        """
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if not params:
            raise ValueError("the model has no parameters with requires_grad=True to meta-learn")
        return params

    def meta_backward(self, support: Pair, query: Pair | None = None) -> Diagnostics:
        """Accumulate the mean meta-gradient over the B tasks into the parameters' ``.grad``.

        Like ``loss.backward()``, it adds to ``.grad`` (setting it where it is None): call
        ``optimizer.zero_grad()`` before, and any torch optimizer, LR scheduler,
        ``clip_grad_norm_`` or gradient all-reduce after. Parameters with
        ``requires_grad=False`` get no gradient.

        Args:
            support: ``(x, y)``, x of shape (B, N, ...) and y of shape (B, N, ...): task i's
                support set is ``(x[i], y[i])``.
            query: the query sets, laid out like ``support`` (its own N). IMAML and MAML need
                them; Reptile's update uses the support sets alone and ignores them.

        Returns:
            The functional API's diagnostics, a :class:`~imaml.diagnostics.Diagnostics` of
            (B,) tensors read by name as in a dict (e.g. ``info["support_loss"]``,
            ``info["query_loss"]``, ``info["query_<metric>"]``).

        Raises:
            ValueError: a split is not a pair of tensors shaped (B, N, ...) with the same B.
        """
        support = _check_pair(support, "support")
        if query is not None:
            query = _check_pair(query, "query")
            num_tasks(support=support, query=query)
        elif self._needs_query:
            raise ValueError(f"{type(self).__name__}.meta_backward needs query sets (x, y)")
        _check_running_stats(self.model)
        params = self.meta_parameters()
        grads, info = self._meta_gradient(params, support, query)
        for name, p in params.items():
            if p.grad is None:
                p.grad = grads[name]
            else:
                p.grad += grads[name]
        return info

    def adapt(self, support: Pair) -> AdaptedModel:
        """Adapt θ to each of the B support sets ``(x, y)`` (shaped as in :meth:`meta_backward`).

        iMAML adapts on the proximal objective ``L_s(φ) + (λ/2)‖φ − θ‖²`` (as it meta-learns),
        MAML and Reptile on the support loss alone, each with its inner optimizer.

        Returns:
            An :class:`AdaptedModel` holding each task's adapted parameters (B of them).

        Raises:
            ValueError: ``support`` is not a pair of tensors shaped (B, N, ...) with one B.
        """
        support = _check_pair(support, "support")
        _check_running_stats(self.model)
        phi = imaml.adapt(
            self._loss_fn,
            self.meta_parameters(),
            support,
            lam=self._adapt_lam,
            inner=self.inner,
            has_aux=bool(self.metrics),
            chunk_size=self.chunk_size,
        )
        return AdaptedModel(self.model, phi, self.chunk_size)

    @abstractmethod
    def _meta_gradient(
        self, params: Params, support: Batch, query: Batch | None
    ) -> tuple[Params, Diagnostics]:
        """The functional API's ``(grads, info)`` for checked inputs."""

    def _functional_args(self) -> dict[str, Any]:
        """The keyword arguments every functional gradient takes."""
        return {"inner": self.inner, "has_aux": bool(self.metrics), "chunk_size": self.chunk_size}

    def _loss_fn(self, params: Params, x: Tensor, y: Tensor) -> Any:
        """One task's loss (and metrics, if any) of the model at ``params``."""
        output = functional_call(self.model, params, (x,))
        loss = self.loss(output, y)
        if not self.metrics:
            return loss
        return loss, {name: fn(output, y) for name, fn in self.metrics.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, inner={self.inner})"


class IMAML(MetaLearner):
    """iMAML (Rajeswaran et al. 2019): the implicit meta-gradient of :func:`imaml.meta_gradient`.

    Args:
        model, loss, inner, metrics, chunk_size: as in :class:`MetaLearner`.
        lam: the proximal strength λ > 0 (the paper: 2.0 on Omniglot).
        solver: the linear solver (:mod:`imaml.solvers`) for ``(I + H/λ) g = ∇L_q(φ*)``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: OutputLoss,
        *,
        lam: float,
        inner: InnerOptimizer,
        solver: LinearSolver,
        metrics: Mapping[str, OutputLoss] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(model, loss, inner=inner, metrics=metrics, chunk_size=chunk_size)
        self.lam = check_lam(lam)
        self.solver = solver

    @property
    def _adapt_lam(self) -> float:
        return self.lam

    def _meta_gradient(
        self, params: Params, support: Batch, query: Batch | None
    ) -> tuple[Params, Diagnostics]:
        return imaml.meta_gradient(
            self._loss_fn, params, support, query, lam=self.lam, solver=self.solver,
            **self._functional_args(),
        )  # fmt: skip


class MAML(MetaLearner):
    """MAML (Finn et al. 2017) through the unrolled inner steps, as :func:`imaml.maml_gradient`.

    Args:
        model, loss, inner, metrics, chunk_size: as in :class:`MetaLearner`.
        first_order: first-order MAML (the query gradient at φ, the inner path not
            differentiated).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: OutputLoss,
        *,
        inner: InnerOptimizer,
        first_order: bool = False,
        metrics: Mapping[str, OutputLoss] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(model, loss, inner=inner, metrics=metrics, chunk_size=chunk_size)
        self.first_order = first_order

    def _meta_gradient(
        self, params: Params, support: Batch, query: Batch | None
    ) -> tuple[Params, Diagnostics]:
        return imaml.maml_gradient(
            self._loss_fn, params, support, query, first_order=self.first_order,
            **self._functional_args(),
        )  # fmt: skip


class Reptile(MetaLearner):
    """Reptile (Nichol et al. 2018): ``.grad`` gets ``θ − φ̄``, as :func:`imaml.reptile_gradient`.

    An optimizer step along ``−.grad`` moves θ toward the adapted parameters (with SGD at
    learning rate ε, Reptile's ``θ ← θ + ε(φ̄ − θ)``). Arguments as in :class:`MetaLearner`.
    """

    _needs_query = False

    def _meta_gradient(
        self, params: Params, support: Batch, query: Batch | None
    ) -> tuple[Params, Diagnostics]:
        return imaml.reptile_gradient(self._loss_fn, params, support, **self._functional_args())


def _check_pair(split: Any, name: str) -> Batch:
    """``split`` as a tuple ``(x, y)`` of tensors shaped (B, N, ...) with one B; else ValueError."""
    if not (
        isinstance(split, (tuple, list))
        and len(split) == 2
        and all(isinstance(t, Tensor) for t in split)
    ):
        raise ValueError(
            f"{name} must be a pair (x, y) of tensors with a leading task dimension, got "
            f"{_describe(split)}"
        )
    for part, t in zip("xy", split, strict=True):
        if t.dim() < 2:
            raise ValueError(
                f"{name} {part} must have shape (B tasks, N examples, ...), got {tuple(t.shape)}"
            )
    split = tuple(split)
    num_tasks(**{name: split})
    return split


def _describe(value: Any) -> str:
    """A short description of a user's value for an error message: its type (and its items')."""
    if isinstance(value, (tuple, list)):
        types = ", ".join(type(v).__name__ for v in value)
        return f"a {type(value).__name__} of ({types})"
    return f"a {type(value).__name__}"


def _check_running_stats(model: nn.Module) -> None:
    """ValueError if a submodule would update running statistics (BatchNorm in training mode)."""
    for name, module in model.named_modules():
        if module.training and getattr(module, "track_running_stats", False):
            raise ValueError(
                f"{name or 'the model'} ({type(module).__name__}) tracks running statistics in "
                "training mode, which cannot be updated per task: build it with "
                "track_running_stats=False (batch statistics, as imaml.models.Conv4) or call "
                "model.eval()"
            )
