"""The training loop as a library: run directory, resume, divergence, signals, checkpoints."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import imaml
from conftest import LinearTasks
from imaml import _tasks, checkpoint
from imaml.bench.accuracy import linear_loss
from imaml.checkpoint import CheckpointError
from imaml.config import Config, load_config
from imaml.data import TaskBatch
from imaml.data.omniglot import random_split_ids
from imaml.distributed import World
from imaml.training import (
    Adaptation,
    DataSource,
    Diverged,
    EvalResult,
    Interrupted,
    Problem,
    RunDir,
    SummaryError,
    TrainingError,
    build_problem,
    build_sampler,
    evaluate,
    inner_progress,
    make_gradient_fn,
    outer_lr,
    resume_config,
    sample_shard,
    summarize_run,
    train,
)
from imaml.training import loop as loop_module
from imaml.training.components import build_inner

TINY = [
    "train.meta_steps=6",
    "train.meta_batch=4",
    "inner.steps=2",
    "train.log_every=2",
    "train.val_every=3",
    "train.val_tasks=4",
    "train.checkpoint_every=2",
    "eval.tasks=8",
    "eval.batch=4",
]
SOURCE = DataSource(Path("unused"))  # sinusoid tasks need no files


def tiny(*overrides: str) -> Config:
    return load_config("sinusoid", [*TINY, *overrides])[1]


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Bit-for-bit equal parameters and optimizer state."""
    assert a["step"] == b["step"]
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    for i, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)


