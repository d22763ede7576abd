"""Run directories that cannot be corrupted (issue 26): one writer, kill -9 at any moment, and
metrics lines cut short."""

from __future__ import annotations

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

from imaml.training import RunDir
from imaml.training.rundir import MetricsWarning
from test_cli import assert_one_line_error, run
from training.helpers import assert_same_params, files_of, flags, steps, train_args

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
