"""Run directories that cannot be corrupted (issue 26): one writer, metrics that never hold a
step twice, resumes checked before anything is written, a full disk, kill -9 at any moment."""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from imaml import checkpoint
from imaml.config import load_config
from imaml.training import DataSource, RunDir, build_problem, build_sampler
from imaml.training.rundir import MetricsWarning
from test_cli import assert_one_line_error, run, sets
from test_train import assert_same_state

QUICK = ("eval.at_end=false", "train.val_every=0")


def train_args(run_dir: Path, *overrides: str) -> list[str | Path]:
    """``imaml train`` of the tests' tiny sinusoid config (4 steps, checkpoints at 2 and 4)."""
    return ["train", "--run-dir", run_dir, "-q", *sets(*QUICK, *overrides)]


def flags(*overrides: str) -> list[str]:
    """``--set`` options of just these overrides (a resume keeps the rest from its run)."""
    return [arg for item in overrides for arg in ("--set", item)]


def files_of(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def steps(run_dir: Path, split: str = "train") -> list[int]:
    return [r["step"] for r in RunDir(run_dir).read_metrics() if r["split"] == split]


def assert_same_params(a: Path, b: Path) -> None:
    """Bit-for-bit equal step, parameters and optimizer state of two checkpoint files."""
    assert_same_state(checkpoint.load(a), checkpoint.load(b))


# -- one writer ---------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_changes_nothing(tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "run"
    assert run(capsys, *train_args(run_dir))[0] == 0
    before = files_of(run_dir)
    resume = ["train", "--resume", "--run-dir", run_dir, "-q", *flags("train.meta_steps=6")]
    holder = f"{run_dir} is in use by process {os.getpid()} on {socket.gethostname()}"
    with RunDir(run_dir).lock():  # this process trains into it, as another `imaml train` would
        held = files_of(run_dir)
        assert held[".lock"].decode().split() == [str(os.getpid()), socket.gethostname()]
        for argv in (resume, [*train_args(run_dir), "--overwrite"]):
            code, _, err = run(capsys, *argv)
            assert_one_line_error(code, err, holder)
            assert files_of(run_dir) == held
    assert {k: v for k, v in held.items() if k != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }
    code, _, err = run(capsys, *resume)  # released: the run goes on
    assert code == 0, err
    assert steps(run_dir) == [1, 2, 3, 4, 5, 6]


def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    """SIGKILL leaves no lock, no torn checkpoint and no step logged twice."""
    tiny = [
        "train.meta_steps=30", "train.meta_batch=2", "inner.steps=2", "train.log_every=1",
        "train.checkpoint_every=1", "train.val_every=7", "train.val_tasks=2", "eval.at_end=false",
    ]  # fmt: skip
    overrides = [arg for item in tiny for arg in ("--set", item)]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def imaml_train(run_dir: Path, *args: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "imaml", "train", "sinusoid", "--run-dir", str(run_dir)]
        return subprocess.Popen(
            [*argv, "-q", "--threads", "1", *overrides, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def resume_or_start_afresh() -> subprocess.Popen[bytes]:
        if (killed / "checkpoint.pt").exists():
            return imaml_train(killed, "--resume")
        return imaml_train(killed, "--overwrite")  # killed before its first checkpoint

    reference = imaml_train(straight)
    rng = random.Random(26)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)  # a torn last line, or one being written
        for _ in range(3):
            proc = resume_or_start_afresh()
            logged = len(RunDir(killed).read_metrics())
            deadline = time.monotonic() + 60
            while len(RunDir(killed).read_metrics()) <= logged and time.monotonic() < deadline:
                assert proc.poll() is None, proc.communicate()[1]
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))  # mid-step, mid-log or mid-checkpoint write
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    resumed = resume_or_start_afresh()
    for proc in (resumed, reference):
        assert proc.wait(timeout=120) == 0, proc.communicate()[1]
    assert_same_params(straight / "checkpoint.pt", killed / "checkpoint.pt")
    assert steps(killed) == list(range(1, 31)) and steps(killed, "val") == steps(straight, "val")
    assert not list(killed.glob(".*.tmp"))


