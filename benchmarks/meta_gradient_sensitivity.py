"""How far does a tiny change of θ move a meta-gradient? (How much round-off can it amplify?)

Usage: python benchmarks/meta_gradient_sensitivity.py [CHECKPOINT] [--initial] [--eps 1e-6,1e-4]
       [--tasks 8] [--split train] [--data-dir DIR] [--device cpu]

Computes the meta-gradient g(θ) of one meta-batch as training does, then g(θ ⊙ (1 + ε·z)) for
each ``--eps`` (z standard normal, one draw), and prints ‖g(θ') − g(θ)‖ / ‖g(θ)‖. Where a
relative change of 1e-6 (float32 round-off is 6e-8) moves g by percents, two computations of
the same meta-gradient that round differently (batched vs per-task kernels, GPU vs CPU, TF32)
can differ by as much. CHECKPOINT: a checkpoint or run directory, on tasks of its own data set
(``--initial``: its config with freshly initialized parameters); without one, the speed
benchmark's problem (``benchmarks/speed.py``: conv4, random 28×28 images, 16 GD steps at lr 0.1,
λ = 2, 5 CG steps).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import speed
from _common import add_data_dir, conv4_problem
from imaml import tree
from imaml.training import DataSource, build_sampler, load_trained_model, make_gradient_fn
from imaml.training.builders import build_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?", help="default: random images")
    parser.add_argument("--initial", action="store_true", help="the config's initial θ")
    parser.add_argument("--eps", default="1e-6,1e-4", help="relative perturbations of θ")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--split", default="train")
    add_data_dir(parser)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.checkpoint is None:
        settings = {**speed.FULL, "tasks": args.tasks}
        loss_fn, params, support, query = conv4_problem(settings, args.device)

        def gradient(theta):
            return speed.batched(settings, loss_fn, theta, support, query)
    else:
        model = load_trained_model(args.checkpoint, device=args.device)
        config, params = model.config, model.params
        if args.initial:
            init = build_problem(config).model.named_parameters()
            params = {k: v.detach().to(args.device) for k, v in init}
        sampler = build_sampler(config, args.split, DataSource(args.data_dir), 0, args.device)
        batch = sampler.sample(args.tasks)
        fn = make_gradient_fn(config, model.problem)

        def gradient(theta):
            return fn(theta, batch)[0]

    reference = gradient(params)
    for eps in (float(e) for e in args.eps.split(",")):
        moved = {k: v * (1 + eps * torch.randn_like(v)) for k, v in params.items()}
        change = tree.norm(tree.sub(gradient(moved), reference)) / tree.norm(reference)
        print(f"eps {eps:.0e}: relative change of the meta-gradient {float(change):.3g}")


if __name__ == "__main__":
    main()
