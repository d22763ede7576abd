"""Corrupt or foreign inputs: one line each, never a traceback, never torch's hint to load
with ``weights_only=False`` (which would run the file's code)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from imaml import checkpoint
from imaml.config import load_config
from imaml.training import build_problem
from test_cli import assert_one_line_error, run


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
