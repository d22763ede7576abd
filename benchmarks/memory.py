"""Peak memory of one meta-gradient against the number of inner steps.

Usage: python benchmarks/memory.py [--quick] [--out DIR] [--device cpu|cuda] [--no-plot]

Conv4 Omniglot 5-way 1-shot (15 queries per class), a meta-batch of 4 tasks, for iMAML-GD,
iMAML-HF, MAML and first-order MAML. On the CPU each point runs in a fresh process
(``python benchmarks/memory.py --point SPEC``): its peak resident set size (``getrusage``'s
``ru_maxrss``), and the same minus the process's peak before the meta-gradient (after
imports, model and data creation). On a GPU all points run in this process:
``torch.cuda.max_memory_allocated`` after a reset of the peak, and the same minus the memory
allocated before (the allocator counts live tensors, not what earlier points left cached).
The baseline follows a warm-up on a tiny problem (see :func:`measure`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import imaml
from _common import (
    LossFn,
    Result,
    Split,
    benchmark_parser,
    conv4_problem,
    hardware,
    run_benchmark,
    target,
)
from imaml.inner import GD, HessianFree, InnerOptimizer
from imaml.solvers import CG
from imaml.types import Params

LABELS = {
    "imaml_gd": "iMAML-GD",
    "imaml_hf": "iMAML-HF",
    "maml": "MAML",
    "fomaml": "first-order MAML",
}
FULL = {
    "tasks": 4,
    "ways": 5,
    "shots": 1,
    "queries": 15,
    "hidden": 64,
    "inner_steps": [5, 10, 20, 40, 80],
    "inner_lr": 0.1,
    "lam": 2.0,
    "cg_steps": 5,
}
QUICK = {**FULL, "tasks": 2, "queries": 2, "hidden": 8, "inner_steps": [1, 4]}
MIB = 2**20

Method = Callable[[int, dict[str, Any], LossFn, Params, Split, Split], tuple[Params, Any]]
"""``(steps, settings, loss_fn, θ, support, query) -> (grads, info)``: one meta-gradient."""


def _imaml(inner: Callable[[int, dict[str, Any]], InnerOptimizer]) -> Method:
    """iMAML with the inner optimizer ``inner(steps, settings)`` and CG."""

    def method(
        steps: int, s: dict[str, Any], loss_fn: LossFn, params: Params, support: Split, query: Split
    ) -> tuple[Params, Any]:
        solver = CG(s["cg_steps"])
        return imaml.meta_gradient(
            loss_fn, params, support, query, lam=s["lam"], inner=inner(steps, s), solver=solver,
            has_aux=True,
        )  # fmt: skip

    return method


def _maml(first_order: bool) -> Method:
    """MAML (or first-order MAML) through GD steps."""

    def method(
        steps: int, s: dict[str, Any], loss_fn: LossFn, params: Params, support: Split, query: Split
    ) -> tuple[Params, Any]:
        return imaml.maml_gradient(
            loss_fn, params, support, query, inner=GD(steps, s["inner_lr"]),
            first_order=first_order, has_aux=True,
        )  # fmt: skip

    return method


METHODS: dict[str, Method] = {
    "imaml_gd": _imaml(lambda steps, s: GD(steps, s["inner_lr"])),
    "imaml_hf": _imaml(lambda steps, s: HessianFree(steps)),
    "maml": _maml(first_order=False),
    "fomaml": _maml(first_order=True),
}
"""The measured meta-gradients by name (labels in :data:`LABELS`)."""


def meta_gradient(
    method: str,
    steps: int,
    s: dict[str, Any],
    loss_fn: LossFn,
    params: Params,
    support: Split,
    query: Split,
) -> tuple[Params, Any]:
    """One meta-gradient of ``method`` (:data:`METHODS`) with ``steps`` inner steps (the
    settings ``s``)."""
    return METHODS[method](steps, s, loss_fn, params, support, query)


def measure(spec: dict[str, Any]) -> dict[str, float]:
    """Peak and baseline bytes of one meta-gradient, in this process (run it in a fresh one).

    The baseline is taken after imports, model and data creation and a warm-up
    meta-gradient of the same method on a tiny problem (one task, one inner step, a
    4-channel conv4), so that loading library code and kernels is not counted as memory.
    """
    s, device = spec["settings"], spec["device"]
    torch.set_num_threads(spec["threads"])
    tiny = {**s, "tasks": 1, "queries": 1, "hidden": 4}
    meta_gradient(spec["method"], 1, tiny, *conv4_problem(tiny, device))
    problem = conv4_problem(s, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        meta_gradient(spec["method"], spec["steps"], s, *problem)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        baseline = _max_rss()
        meta_gradient(spec["method"], spec["steps"], s, *problem)
        peak = _max_rss()
    return {"peak_bytes": peak, "baseline_bytes": baseline}


def _max_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run(quick: bool = False, device: str = "cpu") -> Result:
    """Every method at every number of inner steps (on the CPU, each in its own process)."""
    s = QUICK if quick else FULL
    hw = hardware(device)
    points: dict[str, dict[str, list[float]]] = {}
    for method in METHODS:
        rows = points.setdefault(method, {"peak_mib": [], "baseline_mib": [], "delta_mib": []})
        for steps in s["inner_steps"]:
            spec = {
                "method": method,
                "steps": steps,
                "settings": s,
                "device": device,
                "threads": torch.get_num_threads(),
            }
            m = measure(spec) if device.startswith("cuda") else _in_subprocess(spec)
            rows["peak_mib"].append(m["peak_bytes"] / MIB)
            rows["baseline_mib"].append(m["baseline_bytes"] / MIB)
            rows["delta_mib"].append((m["peak_bytes"] - m["baseline_bytes"]) / MIB)
            print(f"{method:9s} {steps:3d} steps: {m['peak_bytes'] / MIB:8.1f} MiB", flush=True)
    growth = {k: v["delta_mib"][-1] / v["delta_mib"][0] for k, v in points.items()}
    span = f"{s['inner_steps'][0]} -> {s['inner_steps'][-1]} steps"
    return {
        "benchmark": "memory",
        "measured": (
            "CPU: peak resident set size (ru_maxrss) of a fresh process; delta = peak minus "
            "the peak before the meta-gradient (after imports, model and data creation and "
            "a warm-up meta-gradient of the same method on a tiny problem, so that library "
            "code paged in is not counted); glibc's MALLOC_MMAP_THRESHOLD_=65536 so that freed "
            "tensors leave the RSS. GPU: torch.cuda.max_memory_allocated, all points in one "
            "process, the peak reset before each; delta = peak minus memory allocated before."
        ),
        "settings": s,
        "hardware": hw,
        "inner_steps": s["inner_steps"],
        "points": points,
        "delta_growth": growth,
        "targets": [
            target(f"iMAML-GD delta growth, {span}", growth["imaml_gd"], "<=", 1.15),
            target(f"iMAML-HF delta growth, {span}", growth["imaml_hf"], "<=", 1.15),
            target(f"MAML delta growth, {span}", growth["maml"], ">=", 5.0),
        ],
    }


def _in_subprocess(spec: dict[str, Any]) -> dict[str, float]:
    # glibc: allocations above 64 KiB get their own mappings, returned to the system when
    # freed, so the peak RSS tracks live tensors rather than the heap's fragmentation.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--point", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(result: dict[str, Any], path: Path) -> None:
    """Delta peak memory (solid) and raw peak (dotted) against inner steps, per method."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    steps = result["inner_steps"]
    for method, rows in result["points"].items():
        (line,) = ax.plot(steps, rows["delta_mib"], "o-", label=f"{LABELS[method]} (delta)")
        ax.plot(steps, rows["peak_mib"], ":", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(steps, [str(k) for k in steps])
    device = result["hardware"]["device"]
    ax.set(
        xlabel="inner steps",
        ylabel="peak memory of one meta-gradient (MiB)",
        title=f"conv4 Omniglot 5-way 1-shot, {result['settings']['tasks']} tasks ({device})",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="dotted: raw peak", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """The benchmark, or with ``--point SPEC`` one point (:func:`measure`) printed as JSON."""
    parser = benchmark_parser(__doc__)
    parser.add_argument("--point", metavar="SPEC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point is None:
        return run_benchmark("memory", args, run, plot)
    print(json.dumps(measure(json.loads(args.point))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
