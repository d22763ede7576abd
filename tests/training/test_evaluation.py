"""Meta-test: batched evaluation, query sets scored in groups, and results as metrics records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import imaml
from imaml import _batching, checkpoint
from imaml.config import load_config
from imaml.losses import ClassBatches
from imaml.training import (
    Adaptation,
    DataSource,
    EvalResult,
    build_problem,
    build_sampler,
    evaluate,
    evaluate_checkpoint,
)
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


def test_grouped_scoring_of_a_model_without_batchnorm_changes_nothing() -> None:
    config = tiny("eval.inner_steps=3")
    problem = build_problem(config)  # an MLP: each point's prediction is its own
    params = {k: v.detach() for k, v in problem.model.named_parameters()}
    sampler = build_sampler(config, "test", SOURCE, seed=0)
    adaptation = Adaptation.of(config)
    whole = evaluate(problem, params, sampler, adaptation, tasks=4, batch=2)
    for k in (1, 5):
        grouped = evaluate(problem, params, sampler, adaptation, tasks=4, batch=2,
                           query_batch_shots=k)  # fmt: skip
        assert grouped.to_dict() == pytest.approx(whole.to_dict(), rel=1e-5)


def test_grouped_scoring_runs_one_batchnorm_batch_per_group(
    tmp_path: Path, omniglot_root: Path
) -> None:
    overrides = ["model.filters=8", "inner.steps=2", "data.query_shots=4", "eval.batch=2"]
    config = load_config("omniglot-5w1s", overrides)[1]
    problem = build_problem(config)
    params = {k: v.detach() for k, v in problem.model.named_parameters()}
    source = DataSource(omniglot_root, cache_dir=tmp_path)
    sampler = build_sampler(config, "test", source, seed=0)
    adaptation = Adaptation.of(config)

    def run(k: int) -> EvalResult:
        return evaluate(problem, params, sampler, adaptation, tasks=3, batch=2,
                        query_batch_shots=k)  # fmt: skip

    whole = run(0)
    assert run(4).to_dict() == whole.to_dict()  # one group: the whole query set
    b = sampler.sample_tasks(range(3))
    phi = imaml.adapt(problem.loss_fn, params, (b.xs, b.ys), lam=adaptation.lam,
                      inner=adaptation.inner, has_aux=True)  # fmt: skip
    xq, yq = torch.vmap(ClassBatches(5, 1).split)(b.xq), torch.vmap(ClassBatches(5, 1).split)(b.yq)
    # Group 0 is the query set a 1-query sampler draws for the same tasks.
    single = build_sampler(load_config("omniglot-5w1s", [*overrides[:2], "data.query_shots=1"])[1],
                           "test", source, seed=0).sample_tasks(range(3))  # fmt: skip
    assert torch.equal(xq[:, 0], single.xq) and torch.equal(yq[:, 0], single.yq)
    # Each group alone through the model (BatchNorm: its own 5-image batch), then averaged.
    scores = [
        [problem.score({n: v[t] for n, v in phi.items()}, xq[t, g], yq[t, g]) for g in range(4)]
        for t in range(3)
    ]
    loss = torch.tensor([[s[0] for s in task] for task in scores]).double().mean()
    accuracy = torch.tensor([[s[1] for s in task] for task in scores]).double().mean(1)
    grouped = run(1)
    assert grouped.mean == pytest.approx(accuracy.mean().item(), abs=1e-6)
    assert grouped.ci95 == pytest.approx(1.96 * accuracy.std(correction=0).item() / math.sqrt(3))
    assert grouped.loss == pytest.approx(loss.item(), rel=1e-5)
    assert abs(grouped.loss - whole.loss) > 1e-3  # the batch statistics moved the scores
    # `imaml eval`'s path: the config key reaches evaluate().
    state = {"kind": "best", "config": config.to_json(), "step": 0, "params": params}
    checkpoint.save(state, tmp_path / "best.pt")
    out = evaluate_checkpoint(tmp_path, source, tasks=3, overrides=["eval.query_batch_shots=1"])
    assert out.result.to_dict() == pytest.approx(grouped.to_dict(), rel=1e-6)
