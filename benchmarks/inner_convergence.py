"""Does the inner optimizer solve the proximal problem the implicit meta-gradient assumes?

Usage: python benchmarks/inner_convergence.py CHECKPOINT [--steps 0,4,...] [--tasks 20]
       [--split val] [--set KEY=VALUE ...] [--data-dir DIR] [--json]

Adapts a trained checkpoint's parameters θ to ``--tasks`` tasks with its own inner optimizer
run for each number of ``--steps``, and prints the means over tasks of the proximal objective
``f(φ) = L_s(φ) + (λ/2)‖φ − θ‖²``, the support loss, ‖∇f(φ)‖ (0 at the exact minimizer φ*
that iMAML's meta-gradient formula is derived at), ‖φ − θ‖, the query metric of φ, and the
extreme eigenvalues of the Hessian ∇²f(φ) (20 Lanczos steps; GD with step lr cannot settle
where lr·λ_max > 2, and φ is no minimizer where λ_min < 0), then the median and the smallest
over tasks of the stationarity ‖∇f(φ)‖ / (λ‖φ − θ‖) (0 at φ*, 1 where ∇L_s(φ) = 0: a task
that an early stop at a stationarity tolerance would end has a small one). The
row with the config's own number of steps is what training and ``imaml eval`` use; rows with
many steps approach φ* where the inner optimizer converges.
"""

from __future__ import annotations

from dataclasses import replace

from _checkpoint_cli import checkpoint_parser, print_header, print_row
from imaml.diagnostics import inner_stationarity
from imaml.training import (
    Adaptation,
    DataSource,
    build_sampler,
    inner_progress,
    load_trained_model,
)
from imaml.training.builders import build_inner


def main() -> None:
    parser = checkpoint_parser(__doc__, tasks=20, split="val")
    parser.add_argument("--steps", default="0,4,8,16,32,64,128,256")
    args = parser.parse_args()

    model = load_trained_model(args.checkpoint, args.overrides)
    source = DataSource(args.data_dir, args.cache_dir)
    tasks = build_sampler(model.config, args.split, source, args.seed).sample_tasks(
        range(args.tasks)
    )
    metric, base = model.problem.metric, Adaptation.of(model.config)
    if not args.json:
        print(
            f"{model.path} (step {model.step}), {args.tasks} {args.split} tasks, "
            f"λ = {base.lam}, inner: {model.config.inner}"
        )
        columns = (
            "f(φ)", "L_s(φ)", "‖∇f(φ)‖", "‖φ−θ‖", metric, "λ_min(∇²f)", "λ_max(∇²f)",
            "stat. med", "stat. min",
        )  # fmt: skip
        print_header("steps", columns)
    for steps in (int(k) for k in args.steps.split(",")):
        adaptation = replace(base, inner=build_inner(model.config.inner, steps))
        out = inner_progress(model.problem, model.params, tasks, adaptation)
        stationarity = inner_stationarity(out.grad_norm, out.distance, adaptation.lam)
        row = {
            "steps": steps,
            "objective": out.objective.mean().item(),
            "support_loss": out.support_loss.mean().item(),
            "grad_norm": out.grad_norm.mean().item(),
            "distance": out.distance.mean().item(),
            metric: out.query_metric.mean().item(),
            "min_curvature": out.min_curvature.mean().item(),
            "max_curvature": out.max_curvature.mean().item(),
            "stationarity_median": stationarity.median().item(),
            "stationarity_min": stationarity.min().item(),
        }
        print_row(row, args.json)


if __name__ == "__main__":
    main()
