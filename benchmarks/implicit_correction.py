"""How much does the linear solve change a checkpoint's meta-gradient?

Usage: python benchmarks/implicit_correction.py CHECKPOINT [--iters 1,2,5,20] [--tasks 32]
       [--batches 4] [--split train] [--set KEY=VALUE ...] [--data-dir DIR] [--json]

Adapts a checkpoint to ``--batches`` meta-batches of ``--tasks`` tasks once, with its own
inner optimizer, and computes its iMAML meta-gradient at those φ with its own solver run for
each number of ``--iters`` (the config's ``imaml.solver_iters``), and with no solve at all
(``iters = 0``: g = ∇L_q(φ) per task, the first-order meta-gradient at the same φ). Prints,
for each row, the relative distance ‖ḡ − ḡ_ref‖/‖ḡ_ref‖ of a meta-batch's mean gradient ḡ
to the row with the most iterations (mean and largest over the meta-batches), per task the
median and largest ``solver_correction`` ‖g − ∇L_q(φ)‖/‖∇L_q(φ)‖, and the mean
``solver_residual``. Where the first-order row is close to the reference, the Hessian-vector
products of the solve buy nothing; where a few iterations are, more are wasted.
"""

from __future__ import annotations

import torch

import imaml
from _checkpoint_cli import checkpoint_parser, print_header, print_row
from imaml import tree
from imaml.config import from_dict
from imaml.training import DataSource, build_sampler, load_trained_model
from imaml.training.builders import build_inner, build_solver

FIRST_ORDER = ("imaml.solver=neumann", "imaml.solver_iters=1", "imaml.neumann_alpha=1.0")
"""One Neumann term with α = 1: the solver returns its right-hand side, g = ∇L_q(φ)."""


def main() -> None:
    parser = checkpoint_parser(__doc__, tasks=32, split="train")  # --tasks: per meta-batch
    parser.add_argument("--iters", default="1,2,5,20", help="solver iterations, ascending")
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    iters = [int(k) for k in args.iters.split(",")]
    if not iters or min(iters) < 1 or iters != sorted(iters):
        parser.error(f"--iters must be positive and ascending, got {args.iters}")

    model = load_trained_model(args.checkpoint, args.overrides)
    if model.config.algorithm != "imaml":
        parser.error(f"{model.path} was trained with {model.config.algorithm}, not imaml")
    source = DataSource(args.data_dir, args.cache_dir)
    sampler = build_sampler(model.config, args.split, source, args.seed)
    batches = [
        sampler.sample_tasks(range(b * args.tasks, (b + 1) * args.tasks))
        for b in range(args.batches)
    ]
    problem, config = model.problem, model.config
    common = {"has_aux": problem.has_aux, "chunk_size": config.train.chunk_size or None}
    lam = config.imaml.lam
    inner = build_inner(config.inner)
    # Adapted once: every row solves at the same φ.
    phis = [
        imaml.adapt(problem.loss_fn, model.params, (b.xs, b.ys), lam=lam, inner=inner, **common)
        for b in batches
    ]
    rows = []  # (iters, (batches, P) mean gradients, per-task info over all batches)
    for k in [0, *iters]:
        overrides = FIRST_ORDER if k == 0 else [f"imaml.solver_iters={k}"]
        solver = build_solver(from_dict(config.to_dict(), overrides))
        results = [
            imaml.implicit_gradient(
                problem.loss_fn, model.params, phi, (b.xs, b.ys), (b.xq, b.yq), lam=lam,
                solver=solver, **common,
            )
            for phi, b in zip(phis, batches, strict=True)
        ]  # fmt: skip
        grads = torch.stack([tree.flatten(g)[0] for g, _ in results])
        info = {key: torch.cat([i[key] for _, i in results]) for key in results[0][1]}
        rows.append((k, grads, info))
    reference = rows[-1][1]
    if not args.json:
        print(
            f"{model.path} (step {model.step}), {args.batches} × {args.tasks} {args.split} tasks, "
            f"λ = {model.config.imaml.lam}, solver {model.config.imaml.solver}, "
            f"reference: {iters[-1]} iterations"
        )
        print_header("iters", ("dist. mean", "dist. max", "corr. med.", "corr. max", "residual"))
    for k, grads, info in rows:
        distance = (grads - reference).norm(dim=1) / reference.norm(dim=1)
        row = {
            "iters": k,
            "distance_mean": distance.mean().item(),
            "distance_max": distance.max().item(),
            "correction_median": info["solver_correction"].median().item(),
            "correction_max": info["solver_correction"].max().item(),
            "residual": info["solver_residual"].mean().item(),
        }
        print_row(row, args.json)


if __name__ == "__main__":
    main()
