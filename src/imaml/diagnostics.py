"""The per-task diagnostics every gradient function returns, as a typed record.

:func:`imaml.meta_gradient`, :func:`imaml.implicit_gradient`, :func:`imaml.maml_gradient`,
:func:`imaml.reptile_gradient`, :func:`imaml.released.released_gradient` and the learners'
``meta_backward`` return ``info``, a :class:`Diagnostics`: typed fields (as jaxopt and optax
return NamedTuples) that also read as a mapping by name, ``info["query_loss"]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from torch import Tensor


def inner_stationarity(grad_norm: Tensor, distance: Tensor, lam: float) -> Tensor:
    """``‖∇f(φ)‖ / (λ‖φ − θ‖)`` per task, from (B,) ``grad_norm`` and ``distance``: 0 at the
    proximal minimizer, near 1 where the support gradient has vanished, ``inf`` at φ = θ
    (:attr:`Diagnostics.inner_stationarity`)."""
    return grad_norm / (lam * distance)


@dataclass(frozen=True, eq=False)
class Diagnostics(Mapping[str, Tensor]):
    """Per-task diagnostics of a meta-batch of B tasks: every tensor has shape (B,).

    A read-only mapping of the fields that are set (not None), in the order below, then
    ``query_<name>`` for each entry of :attr:`aux`: ``info["query_loss"]``, ``info.keys()``,
    ``"query_loss" in info``, ``dict(info)`` and iteration work as on a dict, and
    :meth:`to_dict` is that dict. A function leaves the fields it does not compute at None
    (then they are not keys): MAML and first-order MAML set the two losses and
    ``inner_grad_norm``, Reptile ``support_loss`` and ``inner_grad_norm``; iMAML sets all.

    Attributes:
        support_loss: ``L_s(φ)``, the support loss at the adapted φ.
        query_loss: ``L_q(φ)``, the query loss at φ.
        inner_grad_norm: ``‖∇f(φ)‖`` for the inner objective ``f(φ) = L_s(φ) + (λ/2)‖φ − θ‖²``
            (iMAML; how well the inner problem was solved), or ``‖∇L_s(φ)‖`` (MAML, Reptile:
            no proximal term).
        inner_distance: ``‖φ − θ‖``.
        inner_stationarity: ``inner_grad_norm / (λ·inner_distance)``, scale-free: 0 at the
            proximal minimizer the implicit gradient assumes, where the two terms cancel; near
            1 when the support gradient has vanished but the proximal pull is unbalanced (far
            from it); ``inf`` when φ = θ (e.g. after 0 inner steps).
        solver_residual: ``‖A g − b‖/‖b‖`` of the linear solve ``A g = b``, ``A = I + H/λ``,
            ``H = ∇²L_s(φ)``, ``b = ∇L_q(φ)``.
        solver_min_curvature: the smallest ``vᵀAv/vᵀv`` the solver found (the extreme Ritz
            value of the Krylov space of CG or MINRES), NaN if the solver does not say;
            negative proves ``A`` indefinite, where CG is unreliable
            (:class:`imaml.solvers.Solution`).
        solver_max_curvature: the largest such value, NaN if the solver does not say:
            gradient descent with step ``lr`` on the inner objective (Hessian ``λA``) cannot
            converge to φ* when ``lr·λ·solver_max_curvature > 2``.
        solver_correction: ``‖g − ∇L_q(φ)‖/‖∇L_q(φ)‖``, how much the implicit correction
            changed the query gradient (0 is first-order MAML at φ).
        aux: the ``loss_fn``'s aux entries on the query sets at φ, by the ``loss_fn``'s names
            (``has_aux=True``, or a learner's ``metrics=``; e.g. ``{"accuracy": (B,)}``),
            read as ``info["query_<name>"]``; empty without aux.
    """

    support_loss: Tensor
    query_loss: Tensor | None = None
    inner_grad_norm: Tensor | None = None
    inner_distance: Tensor | None = None
    inner_stationarity: Tensor | None = None
    solver_residual: Tensor | None = None
    solver_min_curvature: Tensor | None = None
    solver_max_curvature: Tensor | None = None
    solver_correction: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Tensor]:
        """``{name: (B,) tensor}``: the fields that are set, then ``query_<name>`` per aux entry
        (an aux entry named ``loss`` replaces ``query_loss``)."""
        fields = (f.name for f in dataclasses.fields(self) if f.name != "aux")
        out = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        return {**out, **{f"query_{k}": v for k, v in self.aux.items()}}

    def __getitem__(self, key: str) -> Tensor:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
