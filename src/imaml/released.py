"""The released iMAML code's meta-gradient, as a labelled variant (never the library's "imaml").

The paper's code (aravindr93/imaml_dev, MIT) does not compute the meta-gradient of the paper's
objective. Per task, examples/omniglot_implicit_maml.py does:

1. ``fast_learner.learn_task(task, num_steps=n_steps)``: ``n_steps`` SGD steps of size
   ``inner_lr`` on the support loss alone, from θ (implicit_maml/learner_model.py,
   ``Learner.learn_on_data`` with ``add_regularization=False``);
2. the "pull back for regularization": one more SGD step of size ``inner_lr`` on the proximal
   term ``(λ/2)‖φ − θ‖²`` alone (``Learner.regularization_loss``), i.e.
   ``φ ← φ − inner_lr·λ·(φ − θ)``;
3. ``utils.cg_solve(fast_learner.matrix_evaluator(task, lam, cg_damping), ∇L_q(φ), cg_steps)``:
   CG from 0 on ``A v = (1 + cg_damping)·v + H v/(λ + lam_damping)``, ``H = ∇²L_s(φ)``
   (``Learner.matrix_evaluator``, whose ``lam_damping`` defaults to 10), stopping once
   ``‖r‖² < 1e-10`` (``cg_solve``'s ``residual_tol``); the solution is the task's gradient,
   unscaled, and the meta-gradient is its mean over the meta-batch.

At the README's settings (lr 0.1, λ 2, cg_damping 1) step 2 is ``φ ← 0.8·φ + 0.2·θ`` and the
operator ``2v + Hv/12``. Here the three steps are engine pieces: :class:`ReleasedGD` is an
inner optimizer (:class:`imaml.inner.InnerOptimizer`), :class:`ReleasedCG` a linear solver
(:class:`imaml.solvers.LinearSolver`) for the operator ``v + Hv/λ`` that
:func:`imaml.implicit_gradient` hands its solver, and :func:`released_gradient` runs them,
vmapped over the tasks.

Since ``A = (1 + d)·(I + H/λ')`` with ``λ' = (1 + d)(λ + lam_damping)``, the solve equals
``1/(1 + d)`` times exact iMAML's ``(I + H/λ')⁻¹`` (at λ = 2: half of it at λ' = 24), for CG
iterate by iterate (tests/test_released.py checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from imaml import tree
from imaml.diagnostics import Diagnostics
from imaml.implicit import adapt, implicit_gradient
from imaml.inner import GD, InnerOptimizer
from imaml.objective import Objective
from imaml.solvers import LinearSolver, Solution, conjugate_gradient
from imaml.types import MatVec, Params, ParamsLike, SplitLike, TaskLoss

RESIDUAL_TOL = 1e-10
"""The released ``cg_solve``'s ``residual_tol``: CG stops once ``‖r‖² < RESIDUAL_TOL``."""


@dataclass(frozen=True)
class ReleasedGD:
    """``steps`` plain SGD steps on the support loss, then one on the proximal term alone.

    ``φ ← φ − lr·∇L_s(φ)`` ``steps`` times from ``init``, then ``φ ← φ − lr·λ·(φ − θ)`` with
    the objective's λ and center θ (no pull-back when λ = 0, where it is plain GD). Released
    code: examples/omniglot_implicit_maml.py (``learn_task``, then the "pull back for
    regularization" step), implicit_maml/learner_model.py (``learn_on_data``).
    """

    steps: int
    lr: float

    def __post_init__(self) -> None:
        GD(self.steps, self.lr)  # the same checks

    def __call__(self, objective: Objective, init: Params) -> Params:
        """The adapted parameters of one task, shaped like ``init``."""
        params = GD(self.steps, self.lr)(Objective(objective.loss), init)
        if objective.lam > 0:
            pull = tree.sub(params, objective.center)
            params = tree.axpy(-self.lr * objective.lam, pull, params)
        return params


def damped_operator(matvec: MatVec, lam: float, cg_damping: float, lam_damping: float) -> MatVec:
    """The released operator ``v ↦ (1 + cg_damping)·v + Hv/(λ + lam_damping)`` from ``matvec``,
    the operator ``v ↦ v + Hv/λ`` of :func:`imaml.implicit_gradient` at the same λ > 0.

    With ``M = I + H/λ``: ``A = (1 + d − c)·I + c·M``, ``c = λ/(λ + lam_damping)``.
    Released code: implicit_maml/learner_model.py, ``Learner.matrix_evaluator``.
    """
    c = lam / (lam + lam_damping)
    a = 1.0 + cg_damping - c

    def apply(v: Params) -> Params:
        return tree.axpy(a, v, tree.scale(matvec(v), c))

    return apply


