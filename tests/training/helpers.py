"""What the training tests share: a tiny sinusoid config, `imaml train` arguments, and
comparisons of run directories and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imaml import checkpoint
from imaml.config import Config, load_config
from imaml.training import DataSource, RunDir
from test_cli import sets

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