# -- metrics.jsonl ------------------------------------------------------------------------------


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    assert run(capsys, *train_args(run_dir, "train.val_every=2"))[0] == 0
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "split": "tr')  # a crash or a full disk mid-write
    warning = "imaml: warning: " + f"{run_dir / 'metrics.jsonl'}: skipped its incomplete last line"
    for argv in (["summary", run_dir], ["plot", run_dir]):
        code, _, err = run(capsys, *argv)
        assert code == 0 and "Traceback" not in err and warning in err, err
    assert "meta-steps: 4 of 4" in run(capsys, "summary", run_dir)[1]
    # Temporary files of writes killed mid-way, removed when the next writer starts.
    stale = [run_dir / ".checkpoint.pt.k1ll3d00.tmp", run_dir / ".best.pt.k1ll3d01.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    code, _, err = run(
        capsys, "train", "--resume", "--run-dir", run_dir, "-q", *flags("train.meta_steps=6")
    )
    assert code == 0 and warning in err, err
    assert not any(path.exists() for path in stale)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetricsWarning)  # the torn line is gone
        assert steps(run_dir) == [1, 2, 3, 4, 5, 6] and steps(run_dir, "val") == [2, 4, 6]


def test_a_bad_line_inside_the_log_is_skipped_and_named(tmp_path: Path) -> None:
    run_dir = tmp_path
    lines = [
        '{"step": 1, "split": "train"}',
        "[1, 2]",
        '{"no": "step"}',
        '{"step": 2, "split": "val"}',
    ]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(MetricsWarning) as caught:
        assert [r["step"] for r in RunDir(run_dir).read_metrics()] == [1, 2]
    assert [str(w.message).split(": ")[1] for w in caught] == [
        "skipped line 2, not a record, (a write cut short by a crash or a full disk?)",
        "skipped line 3, not a record, (a write cut short by a crash or a full disk?)",
    ]


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


# -- the machine's faults ------------------------------------------------------------------------


def full_disk(after: int, wrapped: bool) -> Any:
    """A torch.save that works ``after`` times, then fails as on a full disk: torch's zip
    writer raises a RuntimeError ("unexpected pos") from the OSError, or the OSError itself."""
    real, calls = torch.save, []

    def save(obj: Any, f: Any) -> None:
        calls.append(1)
        if len(calls) <= after:
            return real(obj, f)
        f.write(b"half a checkpoint")
        if not wrapped:
            raise OSError(errno.ENOSPC, "No space left on device")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # as torch's writer: the OSError is only the RuntimeError's context
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904

    return save


@pytest.mark.parametrize("wrapped", [False, True], ids=["OSError", "torch-RuntimeError"])
def test_a_full_disk_while_checkpointing_is_one_line(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    run_dir = tmp_path / "run"
    monkeypatch.setattr(checkpoint.torch, "save", full_disk(after=1, wrapped=wrapped))
    code, _, err = run(capsys, *train_args(run_dir))
    assert_one_line_error(
        code, err, f"no space left on device writing {run_dir / 'checkpoint.pt'}; the previous "
        "checkpoint is intact",
    )  # fmt: skip
    monkeypatch.undo()
    assert checkpoint.load(run_dir / "checkpoint.pt")["step"] == 2
    assert not list(run_dir.glob(".*.tmp"))
    assert run(capsys, "train", "--resume", "--run-dir", run_dir, "-q")[0] == 0


def test_a_full_disk_at_the_first_checkpoint_says_none_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint.torch, "save", full_disk(after=0, wrapped=True))
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(checkpoint.CheckpointError, match=r"; no checkpoint was written$"):
        checkpoint.save({"step": 0}, path)
    assert not any(tmp_path.iterdir())


# -- --data-dir: the folder holding the data sets, or a data set's own folder ---------------------


def test_data_dir_may_be_the_data_sets_own_folder(tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    assert DataSource(tmp_path).dataset_root("omniglot") == tmp_path / "omniglot"
    assert DataSource(tmp_path / "omniglot").dataset_root("omniglot") == tmp_path / "omniglot"
    assert DataSource(tmp_path / "Omniglot").dataset_root("omniglot") == tmp_path / "Omniglot"
    assert DataSource(tmp_path / "elsewhere").dataset_root("miniimagenet") == (
        tmp_path / "elsewhere" / "miniimagenet"
    )  # not there: the error names the folder it looked in
    nested = tmp_path / "omniglot" / "omniglot"
    nested.mkdir()  # a folder named omniglot that holds omniglot/: the one inside
    assert DataSource(tmp_path / "omniglot").dataset_root("omniglot") == nested
    home = DataSource(Path("~/no-such-folder")).dataset_root("omniglot")
    assert home == Path.home() / "no-such-folder" / "omniglot"


def test_omniglot_loads_from_either_folder(tmp_path: Path, omniglot_root: Path) -> None:
    config = load_config("omniglot-5w1s", ["data.rotations=false"])[1]
    datasets = [
        build_sampler(config, "val", DataSource(root, cache_dir=tmp_path), seed=0).dataset
        for root in (omniglot_root, omniglot_root / "omniglot")
    ]
    assert datasets[0].character_ids.tolist() == datasets[1].character_ids.tolist()
    assert (datasets[0].images == datasets[1].images).all()