@dataclass(frozen=True)
class ReleasedCG:
    """The released code's solve, as a solver of :func:`imaml.implicit_gradient` at ``lam``.

    It receives implicit_gradient's ``v ↦ v + Hv/λ`` and runs ``iters`` CG steps from 0 on
    :func:`damped_operator`, stopping once ``‖r‖² < residual_tol`` (released code:
    implicit_maml/utils.py, ``cg_solve``). The Solution's residual and curvatures are those of
    the damped operator. ``lam`` must be the λ given to implicit_gradient. One difference:
    ``cg_solve`` tests the residual after each step, so a task whose query gradient already
    has ``‖b‖² < residual_tol`` still takes one step (x ≈ b/2), where this returns 0.
    """

    lam: float
    cg_damping: float = 1.0
    lam_damping: float = 10.0
    iters: int = 5
    residual_tol: float = RESIDUAL_TOL

    def __post_init__(self) -> None:
        if not (self.lam > 0 and math.isfinite(self.lam)):
            raise ValueError(f"lam must be a positive finite number, got {self.lam!r}")
        if self.cg_damping < 0 or self.lam_damping < 0:
            raise ValueError(
                f"cg_damping and lam_damping must be >= 0, got {self.cg_damping!r} and "
                f"{self.lam_damping!r}"
            )
        if not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"iters must be a positive int, got {self.iters!r}")

    def __call__(self, matvec: MatVec, b: Params) -> Solution:
        """CG on the damped operator for one task's right-hand side ``b`` (the query gradient)."""
        operator = damped_operator(matvec, self.lam, self.cg_damping, self.lam_damping)
        # conjugate_gradient stops at ‖r‖ ≤ tol·‖b‖: the released absolute bound, relative.
        tol = math.sqrt(self.residual_tol) / tree.norm(b)
        return conjugate_gradient(operator, b, self.iters, tol)  # type: ignore[arg-type]


def released_gradient(
    loss_fn: TaskLoss,
    params: ParamsLike,
    support: SplitLike,
    query: SplitLike,
    *,
    lam: float,
    steps: int,
    lr: float,
    cg_damping: float = 1.0,
    lam_damping: float = 10.0,
    cg_steps: int = 5,
    has_aux: bool = False,
    chunk_size: int | None = None,
    inner: InnerOptimizer | None = None,
    solver: LinearSolver | None = None,
) -> tuple[Params, Diagnostics]:
    """The released iMAML code's meta-gradient of B tasks: :class:`ReleasedGD` from θ, then
    :class:`ReleasedCG` in :func:`imaml.implicit_gradient`, vmapped over the tasks.

    ``inner`` or ``solver`` replaces one of the two released pieces, to measure the other
    alone: e.g. ``inner=GD(16, 0.1)`` adapts on the proximal objective as exact iMAML does (no
    pull-back step), ``solver=MINRES(5)`` solves exact iMAML's ``(I + H/λ) v = ∇L_q(φ)``; with
    both it is :func:`imaml.meta_gradient`. ``steps`` and ``lr`` then only define the released
    inner loop, the dampings and ``cg_steps`` only the released solve.

    Args:
        loss_fn, params, support, query, has_aux, chunk_size: as in :func:`imaml.meta_gradient`
            (e.g. xs (B, N·K, C, H, W), ys (B, N·K)).
        lam: λ > 0 of the pull-back step and the operator (``--lam``, 2.0 in the README).
        steps, lr: the inner SGD steps and their size (``--n_steps 16 --inner_lr 0.1``).
        cg_damping, lam_damping: the operator's dampings (``--cg_damping 1.0``; 10, the
            default of ``Learner.matrix_evaluator``).
        cg_steps: CG iterations (``--cg_steps 5``); at least 2, since the released code skips
            the solve (takes the query gradient) at 1.
        inner, solver: an inner optimizer (:class:`imaml.inner.InnerOptimizer`) and a linear
            solver (:class:`imaml.solvers.LinearSolver`) in place of the released ones; None
            (default): :class:`ReleasedGD` (``steps``, ``lr``), :class:`ReleasedCG`.

    Returns:
        ``(grads, info)``: the mean over tasks of the released gradient, shaped like
        ``params``, and implicit_gradient's (B,) diagnostics at the released φ: the inner ones
        (``inner_grad_norm``, ``inner_stationarity``) at λ, the solver ones of the damped
        operator.
    """
    if solver is None:
        if not isinstance(cg_steps, int) or cg_steps < 2:
            raise ValueError(
                f"cg_steps must be an int >= 2, got {cg_steps!r} (at 1 the released code takes "
                "the query gradient itself, which is first-order MAML at the released φ)"
            )
        solver = ReleasedCG(lam, cg_damping, lam_damping, cg_steps)
    inner = ReleasedGD(steps, lr) if inner is None else inner
    common = {"has_aux": has_aux, "chunk_size": chunk_size}
    phi = adapt(loss_fn, params, support, lam=lam, inner=inner, **common)
    return implicit_gradient(loss_fn, params, phi, support, query, lam=lam, solver=solver, **common)
