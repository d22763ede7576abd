"""Starting and resuming runs: checked before anything is written, and a resumed run equal to
an uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from imaml import checkpoint
from imaml.config import load_config
from imaml.training import RunDir, TrainingError, build_problem, resume_config, train
from test_cli import assert_one_line_error, run, sets
from training.helpers import (
    QUICK,
    SOURCE,
    assert_same_params,
    assert_same_state,
    files_of,
    flags,
    steps,
    tiny,
    train_args,
)


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    train(tiny(), tmp_path / "long", SOURCE, quiet=True)
    train(tiny("train.meta_steps=4"), tmp_path / "short", SOURCE, quiet=True)
    config = resume_config(tmp_path / "short", ["train.meta_steps=6"])
    train(config, tmp_path / "short", SOURCE, resume=True, quiet=True)
    assert_same_state(
        checkpoint.load(tmp_path / "long" / "checkpoint.pt"),
        checkpoint.load(tmp_path / "short" / "checkpoint.pt"),
    )


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


def test_a_run_directory_is_never_overwritten(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny(), tmp_path / "run", SOURCE, resume=True, quiet=True)
    train(tiny("train.meta_steps=2"), tmp_path / "run", SOURCE, quiet=True)
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train(tiny(), tmp_path / "run", SOURCE, quiet=True)


def test_resume_cuts_what_comes_after_the_checkpoint(tmp_path: Path, capsys: Any) -> None:
    """A kill after steps 3-4 were logged but before checkpoint 4 was written, and the tests
    at the end of a run that is then extended: the log is that of an uninterrupted run."""
    straight, run_dir = tmp_path / "straight", tmp_path / "run"
    at_end = ("eval.at_end=true", "eval.tasks=2", "eval.batch=2")
    assert run(capsys, *train_args(straight, *at_end))[0] == 0
    assert run(capsys, *train_args(run_dir, "train.meta_steps=2", *at_end))[0] == 0
    assert steps(run_dir, "test") == [2, 2]  # the meta-learned and the initial parameters
    step_2 = (run_dir / "checkpoint.pt").read_bytes()
    resume = ["train", "--resume", "--run-dir", run_dir, "-q", *flags("train.meta_steps=4")]
    assert run(capsys, *resume)[0] == 0
    (run_dir / "checkpoint.pt").write_bytes(step_2)  # as if killed before checkpoint 4
    assert run(capsys, *resume)[0] == 0
    assert steps(run_dir) == [1, 2, 3, 4] and steps(run_dir, "test") == [4, 4]
    assert_same_params(straight / "checkpoint.pt", run_dir / "checkpoint.pt")
    drop = ("sec_per_step", "tasks_per_sec")
    records = [
        {k: v for k, v in r.items() if k not in drop} for r in RunDir(run_dir).read_metrics()
    ]
    expected = [
        {k: v for k, v in r.items() if k not in drop} for r in RunDir(straight).read_metrics()
    ]
    assert records == expected


def test_a_fresh_start_never_mixes_two_runs(tmp_path: Path, capsys: Any) -> None:
    run_dir, fresh = tmp_path / "run", tmp_path / "fresh"
    assert run(capsys, *train_args(fresh, "train.seed=1"))[0] == 0
    assert run(capsys, *train_args(run_dir))[0] == 0
    # A checkpoint: resume it, or start afresh.
    code, _, err = run(capsys, *train_args(run_dir, "train.seed=1"))
    assert_one_line_error(code, err, "already holds a run; pass --resume", "--overwrite")
    code, _, err = run(capsys, *train_args(run_dir), "--resume", "--overwrite")
    assert_one_line_error(code, err, "choose one")
    # Metrics but no checkpoint: only a fresh start is possible.
    (run_dir / "checkpoint.pt").unlink()
    (run_dir / "best.pt").unlink(missing_ok=True)
    before = files_of(run_dir)
    code, _, err = run(capsys, *train_args(run_dir, "train.seed=1"))
    assert_one_line_error(code, err, "no checkpoint to resume; pass --overwrite", "--run-dir")
    assert files_of(run_dir) == before
    # --overwrite: the old run's files go, and the new run is a run of its own.
    old = [run_dir / "events.out.tfevents.1.host.2.0", run_dir / "curves.png"]
    for path in old:
        path.write_bytes(b"of the old run")
    code, _, err = run(capsys, *train_args(run_dir, "train.seed=1"), "--overwrite")
    assert code == 0, err
    assert not any(path.exists() for path in old) and steps(run_dir) == [1, 2, 3, 4]
    assert_same_params(fresh / "checkpoint.pt", run_dir / "checkpoint.pt")
    assert load_config(str(run_dir / "config.toml"))[1].train.seed == 1


# -- resume: checked before anything is written --------------------------------------------------


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path, capsys: Any) -> None:
    """A sinusoid checkpoint dropped into an Omniglot run's directory."""
    run_dir = tmp_path / "run"
    assert run(capsys, *train_args(run_dir))[0] == 0
    (run_dir / "config.toml").write_text(load_config("omniglot-5w1s")[1].to_toml())
    before = files_of(run_dir)
    code, _, err = run(capsys, "train", "--resume", "--run-dir", run_dir)
    assert_one_line_error(
        code, err, f"{run_dir / 'checkpoint.pt'} is not this run's checkpoint",
        "data.dataset is 'sinusoid' in it, 'omniglot' in config.toml",
    )  # fmt: skip
    assert files_of(run_dir) == before


