"""Meta-test: batched evaluation and its results as metrics records."""

from __future__ import annotations

import json
import math

import pytest
import torch

import imaml
from imaml import _batching
from imaml.training import Adaptation, EvalResult, build_problem, build_sampler, evaluate
from imaml.training.builders import build_inner
from training.helpers import SOURCE, tiny


def test_batched_evaluation_equals_one_task_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny("eval.inner_steps=3")
    problem = build_problem(config)
    params = {k: v.detach() for k, v in problem.model.named_parameters()}
    sampler = build_sampler(config, "test", SOURCE, seed=0)
    adaptation = Adaptation.of(config)
    assert adaptation.inner == build_inner(config.inner, 3)  # eval.inner_steps=3
    result = evaluate(problem, params, sampler, adaptation, tasks=5, batch=2)
    mses = []
    for i in range(5):
        t = sampler.sample_tasks([i])
        phi = imaml.adapt(
            problem.loss_fn, params, (t.xs, t.ys), lam=config.imaml.lam, inner=adaptation.inner
        )
        mses.append(problem.loss_fn({k: v[0] for k, v in phi.items()}, t.xq[0], t.yq[0]))
    mses = torch.stack(mses).double()
    assert result.tasks == 5 and result.metric == "mse"
    assert result.mean == pytest.approx(mses.mean().item(), rel=1e-5)
    assert result.ci95 == pytest.approx(1.96 * mses.std(correction=0).item() / math.sqrt(5))
    # Scoring in cache-sized chunks of tasks (here one task each) changes only round-off.
    monkeypatch.setattr(_batching, "CPU_CHUNK_ELEMENTS", 1)
    chunked = evaluate(problem, params, sampler, adaptation, tasks=5, batch=2)
    assert chunked.to_dict() == pytest.approx(result.to_dict(), rel=1e-6)


def test_eval_results_round_trip_through_their_metrics_records() -> None:
    for result in (
        EvalResult("accuracy", 0.9, 0.01, 0.3, 600),
        EvalResult("mse", 0.2, 0.03, 0.2, 8),
    ):
        record = json.loads(json.dumps({"step": 7, "split": "val", **result.to_dict(), "best": 1}))
        assert EvalResult.from_dict(record) == result
