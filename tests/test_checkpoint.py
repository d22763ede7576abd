"""Checkpoints: atomic writes, and corrupt or foreign inputs or a full disk as one line each,
never a traceback, never torch's hint to load with ``weights_only=False`` (which would run the
file's code)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from imaml import checkpoint
from imaml.config import Config, load_config
from imaml.training import build_problem
from test_cli import assert_one_line_error, run
from training.helpers import train_args


def valid_state() -> dict[str, Any]:
    """What a best.pt holds: a sinusoid model's parameters, config and step."""
    config = load_config("sinusoid")[1]
    params = {k: v.detach() for k, v in build_problem(config).model.named_parameters()}
    return {"kind": "best", "config": config.to_json(), "step": 3, "params": params}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in valid_state().items() if k != key}


CORRUPT: dict[str, tuple[Any, str]] = {
    # name: (what the file holds, what the message must say)
    "no-config": (without("config"), "is incomplete: it has no config"),
    "no-params": (without("params"), "is incomplete: it has no params"),
    "params-not-tensors": ({**valid_state(), "params": {"w": [1.0]}}, "not a dict of named"),
    "config-not-json": ({**valid_state(), "config": "{oops"}, "holds an invalid config: "),
    "config-bad-key": (
        {**valid_state(), "config": json.dumps({"train": {"metasteps": 3}})},
        "holds an invalid config: unknown config key 'train.metasteps'",
    ),
    "config-bad-value": (
        {**valid_state(), "config": json.dumps({"train": {"meta_batch": 0}})},
        "holds an invalid config: train.meta_batch must be > 0, got 0",
    ),
    "config-not-a-table": ({**valid_state(), "config": "[1, 2]"}, "holds an invalid config"),
}


def write(path: Path, contents: Any) -> Path:
    """A file saved as checkpoint.save does, or raw bytes."""
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        torch.save({**contents, "format": checkpoint.FORMAT}, path)
    return path


def assert_no_hint(err: str) -> None:
    assert "weights_only" not in err and "Weights only" not in err, err


@pytest.mark.parametrize("case", CORRUPT)
def test_an_incomplete_or_invalid_checkpoint_is_one_line(
    tmp_path: Path, capsys: Any, case: str
) -> None:
    contents, fragment = CORRUPT[case]
    path = write(tmp_path / "model.pt", contents)
    code, _, err = run(capsys, "eval", path, "--tasks", "2")
    assert_one_line_error(code, err, str(path), fragment)
    assert_no_hint(err)


class Payload:
    """A class a pickle could name: loading it would import and run code."""


@pytest.mark.parametrize(
    ("contents", "fragment"),
    [
        (b"", "is empty (0 bytes), not a checkpoint"),
        (b"not a checkpoint", "not an imaml checkpoint, or corrupt"),
        (b"PK\x03\x04 half a zip", "cannot read checkpoint"),
        ({"code": os.system}, "refusing to load code from it"),
        ({"code": Payload()}, "refusing to load code from it"),
    ],
    ids=["empty", "text", "torn-zip", "global", "object"],
)
def test_an_unreadable_checkpoint_is_one_line_without_the_weights_only_hint(
    tmp_path: Path, capsys: Any, contents: Any, fragment: str
) -> None:
    path = write(tmp_path / "checkpoint.pt", contents)
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.load(path)
    assert fragment in str(caught.value) and not str(caught.value).rstrip().endswith(":")
    for argv in (["eval", path], ["train", "--resume", "--run-dir", tmp_path]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, f"{path}", fragment)
        assert_no_hint(err)


def test_a_binary_config_file_is_one_line(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'algorithm = "imaml"\n' + bytes(range(128, 256)))
    code, _, err = run(capsys, "train", path, "--run-dir", tmp_path / "run")
    assert_one_line_error(code, err, f"{path} is not a TOML file: byte 20 is not UTF-8 text")
    assert not (tmp_path / "run").exists()
    # The same file as a run directory's config.toml, read by `imaml summary`.
    code, _, err = run(capsys, "summary", tmp_path)
    assert_one_line_error(code, err, "is not a TOML file")


def test_a_checkpoint_round_trips_and_save_adds_the_format(tmp_path: Path) -> None:
    state = valid_state()
    checkpoint.save(state, tmp_path / "best.pt")
    loaded = checkpoint.load(tmp_path / "best.pt")
    assert loaded.keys() == {*state, "format"} and loaded["format"] == checkpoint.FORMAT
    assert all(torch.equal(loaded["params"][k], v) for k, v in state["params"].items())


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


# -- a full disk --------------------------------------------------------------------------------


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