def omniglot_run(run_dir: Path) -> None:
    """A run directory with a step-1 checkpoint of a small Omniglot Conv4 (no data needed)."""
    config = load_config("omniglot-5w1s", ["model.filters=4"])[1]
    params = dict(build_problem(config).model.named_parameters())
    optimizer = torch.optim.Adam(params.values())
    for p in params.values():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = {
        "kind": "last", "config": config.to_json(), "step": 1, "best": None,
        "params": {k: v.detach() for k, v in params.items()},
        "optimizer": optimizer.state_dict(), "rng": {"torch": torch.get_rng_state()},
    }  # fmt: skip
    with RunDir(run_dir).lock():  # as the run that wrote them
        checkpoint.save(state, run_dir / "checkpoint.pt")
        (run_dir / "config.toml").write_text(config.to_toml())


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("data.ways=20", ["data.ways cannot change on resume", "would change shape"]),
        ("model.filters=32", ["keeps its model.filters: model.filters is 4 in the checkpoint"]),
        ("train.outer_optimizer=sgd", ["keeps its train.outer_optimizer", "'adam'", "'sgd'"]),
        ("data.dataset=miniimagenet", ["keeps its data.dataset"]),
    ],
)
def test_resume_overrides_that_do_not_fit_the_checkpoint(
    tmp_path: Path, capsys: Any, override: str, fragments: list[str]
) -> None:
    omniglot_run(tmp_path)
    before = files_of(tmp_path)
    code, _, err = run(capsys, "train", "--resume", "--run-dir", tmp_path, "--set", override)
    assert_one_line_error(code, err, *fragments)
    assert files_of(tmp_path) == before  # config.toml byte-identical, nothing added


def test_resume_overrides_that_fit_keep_working(tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "run"
    assert run(capsys, *train_args(run_dir))[0] == 0
    before = files_of(run_dir)
    for override in ("train.outer_optimizer=sgd", "model.hidden=[8]"):
        code, _, err = run(capsys, "train", "--resume", "--run-dir", run_dir, "--set", override)
        assert_one_line_error(code, err, f"keeps its {override.split('=')[0]}")
        assert files_of(run_dir) == before
    changes = [
        "train.meta_steps=8", "train.outer_lr=3e-4", "train.outer_lr_milestones=[6]",
        "train.val_every=3", "train.log_every=2", "train.checkpoint_every=3",
    ]  # fmt: skip
    code, _, err = run(capsys, "train", "--resume", "--run-dir", run_dir, "-q", *flags(*changes))
    assert code == 0, err
    assert steps(run_dir) == [1, 2, 3, 4, 6, 8] and steps(run_dir, "val") == [6, 8]
    config = load_config(str(run_dir / "config.toml"))[1]
    assert (config.train.outer_lr, config.train.outer_lr_milestones) == (3e-4, [6])
    lrs = [r["outer_lr"] for r in RunDir(run_dir).read_metrics() if r["split"] == "train"]
    assert lrs == pytest.approx([1e-3] * 4 + [3e-4, 3e-5], rel=1e-15)


def test_resume_accepts_the_runs_own_config(tmp_path: Path, capsys: Any) -> None:
    """``imaml train CONFIG --resume``: the same command with --resume added (issue 25)."""
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "sinusoid", *train_args(run_dir)[1:])[0] == 0
    own = ["train", "sinusoid", "--resume", "--run-dir", run_dir, "-q"]
    code, _, err = run(capsys, *own, *sets(*QUICK, "train.meta_steps=6"))
    assert code == 0, err
    assert steps(run_dir) == [1, 2, 3, 4, 5, 6]
    code, _, err = run(capsys, *own, *sets(*QUICK, "train.meta_steps=6", "inner.lr=0.5"))
    assert code == 0, err  # an override applies to both
    before = files_of(run_dir)
    code, _, err = run(capsys, *own)
    assert_one_line_error(
        code, err, f"sinusoid is not the config of the run in {run_dir}",
        "train.meta_steps is 6 in the run, 2000 in sinusoid", "inner.lr is 0.5 in the run",
        "drop sinusoid",
    )  # fmt: skip
    code, _, err = run(capsys, "train", "omniglot-5w1s", "--resume", "--run-dir", run_dir)
    assert_one_line_error(
        code, err, "omniglot-5w1s is not the config of the run",
        "data.dataset is 'sinusoid' in the run, 'omniglot' in omniglot-5w1s",
    )  # fmt: skip
    assert files_of(run_dir) == before
