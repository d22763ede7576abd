"""The per-task objective that inner optimizers minimize.

``f(φ) = loss(φ) + (lam/2)·‖φ − center‖²`` for one task. With ``lam = 0`` it is the plain
(unregularized) loss, as MAML and Reptile use. The regularizer's value, gradient and Hessian
are added in closed form rather than differentiated, so they cost nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vjp

from imaml import tree
from imaml.types import MatVec, Params, ParamsLoss

LossFn = ParamsLoss
"""The former name of :data:`imaml.types.ParamsLoss`."""

HvpFn = MatVec
"""The former name of :data:`imaml.types.MatVec` here: ``v ↦ ∇²f(φ) v`` at a fixed point φ."""


@dataclass(frozen=True)
class Objective:
    """``f(φ) = loss(φ) + (lam/2)·‖φ − center‖²``, the inner problem of one task.

    Args:
        loss: maps a parameter dict to a 0-d tensor (one task, unbatched).
        center: the proximal center θ; required when ``lam > 0``.
        lam: the proximal strength λ ≥ 0.

    Every method works on one task; vmap the caller to batch tasks.
    """

    loss: ParamsLoss
    center: Params | None = None
    lam: float = 0.0

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if self.lam > 0 and self.center is None:
            raise ValueError("a proximal objective (lam > 0) needs a center")

    def _prox_value(self, params: Params) -> Tensor:
        diff = tree.sub(params, self.center)
        return 0.5 * self.lam * tree.dot(diff, diff)

    def value(self, params: Params) -> Tensor:
        """``f(params)`` as a 0-d tensor."""
        out = self.loss(params)
        if self.lam > 0:
            out = out + self._prox_value(params)
        return out

    def value_and_grad(self, params: Params) -> tuple[Tensor, Params]:
        """``(f(params), ∇f(params))``; the gradient is shaped like ``params``."""
        g, value = grad_and_value(self.loss)(params)
        if self.lam > 0:
            diff = tree.sub(params, self.center)
            value = value + 0.5 * self.lam * tree.dot(diff, diff)
            g = tree.axpy(self.lam, diff, g)
        return value, g

    def grad(self, params: Params) -> Params:
        """``∇f(params)`` alone (skips the regularizer's value), shaped like ``params``."""
        g = grad(self.loss)(params)
        if self.lam > 0:
            g = tree.axpy(self.lam, tree.sub(params, self.center), g)
        return g

    def linearize(self, params: Params) -> tuple[Tensor, Params, MatVec]:
        """``(f(φ), ∇f(φ), v ↦ ∇²f(φ)v)`` at ``φ = params``.

        The forward and backward passes run once; each call of the returned
        Hessian-vector product is one more backward pass through them (reverse over
        reverse, exact since the Hessian is symmetric). Use it when several products are
        needed at the same point, as in conjugate gradient.
        """

        def grad_with_value(p: Params) -> tuple[Params, Tensor]:
            return grad_and_value(self.loss)(p)

        g, pullback, value = vjp(grad_with_value, params, has_aux=True)

        def hvp(v: Params) -> Params:
            (hv,) = pullback(v)
            return tree.axpy(self.lam, v, hv) if self.lam > 0 else hv

        if self.lam > 0:
            value = value + self._prox_value(params)
            g = tree.axpy(self.lam, tree.sub(params, self.center), g)
        return value, g, hvp


def check_scalar_loss(loss: Tensor, where: str) -> Tensor:
    """Return ``loss`` if it is a 0-d floating tensor, else raise a ValueError naming ``where``."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"{where} must return a tensor, got {type(loss).__name__}")
    if loss.dim() != 0:
        raise ValueError(
            f"{where} must return a scalar (0-d) loss for one task, got shape "
            f"{tuple(loss.shape)}; reduce it, e.g. with .mean()"
        )
    if not torch.is_floating_point(loss):
        raise TypeError(f"{where} must return a floating-point loss, got {loss.dtype}")
    return loss
