"""The training loop as a library: what a run writes, divergence, every algorithm, warm starts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from imaml import checkpoint
from imaml.checkpoint import CheckpointError
from imaml.config import Config, load_config
from imaml.distributed import World
from imaml.training import (
    Diverged,
    TrainingError,
    build_problem,
    build_sampler,
    make_gradient_fn,
    resume_config,
    sample_shard,
    train,
)
from imaml.training import trainer as trainer_module
from training.helpers import SOURCE, tiny


def test_a_run_directory_holds_config_metrics_and_checkpoints(tmp_path: Path) -> None:
    config = tiny()
    result = train(config, tmp_path / "run", SOURCE, quiet=True)
    run = tmp_path / "run"
    assert load_config(str(run / "config.toml"))[1] == config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    assert {"meta_loss", "query_loss", "support_loss", "inner_grad_norm", "solver_residual"} <= set(
        train_records[0]
    )
    assert all(r["tasks_per_sec"] > 0 and r["sec_per_step"] > 0 for r in train_records)
    assert [r["step"] for r in records if r["split"] == "val"] == [3, 6]
    assert [r["params"] for r in records if r["split"] == "test"] == ["meta-learned", "initial"]
    # Plain torch.load with weights_only=True reads everything back.
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 6 and json.loads(state["config"])["train"]["meta_steps"] == 6
    assert set(state) >= {"params", "optimizer", "rng", "config", "step"}
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["kind"] == "best" and best["step"] == result.best[0]
    assert result.steps == 6 and result.final.tasks == 8 and result.baseline.tasks == 8
    assert result.final.metric == "mse" and math.isfinite(result.final.mean)


def test_a_nan_meta_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer_module.make_gradient_fn

    def nan_at_step_5(config: Config, problem: Any) -> Any:
        fn, calls = real(config, problem), []

        def wrapped(params: Any, tasks: Any) -> Any:
            calls.append(1)
            grads, info = fn(params, tasks)
            if len(calls) == 5:
                info = {**info, "query_loss": info["query_loss"] * math.nan}
            return grads, info

        return wrapped

    monkeypatch.setattr(trainer_module, "make_gradient_fn", nan_at_step_5)
    with pytest.raises(Diverged, match=r"not finite \(NaN/inf\) at step 5;.*checkpoint \(step 4\)"):
        train(tiny(), tmp_path / "run", SOURCE, quiet=True)
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["params"].values())


@pytest.mark.parametrize("algorithm", ["imaml", "maml", "fomaml", "reptile"])
def test_every_algorithm_trains(tmp_path: Path, algorithm: str) -> None:
    config = tiny(f"algorithm={algorithm}", "train.meta_steps=2", "train.val_every=0")
    train(config, tmp_path / "run", SOURCE, quiet=True)
    initial = dict(build_problem(config).model.named_parameters())
    params = checkpoint.load(tmp_path / "run" / "checkpoint.pt")["params"]
    assert any(not torch.equal(params[k], initial[k]) for k in params)


def test_init_from_starts_from_another_runs_parameters(tmp_path: Path) -> None:
    """An iMAML run started from a MAML run's parameters: its first update is the SGD step
    from exactly those parameters; a resumed run keeps its own state and ignores init_from."""
    train(tiny("algorithm=maml", "train.meta_steps=2"), tmp_path / "maml", SOURCE, quiet=True)
    source = checkpoint.load(tmp_path / "maml" / "best.pt")["params"]
    lr = 0.01
    config = tiny(
        f"train.init_from={tmp_path / 'maml'}",
        "train.outer_optimizer=sgd",
        f"train.outer_lr={lr}",
        "train.meta_steps=1",
    )
    train(config, tmp_path / "warm", SOURCE, quiet=True)
    problem = build_problem(config)
    tasks = sample_shard(build_sampler(config, "train", SOURCE, 0), World(), 4, step=0)
    grads, _ = make_gradient_fn(config, problem)(source, tasks)
    warm = checkpoint.load(tmp_path / "warm" / "checkpoint.pt")["params"]
    for name, value in source.items():
        torch.testing.assert_close(warm[name], value - lr * grads[name], rtol=0, atol=1e-7)
    initial = dict(problem.model.named_parameters())
    assert any(not torch.equal(source[k], initial[k]) for k in source)

    (tmp_path / "maml" / "best.pt").unlink()  # a resume does not read init_from again
    resumed = resume_config(tmp_path / "warm", ["train.meta_steps=2"])
    train(resumed, tmp_path / "warm", SOURCE, resume=True, quiet=True)
    assert checkpoint.load(tmp_path / "warm" / "checkpoint.pt")["step"] == 2


def test_init_from_rejects_another_model(tmp_path: Path) -> None:
    train(tiny("train.meta_steps=2", "model.hidden=[8]"), tmp_path / "small", SOURCE, quiet=True)
    config = tiny(f"train.init_from={tmp_path / 'small'}")
    with pytest.raises(TrainingError, match=r"do not fit this run.s model.*same \[model\]"):
        train(config, tmp_path / "run", SOURCE, quiet=True)
    with pytest.raises(CheckpointError, match=r"holds no best\.pt or checkpoint\.pt"):
        train(tiny(f"train.init_from={tmp_path}"), tmp_path / "run2", SOURCE, quiet=True)
