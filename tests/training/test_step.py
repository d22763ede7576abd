"""One meta-step: the outer learning rate's schedule and sharded meta-batches."""

from __future__ import annotations

import torch

from imaml.config import load_config
from imaml.data import TaskBatch
from imaml.distributed import World
from imaml.losses import ClassBatches
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


def test_query_batches_in_training_average_the_meta_gradients_of_each_batch() -> None:
    """`train.query_batch_shots = k`: the meta-gradient of a task whose query set runs in batches
    of k images per class is the mean of those with each batch as the query set (the support,
    one such batch, and so φ* are unchanged); BatchNorm makes it differ from one pass."""
    overrides = ["model.filters=4", "inner.steps=2", "data.query_shots=3", "data.image_size=14"]
    overrides += ["imaml.solver=neumann"]  # linear in the query gradient, as the test needs
    config = load_config("omniglot-5w1s", overrides)[1]
    problem = build_problem(config)
    params = {k: v.detach().double() for k, v in problem.model.named_parameters()}
    problem.model.double()
    g = torch.Generator().manual_seed(0)
    xs, xq = (torch.rand(2, 5 * n, 1, 14, 14, generator=g, dtype=torch.float64) for n in (1, 3))
    ys, yq = (torch.arange(5).repeat_interleave(n).expand(2, -1) for n in (1, 3))
    in_batches = load_config("omniglot-5w1s", [*overrides, "train.query_batch_shots=1"])[1]
    grouped, _ = make_gradient_fn(in_batches, problem)(params, TaskBatch(xs, ys, xq, yq))
    whole = make_gradient_fn(config, problem)
    batches = ClassBatches(5, 1)
    xq_b, yq_b = torch.vmap(batches.split)(xq), torch.vmap(batches.split)(yq)  # (2, 3, 5, ...)
    each = [whole(params, TaskBatch(xs, ys, xq_b[:, i], yq_b[:, i]))[0] for i in range(3)]
    for name in params:
        torch.testing.assert_close(grouped[name], sum(e[name] for e in each) / 3)
    one_pass, _ = whole(params, TaskBatch(xs, ys, xq, yq))
    assert not torch.allclose(grouped["features.0.0.weight"], one_pass["features.0.0.weight"])
