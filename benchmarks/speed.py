"""Meta-gradient throughput: the batched engine against a per-task loop, and the FLOP rate.

Usage: python benchmarks/speed.py [--quick] [--out DIR] [--device cpu|cuda] [--no-plot]

At the paper's Omniglot 5-way 1-shot settings (conv4, 16 inner GD steps at lr 0.1, λ = 2,
5 CG steps, 15 queries per class, a meta-batch of 32 tasks): tasks per second of
:func:`imaml.meta_gradient` on all tasks at once (``vmap`` over 32 tasks) and of a Python
loop calling it on one task at a time (:func:`per_task_loop`). The floating-point
operations of one task's meta-gradient are counted with
``torch.utils.flop_counter.FlopCounterMode`` on the loop (one task: the counter does not
account for the grouped convolutions that ``vmap`` makes of several tasks' weights), and the
rate reached is compared with a 2048×2048 fp32 matrix multiply timed in the same run.

For scale, the same run times the kernels' own ceiling on this network
(:func:`plain_step_gflops`): one ordinary forward and backward of the conv4 module, one
weight set and no ``vmap``, on a batch as large as the meta-batch's support set. A
meta-gradient is made of such passes (and Hessian-vector products, dearer per FLOP), so its
FLOP rate cannot exceed that of the plain step by much.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

import imaml
from _common import (
    LossFn,
    Result,
    Split,
    benchmark_parser,
    conv4_problem,
    hardware,
    median,
    run_benchmark,
    seconds,
    target,
)
from imaml import tree
from imaml.inner import GD
from imaml.models import Conv4
from imaml.solvers import CG
from imaml.types import Params

FULL = {
    "tasks": 32,
    "ways": 5,
    "shots": 1,
    "queries": 15,
    "hidden": 64,
    "inner_steps": 16,
    "inner_lr": 0.1,
    "lam": 2.0,
    "cg_steps": 5,
    "repeats": 7,
    "matmul_size": 2048,
}
QUICK = {**FULL, "tasks": 2, "queries": 2, "hidden": 8, "inner_steps": 2, "cg_steps": 2}
QUICK.update(repeats=1, matmul_size=128)


def batched(
    s: dict[str, Any], loss_fn: LossFn, params: Params, support: Split, query: Split
) -> Params:
    """The engine: :func:`imaml.meta_gradient` on all tasks at once."""
    grads, _ = imaml.meta_gradient(
        loss_fn,
        params,
        support,
        query,
        lam=s["lam"],
        inner=GD(s["inner_steps"], s["inner_lr"]),
        solver=CG(s["cg_steps"]),
        has_aux=True,
    )
    return grads


def per_task_loop(
    s: dict[str, Any], loss_fn: LossFn, params: Params, support: Split, query: Split
) -> Params:
    """The same meta-gradient, one task at a time in a Python loop: :func:`batched` on each
    task alone (a meta-batch of one), then the mean over the tasks.

    The loss goes in as a plain function, so that the input checks of a model's loss (a
    forward pass on each split's first task, once a call: :mod:`imaml.losses`) run once, as
    in the batched call, not once a task.
    """
    tasks = len(support[0])

    def unchecked(p: Params, x: Tensor, y: Tensor) -> Any:
        return loss_fn(p, x, y)

    def task(split: Split, i: int) -> Split:
        x, y = split
        return x[i : i + 1], y[i : i + 1]

    grads = [batched(s, unchecked, params, task(support, i), task(query, i)) for i in range(tasks)]
    return tree.scale(functools.reduce(tree.add, grads), 1.0 / tasks)


def matmul_gflops(size: int, repeats: int, device: str) -> float:
    """GFLOP/s of an fp32 ``size × size`` matrix multiply (median of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    return 2 * size**3 / median([seconds(lambda: a @ b, device) for _ in range(repeats)]) / 1e9


def plain_step_gflops(s: dict[str, Any], repeats: int, device: str) -> float:
    """GFLOP/s of one plain forward + backward of conv4 on the meta-batch's support images.

    An ``nn.Module`` with one weight set, no ``vmap``, batch ``tasks·ways·shots`` images
    (the size of one batched inner step): the rate PyTorch's kernels reach on these layers.
    """
    torch.manual_seed(0)
    model = Conv4(1, s["ways"], hidden=s["hidden"]).to(device)
    n = s["tasks"] * s["ways"] * s["shots"]
    x = torch.rand(n, 1, 28, 28, device=device)
    y = torch.arange(n, device=device) % s["ways"]

    def step() -> None:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / median([seconds(step, device) for _ in range(repeats)]) / 1e9


def run(quick: bool = False, device: str = "cpu") -> Result:
    """Time the engine, the loop and a matmul, interleaved; count the FLOPs of one task."""
    s = QUICK if quick else FULL
    hw = hardware(device)
    problem = conv4_problem(s, device)
    loss_fn, params, support, query = problem
    one_task = (loss_fn, params, tuple(t[:1] for t in support), tuple(t[:1] for t in query))
    with FlopCounterMode(display=False) as counter:
        per_task_loop(s, *one_task)
    flops_per_task = counter.get_total_flops()

    reference = per_task_loop(s, *problem)
    engine = batched(s, *problem)  # also the warm-up
    error = float(tree.norm(tree.sub(engine, reference)) / tree.norm(reference))
    times: dict[str, list[float]] = {
        "batched": [],
        "loop": [],
        "matmul_gflops": [],
        "plain_step_gflops": [],
    }
    for _ in range(s["repeats"]):
        times["batched"].append(seconds(lambda: batched(s, *problem), device))
        times["loop"].append(seconds(lambda: per_task_loop(s, *problem), device))
        times["matmul_gflops"].append(matmul_gflops(s["matmul_size"], 5, device))
        times["plain_step_gflops"].append(plain_step_gflops(s, 5, device))
    t_batched, t_loop = median(times["batched"]), median(times["loop"])
    matmul, plain = median(times["matmul_gflops"]), median(times["plain_step_gflops"])
    gflops = s["tasks"] * flops_per_task / t_batched / 1e9
    tasks = s["tasks"]
    return {
        "benchmark": "speed",
        "settings": s,
        "hardware": hw,
        "flops_per_task": flops_per_task,
        "seconds_per_meta_batch": {"batched": t_batched, "loop": t_loop},
        "tasks_per_second": {"batched": tasks / t_batched, "loop": tasks / t_loop},
        "seconds_per_task": {"batched": t_batched / tasks, "loop": t_loop / tasks},
        "speedup_batched_over_loop": t_loop / t_batched,
        "gflops": {"batched": gflops, "loop": tasks * flops_per_task / t_loop / 1e9},
        "matmul_gflops": matmul,
        "fraction_of_matmul_rate": gflops / matmul,
        "plain_step_gflops": plain,
        "plain_step_fraction_of_matmul_rate": plain / matmul,
        "batched_fraction_of_plain_step_rate": gflops / plain,
        "batched_vs_loop_relative_difference": error,
        "difference_note": (
            "float32 round-off (grouped vs per-task kernels), amplified by 16 inner steps and "
            "CG on random-image tasks; the two agree to ~1e-13 in float64"
        ),
        "all_times": times,
        "targets": [
            target("tasks/s, batched / per-task loop", t_loop / t_batched, ">=", 4.0),
            target("batched FLOP rate / fp32 matmul rate", gflops / matmul, ">=", 0.5),
        ],
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Bars: tasks per second, and GFLOP/s against the matmul rate."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    names = ["batched", "loop"]
    labels = ["batched (vmap)", "per-task loop"]
    a.bar(labels, [result["tasks_per_second"][k] for k in names], color=["C0", "C1"])
    a.set(ylabel="tasks per second", title="meta-gradient throughput")
    rates = [result["gflops"][k] for k in names]
    rates += [result["plain_step_gflops"], result["matmul_gflops"]]
    bars = [*labels, "plain conv4\nfwd+bwd", "fp32 matmul"]
    b.bar(bars, rates, color=["C0", "C1", "C2", "gray"])
    b.axhline(result["matmul_gflops"] / 2, color="k", ls=":", label="half the matmul rate")
    b.set(ylabel="GFLOP/s", title="floating-point rate")
    b.legend()
    hw = result["hardware"]
    fig.suptitle(
        f"iMAML conv4 Omniglot 5-way 1-shot, {result['settings']['tasks']} tasks "
        f"({hw['device']}, {hw['torch_threads']} threads)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(run_benchmark("speed", benchmark_parser(__doc__).parse_args(), run, plot))
