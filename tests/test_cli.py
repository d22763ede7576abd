"""The ``imaml`` command, run in-process through :func:`imaml.cli.main` (and once as a module)."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from imaml import checkpoint
from imaml.cli import main
from imaml.training import RunDir
from imaml.training import trainer as loop_module

TINY = [
    "train.meta_steps=4",
    "train.meta_batch=2",
    "inner.steps=2",
    "train.log_every=1",
    "train.val_every=2",
    "train.val_tasks=4",
    "train.checkpoint_every=2",
    "eval.tasks=8",
    "eval.batch=4",
]
CONFIGS = [
    "miniimagenet-5w1s",
    "omniglot-20w1s",
    "omniglot-20w1s-hf",
    "omniglot-20w1s-maml",
    "omniglot-20w5s",
    "omniglot-20w5s-hf",
    "omniglot-20w5s-maml",
    "omniglot-5w1s",
    "omniglot-5w1s-hf",
    "omniglot-5w1s-maml",
    "omniglot-5w1s-released",
    "omniglot-5w5s",
    "omniglot-5w5s-hf",
    "omniglot-5w5s-maml",
    "sinusoid",
]


def sets(*overrides: str) -> list[str]:
    return [arg for item in (*TINY, *overrides) for arg in ("--set", item)]


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """``main(argv)`` with its exit code, stdout and stderr."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit status 1 and, as the last line of stderr, one ``imaml: error:`` line (no traceback)."""
    assert code == 1
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("imaml: error: "), err
    for fragment in fragments:
        assert fragment in last, (fragment, last)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One resized-image cache for the session (resizing Omniglot takes a few seconds)."""
    return tmp_path_factory.mktemp("cache")


def test_train_sinusoid_by_default_then_eval(tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--run-dir", run_dir, *sets())
    assert code == 0, err
    assert "training sinusoid (imaml, sinusoid, 4 meta-steps of 2 tasks)" in err
    assert "step 4/4" in err  # progress lines when stderr is not a terminal
    assert "the meta-learned init: mse" in out and "the initial random init: mse" in out
    assert 'description = "iMAML-GD, sinusoid' in (run_dir / "config.toml").read_text()

    code, out, err = run(capsys, "eval", run_dir, "--tasks", "10", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tasks"] == 10 and result["split"] == "test" and result["mse"] > 0
    assert result["ci95"] > 0 and result["checkpoint"].endswith("best.pt")

    code, out, _ = run(capsys, "eval", run_dir / "checkpoint.pt", "--tasks", "10")
    assert code == 0 and "sinusoid, 10 test tasks: mse" in out and "(step 4)" in out


def test_eval_overrides_how_the_checkpoint_adapts(tmp_path: Path, capsys: Any) -> None:
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--run-dir", run_dir, "-q", *sets("eval.at_end=false"))[0] == 0

    def mse(*overrides: str) -> float:
        code, out, err = run(capsys, "eval", run_dir, "--tasks", "10", "--json", *overrides)
        assert code == 0, err
        return json.loads(out)["mse"]

    adapted = mse()  # with the 2 inner steps the run trained with
    assert mse("--set", "eval.inner_steps=2") == adapted
    longer = mse("--set", "eval.inner_steps=5")
    assert longer != adapted and longer == mse("--set", "inner.steps=5")
    code, out, _ = run(capsys, "eval", run_dir, "--tasks", "2", "--set", "eval.inner_steps=3")
    step = checkpoint.load(run_dir / "best.pt")["step"]
    assert code == 0 and f"best.pt --set eval.inner_steps=3 (step {step})" in out
    code, _, err = run(capsys, "eval", run_dir, "--set", "model.hidden=[8]")
    assert_one_line_error(code, err, "parameters do not fit its config's model")
    code, _, err = run(capsys, "eval", run_dir, "--set", "eval.inner_step=3")
    assert_one_line_error(code, err, "inner_step")


def test_train_and_eval_on_real_omniglot(
    tmp_path: Path, capsys: Any, omniglot_root: Path, cache_dir: Path
) -> None:
    machine = ["--data-dir", omniglot_root, "--cache-dir", cache_dir]
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys, "train", "omniglot-5w1s", "--run-dir", run_dir, "-q", *machine,
        *sets("train.meta_steps=2", "eval.batch=2"),
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert 0 <= records[0]["query_accuracy"] <= 1
    # MINRES (the bundled solver) never returns a residual above that of g = 0.
    assert all(r["solver_residual"] <= 1 + 1e-5 for r in records if r["split"] == "train")
    val = [r for r in records if r["split"] == "val"]
    assert len(val) == 1 and 0 <= val[0]["accuracy"] <= 1 and val[0]["tasks"] == 4

    code, out, err = run(capsys, "eval", run_dir, "--tasks", "4", "--json", *machine)
    assert code == 0, err
    result = json.loads(out)
    assert result["split"] == "test" and result["tasks"] == 4
    assert 0 <= result["accuracy"] <= 1 and result["ci95"] >= 0
    assert result["character_split"] == "vinyals"

    random = ["--set", "data.character_split=random", "--set", "data.character_seed=2"]
    code, out, err = run(capsys, "eval", run_dir, "--tasks", "4", *random, *machine)
    assert code == 0, err
    assert "omniglot 5-way 1-shot, 4 test tasks of the random character split (seed 2): acc" in out


def test_ctrl_c_saves_and_the_run_resumes(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop_module.make_gradient_fn

    def interrupted_at_step_3(config: Any, problem: Any) -> Any:
        fn, calls = real(config, problem), []

        def wrapped(params: Any, tasks: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return fn(params, tasks)

        return wrapped

    monkeypatch.setattr(loop_module, "make_gradient_fn", interrupted_at_step_3)
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "--run-dir", run_dir, "-q", *sets())
    assert code == 130
    assert (
        f"interrupted (SIGINT) after step 2; checkpoint saved to {run_dir / 'checkpoint.pt'}" in err
    )
    assert f"resume with: imaml train --resume --run-dir {run_dir}" in err
    monkeypatch.setattr(loop_module, "make_gradient_fn", real)

    code, out, err = run(capsys, "train", "--resume", "--run-dir", run_dir, "-q")
    assert code == 0, err
    assert "trained to step 4" in out
    assert checkpoint.load(run_dir / "checkpoint.pt")["step"] == 4


def test_sigterm_stops_a_background_run_with_a_checkpoint(tmp_path: Path) -> None:
    """``kill PID`` (or a scheduler) stops ``imaml train`` like Ctrl-C, also in a process that
    ignores SIGINT as one started with ``&`` from a script does."""
    run_dir = tmp_path / "run"
    never = ["train.meta_steps=1000000", "train.checkpoint_every=1000000", "train.val_every=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "imaml", "train", "--run-dir", str(run_dir), "-q", *sets(*never)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        deadline = time.monotonic() + 120
        while len(RunDir(run_dir).read_metrics()) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    step = checkpoint.load(run_dir / "checkpoint.pt")["step"]
    assert step >= 3
    assert f"interrupted (SIGTERM) after step {step}; checkpoint saved to" in err
    assert f"resume with: imaml train --resume --run-dir {run_dir}" in err


def test_bad_config_keys_and_values(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(capsys, "train", "--run-dir", tmp_path, "--set", "train.metasteps=3")
    assert_one_line_error(code, err, "unknown config key 'train.metasteps'", "train.meta_steps")
    code, _, err = run(capsys, "train", "--run-dir", tmp_path, "--set", "train.meta_batch=two")
    assert_one_line_error(code, err, "train.meta_batch must be an integer, got 'two'")
    code, _, err = run(capsys, "train", "no-such-config")
    assert_one_line_error(code, err, "no bundled config named 'no-such-config'")
    assert not any(tmp_path.iterdir())  # nothing was started


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(
        capsys, "train", "omniglot-5w1s", "--run-dir", tmp_path / "run",
        "--data-dir", tmp_path / "empty", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert_one_line_error(code, err, "Omniglot", "not found in", "add --download", "--data-dir")


def test_a_nan_meta_loss_stops_with_the_step(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(capsys, "train", "--run-dir", tmp_path / "run", *sets("inner.lr=1e30"))
    assert_one_line_error(code, err, "not finite (NaN/inf) at step 1", "no checkpoint")


def test_resume_usage_errors(tmp_path: Path, capsys: Any) -> None:
    code, _, err = run(capsys, "train", "--resume")
    assert_one_line_error(code, err, "--resume needs --run-dir")
    code, _, err = run(capsys, "train", "sinusoid", "--resume", "--run-dir", tmp_path)
    assert_one_line_error(code, err, "nothing to resume")  # CONFIG may name the run's own
    code, _, err = run(capsys, "train", "--resume", "--run-dir", tmp_path)
    assert_one_line_error(code, err, "nothing to resume")
    code, _, err = run(capsys, "eval", tmp_path)
    assert_one_line_error(code, err, "holds no best.pt or checkpoint.pt")


def test_configs_lists_every_bundled_config(capsys: Any) -> None:
    code, out, _ = run(capsys, "configs")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert names == CONFIGS
    assert all(len(line.split(maxsplit=1)) == 2 for line in out.splitlines())
    code, out, _ = run(capsys, "configs", "omniglot-5w1s")
    assert code == 0 and "lam = 0.5" in out and "# " in out


def test_python_dash_m_imaml_configs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "imaml", "configs"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()] == CONFIGS


def test_a_closed_pipe_ends_the_listing_quietly() -> None:
    """`imaml configs | true`: the reader is gone before the listing (as `| head -1` leaves
    after a line); no error, no traceback."""
    shell = f"{shlex.quote(sys.executable)} -m imaml configs | true"
    proc = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, check=False)
    assert proc.stderr == ""


def test_plot_and_summary_read_a_run_dir(tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("matplotlib")
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--run-dir", run_dir, "-q", *sets("eval.at_end=false"))[0] == 0
    code, out, _ = run(capsys, "plot", run_dir)
    assert code == 0 and out.strip() == str(run_dir / "curves.png")
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run(capsys, "plot", tmp_path / "elsewhere")
    assert_one_line_error(code, err, "holds no training records")
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code, _, err = run(capsys, "plot", run_dir, copy)
    assert_one_line_error(code, err, "comparing 2 runs needs -o FILE.png")
    code, out, _ = run(capsys, "plot", run_dir, copy, "-o", tmp_path / "compare.png")
    assert code == 0 and out.strip() == str(tmp_path / "compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    code, out, _ = run(capsys, "summary", run_dir)
    assert code == 0 and out.splitlines()[1].startswith("meta-steps: 4 of 4, ")
    code, out, _ = run(capsys, "summary", run_dir, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["step"] == 4 and summary["train_seconds"] > 0
    assert [v["step"] for v in summary["validation"]] == [2, 4]
    code, out, _ = run(capsys, "summary", run_dir, "--until", "2", "--recent", "1", "--json")
    then = json.loads(out)
    assert code == 0 and then["step"] == 2 and then["recent"]["meta_loss"] > 0
    code, _, err = run(capsys, "summary", tmp_path)
    assert_one_line_error(code, err, "is not a run directory")
