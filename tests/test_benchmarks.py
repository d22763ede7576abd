"""The scripts of ``benchmarks/`` (importable in the tests: ``pythonpath`` in pyproject.toml):
their code paths on tiny settings, and the accuracy benchmark's real claim."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import accuracy
import memory
import speed
from _common import conv4_problem
from imaml import tree

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_accuracy_imaml_error_reaches_1e_6_with_cg_steps():
    result = accuracy.run(quick=True)
    errors = result["vs_cg_steps"]["imaml"]
    assert errors[0] > errors[1] > errors[2]
    assert min(errors) <= 1e-6
    assert all(t["met"] for t in result["targets"])
    inner = result["vs_inner_steps"]
    assert inner["maml"][-1] < 1e-3 < inner["maml"][0]  # MAML converges with inner steps
    assert inner["fomaml"][-1] > 1e-2  # first-order MAML does not


def test_accuracy_full_settings_reach_1e_6():
    s = accuracy.FULL
    tasks = accuracy.spread_linear_tasks(s["tasks"], s["dim"], s["support"], s["query"])
    exact = tasks.exact_meta_gradient(s["lam"])
    g = accuracy.imaml_gradient(tasks, s["lam"], s["inner_lr"], s["exact_inner_steps"], 20)
    assert float((g - exact).norm() / exact.norm()) <= 1e-6


def test_speed_quick_runs_and_batched_matches_loop(tmp_path):
    result = speed.run(quick=True)
    speed.plot(result, tmp_path / "speed.png")
    assert result["batched_vs_loop_relative_difference"] < 1e-4
    assert result["flops_per_task"] > 0 and result["matmul_gflops"] > 0
    assert result["plain_step_gflops"] > 0
    assert {t["name"] for t in result["targets"]} == {
        "tasks/s, batched / per-task loop",
        "batched FLOP rate / fp32 matmul rate",
    }


def test_memory_runs_each_point_in_a_fresh_process(monkeypatch, tmp_path):
    spec = {
        "method": "imaml_gd",
        "steps": 1,
        "settings": memory.QUICK,
        "device": "cpu",
        "threads": 1,
    }
    fresh = memory._in_subprocess(spec)
    assert fresh["peak_bytes"] >= fresh["baseline_bytes"] > 0

    def fake(spec):  # the other points: MAML's memory grows with steps, the others' does not
        grows = spec["method"] == "maml"
        return {
            "peak_bytes": 2**30 + 2**20 * (spec["steps"] if grows else 1),
            "baseline_bytes": 2**30,
        }

    monkeypatch.setattr(memory, "_in_subprocess", fake)
    result = memory.run(quick=True)
    assert set(result["points"]) == set(memory.METHODS)
    assert result["delta_growth"]["maml"] == 4 and result["delta_growth"]["imaml_gd"] == 1
    assert [t["met"] for t in result["targets"]] == [True, True, False]
    memory.plot(result, tmp_path / "memory.png")


def test_per_task_loop_is_the_batched_meta_gradient_in_float64():
    loss_fn, params, support, query = conv4_problem(speed.QUICK)
    params = {k: v.double() for k, v in params.items()}
    support, query = [(x.double(), y) for x, y in (support, query)]
    loop = speed.per_task_loop(speed.QUICK, loss_fn, params, support, query)
    batched = speed.batched(speed.QUICK, loss_fn, params, support, query)
    assert float(tree.norm(tree.sub(loop, batched)) / tree.norm(batched)) < 1e-12
    assert all(v.dtype == torch.float64 for v in loop.values())


def test_script_writes_json_and_png(tmp_path):
    proc = subprocess.run(
        [sys.executable, BENCHMARKS / "accuracy.py", "--quick", "--out", tmp_path],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "accuracy.json").read_text())
    assert result["benchmark"] == "accuracy" and result["hardware"]["cpu_count"]
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'accuracy.json'}" in proc.stdout


def run_checkpoint_benchmark(tmp_path: Path, script: str, *args: str) -> list[dict]:
    """Train a 2-step sinusoid checkpoint, run ``benchmarks/<script>`` on it with ``--json``
    and ``args``, and return its rows."""
    from imaml.config import load_config
    from imaml.training import DataSource, train

    overrides = ["train.meta_steps=2", "train.meta_batch=2", "train.val_every=0"]
    train(load_config("sinusoid", overrides)[1], tmp_path / "run", DataSource(tmp_path), quiet=True)
    proc = subprocess.run(
        [sys.executable, BENCHMARKS / script, tmp_path / "run" / "checkpoint.pt", "--json", *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_inner_convergence_script_sweeps_a_checkpoints_inner_steps(tmp_path: Path) -> None:
    rows = run_checkpoint_benchmark(
        tmp_path, "inner_convergence.py", "--steps", "0,5", "--tasks", "3", "--set", "inner.lr=0.01"
    )
    assert [r["steps"] for r in rows] == [0, 5]
    assert rows[0]["distance"] == 0 and rows[0]["objective"] == rows[0]["support_loss"]
    assert 0 < rows[1]["distance"] and rows[1]["objective"] < rows[0]["objective"]
    assert 0 < rows[1]["stationarity_min"] <= rows[1]["stationarity_median"] < float("inf")


def test_implicit_correction_script_compares_solver_iterations(tmp_path: Path) -> None:
    rows = run_checkpoint_benchmark(
        tmp_path, "implicit_correction.py", "--iters", "1,40", "--tasks", "3", "--batches", "2",
        "--set", "imaml.solver=cg",
    )  # fmt: skip
    assert [r["iters"] for r in rows] == [0, 1, 40]
    first_order, _, reference = rows
    assert first_order["correction_max"] == 0 and reference["distance_max"] == 0
    assert reference["residual"] < 0.1 * first_order["residual"]
    assert 0 < first_order["distance_mean"] <= first_order["distance_max"]
    assert reference["correction_median"] > 0
