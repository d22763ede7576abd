"""Meta-gradient accuracy against a closed form: the paper's synthetic experiment.

Linear-regression tasks in float64. Every method approximates the same quantity, the exact
meta-gradient of the proximal meta-objective ``F(θ) = mean_i L_q,i(φ*_i(θ))`` with
``φ*_i = argmin L_s,i(φ) + (λ/2)‖φ − θ‖²``, which for the quadratic task losses is

    g* = mean_i (I + H_i/λ)⁻¹ ∇L_q,i(φ*_i),   φ*_i = (H_i + λI)⁻¹ (c_i + λθ)

(``L_s,i(φ) = ½φᵀH_iφ − c_iᵀφ + const``). All methods run K steps of gradient descent on that
proximal inner objective from θ:

- iMAML: :func:`imaml.meta_gradient` (K inner steps, m CG steps);
- MAML: backpropagation through the K steps (θ enters as the start and the proximal center);
- first-order MAML: ``∇L_q(φ_K)``, the path's Jacobian taken as the identity.

The error is ``‖g − g*‖ / ‖g*‖``. The tasks and ``g*`` are :func:`imaml.testing.spread_linear_tasks`
and :meth:`imaml.testing.LinearTasks.exact_meta_gradient`.

Usage: python benchmarks/accuracy.py [--quick] [--out DIR] [--no-plot]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, vmap

import imaml
from _common import Result, benchmark_parser, hardware, run_benchmark, target
from imaml import tree
from imaml.inner import GD
from imaml.objective import Objective
from imaml.solvers import CG
from imaml.testing import LinearTasks, linear_loss, spread_linear_tasks
from imaml.types import Params

FULL = {
    "tasks": 8,
    "dim": 40,
    "support": 80,
    "query": 80,
    "lam": 1.0,
    "inner_lr": 0.1,
    "cg_steps": list(range(1, 21)),
    "inner_steps": [1, 2, 4, 8, 16, 32, 64, 128, 256],
    "exact_inner_steps": 300,
    "exact_cg_steps": 40,
}
QUICK = {
    **FULL,
    "tasks": 2,
    "dim": 6,
    "support": 12,
    "query": 12,
    "cg_steps": [1, 2, 4, 7],
    "inner_steps": [1, 8, 64],
    "exact_cg_steps": 7,
}


def imaml_gradient(tasks: LinearTasks, lam: float, lr: float, steps: int, cg: int) -> Tensor:
    """iMAML's meta-gradient from the library (flattened)."""
    grads, _ = imaml.meta_gradient(
        linear_loss,
        tasks.theta,
        tasks.support,
        tasks.query,
        lam=lam,
        inner=GD(steps, lr),
        solver=CG(cg),
    )
    return tree.flatten(grads)[0]


