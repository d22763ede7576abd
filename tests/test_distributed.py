"""Data-parallel meta-gradients: 2 gloo processes on loopback equal one process."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import imaml
from imaml.distributed import DeviceError, World, device_for
from imaml.inner import GD
from imaml.solvers import CG
from imaml.testing import make_mlp, make_regression_batch


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


def agree(rank: int, size: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        world = World(rank=rank, size=size)
        out[rank] = (world.all(True), world.all(rank == 0), world.all(rank == 1))
    finally:
        dist.destroy_process_group()


def test_a_flag_false_on_one_rank_is_false_on_every_rank():
    # The trainer's divergence check: a NaN loss on one rank stops every rank, not just that one.
    out = mp.Manager().dict()
    mp.spawn(agree, args=(2, free_port(), out), nprocs=2, join=True)
    assert dict(out) == {0: (True, False, False), 1: (True, False, False)}
    assert World().all(True) and not World().all(False)


def test_shards_cover_the_meta_batch_in_order():
    parts = [World(rank=r, size=4).shard(32) for r in range(4)]
    assert [(p.start, p.stop) for p in parts] == [(0, 8), (8, 16), (16, 24), (24, 32)]


def test_uneven_meta_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of 3"):
        World(rank=0, size=3).shard(32)


def test_single_process_mean_is_the_identity():
    values = {"a": torch.ones(2)}
    assert World().mean(values) is values


SMALL_RUN = [
    "--set", "train.meta_steps=3", "--set", "train.meta_batch=4", "--set", "train.val_every=0",
    "--set", "train.log_every=1", "--set", "eval.at_end=false", "--set", "inner.steps=3",
    "--device", "cpu",  # gloo on the CPU, also on a machine with fewer GPUs than processes
]  # fmt: skip


def run_imaml(args: list[str], tmp_path, launcher: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, *launcher, "-m", "imaml", "train", "sinusoid", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_torchrun_two_processes_take_the_steps_of_one(tmp_path):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    one = run_imaml([*SMALL_RUN, "--run-dir", str(tmp_path / "one")], tmp_path, [])
    assert one.returncode == 0, one.stderr
    two = run_imaml([*SMALL_RUN, "--run-dir", str(tmp_path / "two")], tmp_path, torchrun)
    assert two.returncode == 0, two.stderr
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for name, value in a["params"].items():
        torch.testing.assert_close(b["params"][name], value, rtol=0, atol=1e-5)
        assert not torch.equal(value, make_start_params()[name])
    # Only rank 0 logs: one record per step, not two; its figures are those of the whole
    # meta-batch (both ranks' tasks), as one process logs them, up to float rounding.
    logs = [
        [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        for run in ("one", "two")
    ]
    assert [r["step"] for r in logs[1]] == [1, 2, 3]
    timing = {"sec_per_step", "tasks_per_sec"}
    for step, (single, sharded) in enumerate(zip(*logs, strict=True), 1):
        assert single.keys() == sharded.keys()
        # Step 1 starts from the same parameters: float32 rounding (~1e-7) only. Later steps
        # start from parameters 1e-7 apart, which the solver's curvature estimates enlarge.
        rel = 1e-6 if step == 1 else 1e-4
        for key in single.keys() - timing:
            assert sharded[key] == pytest.approx(single[key], rel=rel), (step, key)
    # Rank 0's 2 tasks alone have another meta-loss than all 4.
    assert logs[1][0]["meta_loss"] != pytest.approx(rank_0_meta_loss(), rel=1e-3)


def rank_0_meta_loss() -> float:
    """The step-1 meta-loss of rank 0's 2 tasks alone, what a 2-process run logged before."""
    from pathlib import Path

    from imaml.config import load_config
    from imaml.training import DataSource, build_problem, build_sampler, make_gradient_fn
    from imaml.training.step import sample_shard

    overrides = [item for flag, item in itertools.pairwise(SMALL_RUN) if flag == "--set"]
    _, config = load_config("sinusoid", overrides)
    problem = build_problem(config)
    sampler = build_sampler(config, "train", DataSource(Path("unused")), config.train.seed)
    tasks = sample_shard(sampler, World(rank=0, size=2), config.train.meta_batch, step=0)
    params = dict(problem.model.named_parameters())
    return make_gradient_fn(config, problem)(params, tasks)[1]["query_loss"].mean().item()


def make_start_params() -> dict[str, torch.Tensor]:
    from imaml.config import load_config
    from imaml.training.builders import build_problem

    _, config = load_config("sinusoid", [])
    return {k: v.detach() for k, v in build_problem(config).model.named_parameters()}


def test_meta_batch_that_does_not_split_is_a_clear_error(tmp_path):
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [*SMALL_RUN, "--set", "train.meta_batch=5", "--run-dir", str(tmp_path / "odd")]
    out = run_imaml(args, tmp_path, torchrun)
    assert out.returncode != 0
    assert "multiple of 2" in out.stderr
    assert not (tmp_path / "odd" / "checkpoint.pt").exists()


def test_a_process_without_a_gpu_of_its_own_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert device_for("auto") == device_for("cuda") == torch.device("cuda", 0)
    assert device_for("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DeviceError, match=r"needs GPU cuda:1, but 1 GPU\(s\) are visible"):
        device_for("auto")
