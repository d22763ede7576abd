"""Your own inner optimizer in ``imaml.IMAML``: gradient descent with Nesterov momentum.

An inner optimizer is any callable ``(objective, init) -> params``. ``objective`` is one task's
:class:`imaml.Objective`, ``f(φ) = L_support(φ) + (λ/2)‖φ − θ‖²``, with ``value``, ``grad``,
``value_and_grad`` and ``linearize`` (value, gradient and Hessian-vector products); ``init`` and
the result are parameter dicts, and ``imaml.tree`` does arithmetic on them. It runs once per
task under ``torch.func.vmap``, so it uses tensor arithmetic only: no ``.item()``, no Python
``if`` on tensor values (use ``torch.where``), a fixed number of steps.

iMAML's meta-gradient needs only the inner solution, never the path to it: an optimizer that
solves the inner problem better gives a better meta-gradient, at no extra memory.

Shows: (1) on the same tasks and with as many gradient evaluations, Nesterov's method leaves a
smaller inner gradient norm than plain ``imaml.GD`` (``info["inner_grad_norm"]``: how far from
the inner minimizer each task stopped); (2) meta-training a sinusoid regressor
(``imaml.data.Sinusoid``) with ``imaml.IMAML(..., inner=NesterovGD(...))``.

Run:
    python examples/custom_inner_optimizer.py            # 1,000 meta-steps
    python examples/custom_inner_optimizer.py --smoke    # tiny settings, a few seconds
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import imaml
from imaml import tree


@dataclass(frozen=True)
class NesterovGD:
    """``steps`` steps of Nesterov's accelerated gradient with step ``lr`` and ``momentum``.

    ``v ← momentum·v − lr·∇f(φ + momentum·v)``, ``φ ← φ + v``; ``momentum=0`` is ``imaml.GD``.
    """

    steps: int
    lr: float
    momentum: float = 0.9

    def __call__(self, objective: imaml.Objective, init: tree.Params) -> tree.Params:
        params, velocity = init, tree.zeros_like(init)
        for _ in range(self.steps):
            lookahead = tree.axpy(self.momentum, velocity, params)
            velocity = tree.axpy(
                -self.lr, objective.grad(lookahead), tree.scale(velocity, self.momentum)
            )
            params = tree.add(params, velocity)
        return params


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Compare the inner optimizers, meta-train with Nesterov; print and return the numbers:
    ``gd_inner_grad_norm``, ``nesterov_inner_grad_norm`` (means over tasks), ``first_loss`` and
    ``last_loss`` (mean query loss of the first and last 10 % of meta-steps)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="meta-steps")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, for tests")
    args = parser.parse_args(argv)
    steps = 30 if args.smoke else args.steps

    torch.manual_seed(0)
    model = imaml.models.MLP(1, 1, hidden=(40, 40))
    sampler = imaml.data.TaskSampler(imaml.data.Sinusoid(), ways=1, shots=10, query_shots=10)
    lam, solver = 10.0, imaml.CG(iters=5)
    results = {}

    xs, ys, xq, yq = sampler.sample(25, step=0)
    for name, inner in [("gd", imaml.GD(10, 0.01)), ("nesterov", NesterovGD(10, 0.01))]:
        learner = imaml.IMAML(model, F.mse_loss, lam=lam, inner=inner, solver=solver)
        info = learner.meta_backward((xs, ys), (xq, yq))
        norm = results[f"{name}_inner_grad_norm"] = info["inner_grad_norm"].mean().item()
        print(f"{name:>8}: inner gradient norm after 10 steps {norm:.4f}")

    # The comparison left gradients in .grad; the loop's zero_grad clears them.
    learner = imaml.IMAML(model, F.mse_loss, lam=lam, inner=NesterovGD(10, 0.01), solver=solver)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        xs, ys, xq, yq = sampler.sample(25, step=step)
        optimizer.zero_grad()
        losses.append(learner.meta_backward((xs, ys), (xq, yq))["query_loss"].mean().item())
        optimizer.step()
    tenth = max(1, steps // 10)
    results["first_loss"] = sum(losses[:tenth]) / tenth
    results["last_loss"] = sum(losses[-tenth:]) / tenth
    print(
        f"iMAML with NesterovGD: mean query MSE {results['first_loss']:.3f} over the first "
        f"{tenth} meta-steps, {results['last_loss']:.3f} over the last {tenth}"
    )
    return results


if __name__ == "__main__":
    main()