def maml_gradient(
    tasks: LinearTasks, lam: float, lr: float, steps: int, first_order: bool
) -> Tensor:
    """MAML's (or first-order MAML's) meta-gradient through K GD steps on the proximal objective."""

    def query_loss_after_inner(theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor):
        objective = Objective(lambda p: linear_loss(p, xs, ys), theta, lam)
        return linear_loss(GD(steps, lr)(objective, theta), xq, yq)

    def one_task(theta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Params:
        if first_order:
            objective = Objective(lambda p: linear_loss(p, xs, ys), theta, lam)
            phi = GD(steps, lr)(objective, theta)
            return grad(linear_loss)(phi, xq, yq)
        return grad(query_loss_after_inner)(theta, xs, ys, xq, yq)

    per_task = vmap(one_task, in_dims=(None, 0, 0, 0, 0))(tasks.theta, *tasks.support, *tasks.query)
    return tree.flatten({k: v.mean(0) for k, v in per_task.items()})[0]


def run(quick: bool = False, device: str = "cpu") -> Result:
    """Relative errors against ``g*``: iMAML vs CG steps; iMAML, MAML and FOMAML vs inner steps.

    Runs on the CPU in float64 whatever ``device`` (the errors are those of the algorithms).
    """
    s = QUICK if quick else FULL
    hw = hardware("cpu")
    tasks = spread_linear_tasks(s["tasks"], s["dim"], s["support"], s["query"])
    lam, lr = s["lam"], s["inner_lr"]
    exact = tasks.exact_meta_gradient(lam)

    def error(g: Tensor) -> float:
        return float(torch.linalg.norm(g - exact) / torch.linalg.norm(exact))

    vs_cg = [
        error(imaml_gradient(tasks, lam, lr, s["exact_inner_steps"], m)) for m in s["cg_steps"]
    ]
    vs_inner: dict[str, list[float]] = {"imaml": [], "maml": [], "fomaml": []}
    for k in s["inner_steps"]:
        vs_inner["imaml"].append(error(imaml_gradient(tasks, lam, lr, k, s["exact_cg_steps"])))
        vs_inner["maml"].append(error(maml_gradient(tasks, lam, lr, k, first_order=False)))
        vs_inner["fomaml"].append(error(maml_gradient(tasks, lam, lr, k, first_order=True)))
    rate = _geometric_rate(s["cg_steps"], vs_cg)
    result: Result = {
        "benchmark": "accuracy",
        "compared": (
            "every method against the exact meta-gradient of the proximal meta-objective "
            "mean_i L_q(phi*_i(theta)), phi*_i = argmin L_s(phi) + lam/2 |phi - theta|^2 "
            "(closed form, float64); all methods run K GD steps on that proximal inner "
            "objective; MAML backpropagates through them, first-order MAML does not, "
            "iMAML solves (I + H/lam) g = grad L_q(phi_K) with m CG steps"
        ),
        "settings": {**s, "dtype": "float64"},
        "hardware": hw,
        "vs_cg_steps": {"cg_steps": s["cg_steps"], "imaml": vs_cg},
        "vs_inner_steps": {"inner_steps": s["inner_steps"], **vs_inner},
        "imaml_cg_rate_per_step": rate,
        "targets": [
            target("iMAML relative error, best over CG steps", min(vs_cg), "<=", 1e-6),
            target("iMAML error reduction per CG step (geometric fit)", rate, "<=", 0.9),
        ],
    }
    return result


def _geometric_rate(steps: list[int], errors: list[float]) -> float:
    """``r`` of the least-squares fit ``error ≈ C·r^steps`` on the errors above 1e-13."""
    points = [(k, e) for k, e in zip(steps, errors, strict=True) if e > 1e-13]
    if len(points) < 2:
        return 0.0
    k = torch.tensor([p[0] for p in points], dtype=torch.float64)
    log_e = torch.tensor([p[1] for p in points], dtype=torch.float64).log()
    slope = ((k - k.mean()) * (log_e - log_e.mean())).sum() / ((k - k.mean()) ** 2).sum()
    return float(slope.exp())


def plot(result: dict[str, Any], path: Path) -> None:
    """Two panels: iMAML's error vs CG steps; every method's error vs inner steps."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    cg = result["vs_cg_steps"]
    a.semilogy(cg["cg_steps"], cg["imaml"], "o-", label="iMAML (inner problem solved)")
    a.axhline(1e-6, color="gray", ls=":", label="target 1e-6")
    a.set(xlabel="CG steps", ylabel="relative error of the meta-gradient", title="iMAML vs CG")
    inner = result["vs_inner_steps"]
    labels = {"imaml": "iMAML", "maml": "MAML", "fomaml": "first-order MAML"}
    for key, label in labels.items():
        b.loglog(inner["inner_steps"], inner[key], "o-", label=label)
    b.set(xlabel="inner GD steps", title="all methods vs inner steps")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Meta-gradient error vs the exact implicit one (linear regression, float64)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(run_benchmark("accuracy", benchmark_parser(__doc__).parse_args(), run, plot))
