"""One meta-step: the outer learning rate's schedule and sharded meta-batches."""

from __future__ import annotations

import torch

from imaml.distributed import World
from imaml.training import build_problem, build_sampler, make_gradient_fn, outer_lr, sample_shard
from training.helpers import SOURCE, tiny


def test_the_outer_lr_decays_at_its_milestones() -> None:
    cfg = tiny("train.outer_lr=0.4", "train.outer_lr_milestones=[2, 5]", "train.outer_lr_gamma=0.5")
    lrs = [outer_lr(cfg.train, step) for step in range(7)]
    assert lrs == [0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1]
    assert outer_lr(tiny().train, 10**6) == 1e-3  # no milestones: constant


def test_shards_of_a_meta_batch_average_to_its_gradient() -> None:
    """What data-parallel training relies on: the mean of per-rank gradients is the gradient."""
    config = tiny("train.meta_batch=6")
    problem = build_problem(config)
    params = dict(problem.model.named_parameters())
    sampler = build_sampler(config, "train", SOURCE, seed=0)
    gradient = make_gradient_fn(config, problem)
    full, _ = gradient(params, sample_shard(sampler, World(), 6, step=3))
    shards = [gradient(params, sample_shard(sampler, World(r, 2), 6, step=3))[0] for r in range(2)]
    for k in full:
        torch.testing.assert_close(full[k], (shards[0][k] + shards[1][k]) / 2)