def logged(run: Path) -> list[tuple[int, str, float | None]]:
    """(step, split, validation/test metric) of each metrics.jsonl record."""
    return [(r["step"], r["split"], r.get("mse")) for r in RunDir(run).read_metrics()]


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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    train(tiny(), tmp_path / "straight", SOURCE, quiet=True)

    real = loop_module.make_gradient_fn

    def signalled_at_step_4(config: Config, problem: Any) -> Any:
        fn, calls = real(config, problem), []

        def wrapped(params: Any, tasks: Any) -> Any:
            calls.append(1)
            if len(calls) == 4:  # in the middle of computing step 4's meta-gradient
                os.kill(os.getpid(), signum)
            return fn(params, tasks)

        return wrapped

    monkeypatch.setattr(loop_module, "make_gradient_fn", signalled_at_step_4)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        train(tiny(), tmp_path / "resumed", SOURCE, quiet=True)
    assert err.value.step == 3 and err.value.signum == signum
    assert f"interrupted ({signal.Signals(signum).name}) after step 3" in str(err.value)
    assert checkpoint.load(tmp_path / "resumed" / "checkpoint.pt")["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    monkeypatch.setattr(loop_module, "make_gradient_fn", real)

    train(
        resume_config(tmp_path / "resumed"), tmp_path / "resumed", SOURCE, resume=True, quiet=True
    )
    assert_same_state(
        checkpoint.load(tmp_path / "straight" / "checkpoint.pt"),
        checkpoint.load(tmp_path / "resumed" / "checkpoint.pt"),
    )
    # The log of the resumed run has the records of an uninterrupted one, none twice.
    assert logged(tmp_path / "straight") == logged(tmp_path / "resumed")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_an_update_waits_for_the_update_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    train(tiny("train.meta_steps=4"), tmp_path / "straight", SOURCE, quiet=True)

    real, calls = loop_module.apply_gradients, []

    def signalled_in_update_4(optimizer: Any, params: Any, grads: Any) -> None:
        calls.append(1)
        if len(calls) == 4:  # half-applied updates would corrupt params and Adam's moments
            os.kill(os.getpid(), signum)
        real(optimizer, params, grads)

    monkeypatch.setattr(loop_module, "apply_gradients", signalled_in_update_4)
    with pytest.raises(Interrupted) as err:
        train(tiny(), tmp_path / "signalled", SOURCE, quiet=True)
    assert err.value.step == 4 and err.value.signum == signum
    assert_same_state(
        checkpoint.load(tmp_path / "straight" / "checkpoint.pt"),
        checkpoint.load(tmp_path / "signalled" / "checkpoint.pt"),
    )


def test_an_ignored_sigint_stays_ignored_during_updates(tmp_path: Path) -> None:
    """A run started with ``&`` from a script ignores SIGINT: deferring must not undo that."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        real, calls = loop_module.apply_gradients, []

        def signalled(optimizer: Any, params: Any, grads: Any) -> None:
            calls.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            real(optimizer, params, grads)

        with pytest.MonkeyPatch.context() as m:
            m.setattr(loop_module, "apply_gradients", signalled)
            result = train(tiny("eval.at_end=false"), tmp_path / "run", SOURCE, quiet=True)
        assert result.steps == 6 and len(calls) == 6
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    train(tiny(), tmp_path / "long", SOURCE, quiet=True)
    train(tiny("train.meta_steps=4"), tmp_path / "short", SOURCE, quiet=True)
    config = resume_config(tmp_path / "short", ["train.meta_steps=6"])
    train(config, tmp_path / "short", SOURCE, resume=True, quiet=True)
    assert_same_state(
        checkpoint.load(tmp_path / "long" / "checkpoint.pt"),
        checkpoint.load(tmp_path / "short" / "checkpoint.pt"),
    )


def test_the_outer_lr_decays_at_its_milestones() -> None:
    cfg = tiny("train.outer_lr=0.4", "train.outer_lr_milestones=[2, 5]", "train.outer_lr_gamma=0.5")
    lrs = [outer_lr(cfg.train, step) for step in range(7)]
    assert lrs == [0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1]
    assert outer_lr(tiny().train, 10**6) == 1e-3  # no milestones: constant


def test_a_schedule_equals_resuming_with_the_decayed_lr(tmp_path: Path) -> None:
    """Updates after a milestone use the decayed lr; a resume uses its config's lr, not the
    one in the optimizer state it loads."""
    scheduled = tiny("train.meta_steps=4", "train.outer_lr_milestones=[2]")
    train(scheduled, tmp_path / "scheduled", SOURCE, quiet=True)
    train(tiny("train.meta_steps=2"), tmp_path / "resumed", SOURCE, quiet=True)
    config = resume_config(tmp_path / "resumed", ["train.meta_steps=4", "train.outer_lr=1e-4"])
    train(config, tmp_path / "resumed", SOURCE, resume=True, quiet=True)
    train(tiny("train.meta_steps=4"), tmp_path / "constant", SOURCE, quiet=True)
    scheduled, resumed, constant = (
        checkpoint.load(tmp_path / run / "checkpoint.pt")
        for run in ("scheduled", "resumed", "constant")
    )
    assert_same_state(scheduled, resumed)
    assert not torch.equal(scheduled["params"]["net.0.weight"], constant["params"]["net.0.weight"])
    records = RunDir(tmp_path / "scheduled").read_metrics()
    # logged every 2 steps: the lr of the updates to steps 1-2, then 3-4
    assert [r["outer_lr"] for r in records if r["split"] == "train"] == [1e-3, 1e-4]


def test_a_nan_meta_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop_module.make_gradient_fn

    def nan_at_step_5(config: Config, problem: Any) -> Any:
        fn, calls = real(config, problem), []

        def wrapped(params: Any, tasks: Any) -> Any:
            calls.append(1)
            grads, info = fn(params, tasks)
            if len(calls) == 5:
                info = {**info, "query_loss": info["query_loss"] * math.nan}
            return grads, info

        return wrapped

    monkeypatch.setattr(loop_module, "make_gradient_fn", nan_at_step_5)
    with pytest.raises(Diverged, match=r"not finite \(NaN/inf\) at step 5;.*checkpoint \(step 4\)"):
        train(tiny(), tmp_path / "run", SOURCE, quiet=True)
    state = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["params"].values())


def test_a_run_directory_is_never_overwritten(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny(), tmp_path / "run", SOURCE, resume=True, quiet=True)
    train(tiny("train.meta_steps=2"), tmp_path / "run", SOURCE, quiet=True)
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train(tiny(), tmp_path / "run", SOURCE, quiet=True)


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    config = Config().to_json()
    checkpoint.save({"step": 1, "params": {"w": torch.ones(3)}, "config": config}, path)

    def crash(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save({"step": 2, "params": {"w": torch.zeros(3)}, "config": config}, path)
    state = checkpoint.load(path)
    assert state["step"] == 1 and torch.equal(state["params"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left


def test_checkpoint_load_rejects_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not an imaml checkpoint, or corrupt"):
        checkpoint.load(tmp_path / "junk.pt")
    torch.save({"params": {}}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not an imaml checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "absent.pt")


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
    monkeypatch.setattr(_tasks, "CPU_CHUNK_ELEMENTS", 1)
    chunked = evaluate(problem, params, sampler, adaptation, tasks=5, batch=2)
    assert chunked.to_dict() == pytest.approx(result.to_dict(), rel=1e-6)


def test_inner_progress_measures_the_distance_to_the_proximal_minimizer(
    linear_tasks: LinearTasks,
) -> None:
    """Linear least squares, where φ* = (H + λI)⁻¹(c + λθ) in closed form."""
    lam, t = 0.7, linear_tasks
    tasks = TaskBatch(t.xs, t.ys, t.xq, t.yq)
    b = tasks.xs.shape[0]
    problem = Problem(torch.nn.Identity(), linear_loss, has_aux=False, metric="mse")
    theta = t.theta_vec
    phi = torch.stack([t.prox_solution(i, lam) for i in range(b)])
    grad0 = torch.stack([h @ theta - c for h, c in map(t.quadratic, tasks.xs, tasks.ys)])

    start = inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(0, 0.1), lam))
    assert torch.equal(start.distance, torch.zeros(b))
    torch.testing.assert_close(start.grad_norm, grad0.norm(dim=-1))
    torch.testing.assert_close(start.objective, start.support_loss)
    # ∇²f = H + λI everywhere; Lanczos over all n dimensions finds its extreme eigenvalues
    n = theta.numel()
    exact = inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(0, 0.1), lam), n)
    eigenvalues = lam * torch.stack([t.eigenvalues(i, lam) for i in range(b)])
    torch.testing.assert_close(exact.min_curvature, eigenvalues[:, 0])
    torch.testing.assert_close(exact.max_curvature, eigenvalues[:, -1])
    assert torch.all(start.max_curvature <= eigenvalues[:, -1] + 1e-9)  # a Ritz value

    end = inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(2000, 0.1), lam))
    torch.testing.assert_close(end.distance, (phi - theta).norm(dim=-1))
    assert end.grad_norm.max() < 1e-10
    query = torch.stack([linear_loss(t.unflatten(phi[i]), t.xq[i], t.yq[i]) for i in range(b)])
    torch.testing.assert_close(end.query_metric, query)
    torch.testing.assert_close(
        end.objective, end.support_loss + 0.5 * lam * (phi - theta).pow(2).sum(-1)
    )


@pytest.mark.parametrize("lam", [-1.0, float("nan"), float("inf")])
def test_inner_progress_rejects_a_bad_lam(linear_tasks: LinearTasks, lam: float) -> None:
    t = linear_tasks
    problem = Problem(torch.nn.Identity(), linear_loss, has_aux=False, metric="mse")
    tasks = TaskBatch(t.xs, t.ys, t.xq, t.yq)
    with pytest.raises(ValueError, match=r"lam .* positive finite number or 0"):
        inner_progress(problem, t.theta, tasks, Adaptation(imaml.inner.GD(1, 0.1), lam))


def test_the_configs_character_split_picks_omniglots_characters(
    tmp_path: Path, omniglot_root: Path
) -> None:
    source = DataSource(omniglot_root, cache_dir=tmp_path)
    split = ["data.character_split=random", "data.character_seed=3"]
    config = load_config("omniglot-5w1s", split)[1]
    test = build_sampler(config, "test", source, seed=0).dataset
    assert test.character_split == "random"
    assert test.character_ids.tolist() == random_split_ids("test", seed=3).tolist()
    vinyals = build_sampler(load_config("omniglot-5w1s")[1], "test", source, seed=0).dataset
    assert vinyals.character_split == "vinyals" and vinyals.character_ids.min() == 1201


def test_held_out_sinusoid_tasks_differ_from_training_tasks() -> None:
    config = tiny()
    train_tasks = build_sampler(config, "train", SOURCE, seed=0).sample_tasks(range(4))
    for split in ("val", "test"):
        held_out = build_sampler(config, split, SOURCE, seed=0).sample_tasks(range(4))
        assert not torch.equal(train_tasks.xs, held_out.xs)


# -- summarize_run: steps, meta-step time and validation history read back from a run dir --


def test_eval_results_round_trip_through_their_metrics_records() -> None:
    for result in (
        EvalResult("accuracy", 0.9, 0.01, 0.3, 600),
        EvalResult("mse", 0.2, 0.03, 0.2, 8),
    ):
        record = json.loads(json.dumps({"step": 7, "split": "val", **result.to_dict(), "best": 1}))
        assert EvalResult.from_dict(record) == result


def records_of(run: Path, split: str) -> list[dict]:
    return [r for r in RunDir(run).read_metrics() if r["split"] == split]


def test_summary_of_a_finished_run_matches_its_records(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny("eval.at_end=true"), run, SOURCE, quiet=True)
    summary = summarize_run(run)
    assert (summary.step, summary.meta_steps) == (6, 6)
    # Three logged windows of 2 steps each.
    expected = sum(2 * r["sec_per_step"] for r in records_of(run, "train"))
    assert summary.train_seconds == pytest.approx(expected, rel=1e-12)
    val = records_of(run, "val")
    assert [s for s, _ in summary.validation] == [3, 6]
    assert [r.mean for _, r in summary.validation] == [r["mse"] for r in val]
    assert summary.best_step == result.best[0]
    assert [name for name, _ in summary.final] == ["meta-learned", "initial"]
    assert summary.final[0][1] == result.final and summary.final[1][1] == result.baseline
    assert json.loads(json.dumps(summary.to_dict()))["validation"][0]["step"] == 3


def test_summary_of_a_resumed_run_counts_each_step_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny("train.meta_steps=4"), run, SOURCE, quiet=True)
    assert summarize_run(run).step == 4
    train(resume_config(run, ["train.meta_steps=6"]), run, SOURCE, resume=True, quiet=True)
    summary = summarize_run(run)
    assert summary.step == 6 and [s for s, _ in summary.validation] == [3, 4, 6]
    expected = sum(2 * r["sec_per_step"] for r in records_of(run, "train"))
    assert summary.train_seconds == pytest.approx(expected, rel=1e-12)


def write_run(run: Path, metrics: list[dict]) -> None:
    run.mkdir()
    config = load_config("omniglot-5w1s", ["train.meta_steps=25"])[1]
    (run / "config.toml").write_text(config.to_toml())
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def test_summary_weights_each_window_by_its_steps(tmp_path: Path) -> None:
    val = {"split": "val", "ci95": 0.01, "loss": 0.3, "tasks": 200}
    write_run(
        tmp_path / "run",
        [
            {"step": 10, "split": "train", "sec_per_step": 2.0, "residual": 0.5},
            {"step": 10, "accuracy": 0.90, "best": True, **val},
            {"step": 20, "split": "train", "sec_per_step": 3.0, "residual": 0.25},
            {"step": 20, "accuracy": 0.95, "best": True, **val},
            # The last, shorter window; a diagnostic that older records lack.
            {"step": 25, "split": "train", "sec_per_step": 4.0, "residual": 0.0, "curv": -1.0},
            {"step": 25, "accuracy": 0.93, "best": False, **val},
        ],
    )
    summary = summarize_run(tmp_path / "run")
    assert summary.train_seconds == 10 * 2.0 + 10 * 3.0 + 5 * 4.0
    assert summary.validation[1] == (20, EvalResult("accuracy", 0.95, 0.01, 0.3, 200))
    assert summary.best_step == 20 and summary.final == ()
    # Records at steps 10, 20, 25 lie in the last 250 steps; "curv" only in the last.
    assert summary.recent == {"residual": 0.25, "curv": -1.0}
    text = str(summary).splitlines()
    assert text[1] == "meta-steps: 25 of 25, 0.02 h of meta-steps (2.80 s per step)"
    assert text[2] == "steps 1-25 (mean): residual 0.25, curv -1"
    assert [line.endswith("(best)") for line in text[4:]] == [False, True, False]
    assert "accuracy 95.00% ± 1.00%" in text[5]
    # The run as it stood at step 20, diagnostics over its last 10 steps.
    then = summarize_run(tmp_path / "run", recent_steps=10, until=24)
    assert (then.step, then.train_seconds, then.best_step) == (20, 10 * 2.0 + 10 * 3.0, 20)
    assert [s for s, _ in then.validation] == [10, 20] and then.recent == {"residual": 0.25}
    assert str(then).splitlines()[2] == "steps 11-20 (mean): residual 0.25"


def test_summary_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SummaryError, match=r"no config\.toml"):
        summarize_run(tmp_path)
    write_run(tmp_path / "run", [])
    with pytest.raises(SummaryError, match="no training records yet"):
        summarize_run(tmp_path / "run")
    with pytest.raises(SummaryError, match="must be positive"):
        summarize_run(tmp_path / "run", recent_steps=0)
