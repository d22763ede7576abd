"""Checks that need a CUDA device (skipped without one; run on a GPU machine with
``benchmarks/gpu_check.sh``): the engine computes on the GPU what it computes on the CPU, a run
trained on the GPU resumes and evaluates on the CPU, and iMAML's GPU memory does not grow with
the number of inner steps while MAML's does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import imaml
import memory
from _common import conv4_problem
from imaml import checkpoint
from imaml.inner import GD, Adam, HessianFree
from imaml.solvers import CG, Dense, Neumann
from imaml.training import evaluate_checkpoint, resume_config, train
from training.helpers import SOURCE, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

LAM = 2.0
METHODS: dict[str, Callable[..., Any]] = {
    "imaml-gd-cg": lambda f, p, s, q: imaml.meta_gradient(
        f, p, s, q, lam=LAM, inner=GD(10, 0.1), solver=CG(5)
    ),
    "imaml-adam-neumann": lambda f, p, s, q: imaml.meta_gradient(
        f, p, s, q, lam=LAM, inner=Adam(10, 0.01), solver=Neumann(20, 0.3)
    ),
    "imaml-hf-dense": lambda f, p, s, q: imaml.meta_gradient(
        f, p, s, q, lam=LAM, inner=HessianFree(3), solver=Dense()
    ),
    "maml": lambda f, p, s, q: imaml.maml_gradient(f, p, s, q, inner=GD(5, 0.1)),
    "fomaml": lambda f, p, s, q: imaml.maml_gradient(
        f, p, s, q, inner=GD(5, 0.1), first_order=True
    ),
    "reptile": lambda f, p, s, q: imaml.reptile_gradient(f, p, s, inner=GD(5, 0.1)),
}


@pytest.mark.parametrize("method", METHODS)
def test_the_gpu_computes_the_cpu_meta_gradient(mlp_problem, method: str) -> None:
    """float64 on both devices: only the order of reductions differs."""
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem
    assert_same_on_gpu(method, loss_fn, params, (xs, ys), (xq, yq), rtol=1e-9)


@pytest.mark.parametrize("method", ["imaml-gd-cg", "maml"])
def test_the_gpu_computes_the_cpu_conv4_meta_gradient(method: str) -> None:
    """conv4 (convolutions, batch norm, ReLU, and the grouped kernels that vmap makes of them)
    in float64, where TF32 does not apply: round-off only."""
    settings = {"tasks": 3, "ways": 5, "shots": 1, "queries": 2, "hidden": 8}
    loss_and_accuracy, params, (xs, ys), (xq, yq) = conv4_problem(settings)

    def loss_fn(p, x, y):
        return loss_and_accuracy(p, x, y)[0]

    params = {k: v.double() for k, v in params.items()}
    assert_same_on_gpu(method, loss_fn, params, (xs.double(), ys), (xq.double(), yq), rtol=1e-7)


def assert_same_on_gpu(method: str, loss_fn, params, support, query, rtol: float) -> None:
    """``METHODS[method]`` gives the same gradients and diagnostics on the GPU as on the CPU."""
    cpu, cpu_info = METHODS[method](loss_fn, params, support, query)
    on_gpu = [{k: v.detach().cuda() for k, v in params.items()}]
    on_gpu += [tuple(t.cuda() for t in split) for split in (support, query)]
    gpu, gpu_info = METHODS[method](loss_fn, *on_gpu)
    for name, value in cpu.items():
        assert gpu[name].is_cuda
        torch.testing.assert_close(gpu[name].cpu(), value, rtol=rtol, atol=1e-12)
    for key, value in cpu_info.items():  # NaN: a diagnostic the solver does not report
        torch.testing.assert_close(
            gpu_info[key].cpu(), value, rtol=100 * rtol, atol=1e-12, equal_nan=True
        )


def test_a_run_trained_on_the_gpu_resumes_and_evaluates_on_the_cpu(tmp_path: Path) -> None:
    """float32, 4 GPU steps then 2 CPU steps against 6 CPU steps: round-off only."""
    gpu_run, cpu_run = tmp_path / "gpu", tmp_path / "cpu"
    train(tiny("train.meta_steps=4"), gpu_run, SOURCE, quiet=True, device="cuda")
    state = checkpoint.load(gpu_run / "checkpoint.pt")
    assert all(not v.is_cuda for v in state["params"].values())
    gpu_eval = evaluate_checkpoint(gpu_run, SOURCE, device="cuda").result.mean
    cpu_eval = evaluate_checkpoint(gpu_run, SOURCE, device="cpu").result.mean
    assert gpu_eval == pytest.approx(cpu_eval, rel=1e-4)

    config = resume_config(gpu_run, ["train.meta_steps=6"])
    train(config, gpu_run, SOURCE, resume=True, quiet=True, device="cpu")
    train(tiny(), cpu_run, SOURCE, quiet=True, device="cpu")
    mixed = checkpoint.load(gpu_run / "checkpoint.pt")
    plain = checkpoint.load(cpu_run / "checkpoint.pt")
    assert mixed["step"] == plain["step"] == 6
    for name, value in plain["params"].items():
        torch.testing.assert_close(mixed["params"][name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("method", "bound"), [("imaml_gd", 1.15), ("imaml_hf", 1.15)])
def test_gpu_memory_of_imaml_does_not_grow_with_inner_steps(method: str, bound: float) -> None:
    assert peak_growth(method, 5, 40) <= bound


def test_gpu_memory_of_maml_grows_with_inner_steps() -> None:
    assert peak_growth("maml", 5, 40) >= 4


def peak_growth(method: str, few: int, many: int) -> float:
    """Peak GPU memory of one conv4 meta-gradient (over what was allocated before) at ``many``
    inner steps, relative to ``few``; ``benchmarks/memory.py``'s :func:`measure`, in this process
    (the CUDA allocator's peak counts live tensors only, so one process serves all)."""

    def delta(steps: int) -> int:
        spec = {
            "method": method,
            "steps": steps,
            "settings": memory.FULL,
            "device": "cuda",
            "threads": torch.get_num_threads(),
        }
        m = memory.measure(spec)
        return m["peak_bytes"] - m["baseline_bytes"]

    return delta(many) / delta(few)
