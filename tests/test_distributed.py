"""Data-parallel meta-gradients: 2 gloo processes on loopback equal one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import imaml
from conftest import make_mlp, make_regression_batch
from imaml.distributed import World
from imaml.inner import GD
from imaml.solvers import CG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sharded_gradient(rank: int, size: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        world = World(rank=rank, size=size)
        model = make_mlp()
        xs, ys, xq, yq = make_regression_batch(num_tasks=4)
        part = world.shard(4)
        grads, _ = imaml.meta_gradient(
            imaml.regression_loss(model),
            dict(model.named_parameters()),
            (xs[part], ys[part]),
            (xq[part], yq[part]),
            lam=2.0,
            inner=GD(5, 0.1),
            solver=CG(3),
        )
        out[rank] = world.mean(grads)
    finally:
        dist.destroy_process_group()


def test_two_processes_average_to_the_single_process_gradient():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(sharded_gradient, args=(2, free_port(), out), nprocs=2, join=True)
    model = make_mlp()
    xs, ys, xq, yq = make_regression_batch(num_tasks=4)
    expected, _ = imaml.meta_gradient(
        imaml.regression_loss(model),
        dict(model.named_parameters()),
        (xs, ys),
        (xq, yq),
        lam=2.0,
        inner=GD(5, 0.1),
        solver=CG(3),
    )
    for rank in (0, 1):
        for name, g in expected.items():
            torch.testing.assert_close(out[rank][name], g, rtol=1e-12, atol=1e-14)


def test_shards_cover_the_meta_batch_in_order():
    parts = [World(rank=r, size=4).shard(32) for r in range(4)]
    assert [(p.start, p.stop) for p in parts] == [(0, 8), (8, 16), (16, 24), (24, 32)]


def test_uneven_meta_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 3"):
        World(rank=0, size=3).shard(32)


def test_single_process_mean_is_the_identity():
    values = {"a": torch.ones(2)}
    assert World().mean(values) is values
