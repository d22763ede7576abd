"""The files of a run directory and the checkpoints in it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaml import checkpoint
from imaml.config import Config, from_dict


@dataclass(frozen=True)
class RunDir:
    """A run directory::

    config.toml       the resolved config (every key)
    metrics.jsonl     one JSON object per logged step / validation / final test
    checkpoint.pt     the latest state: params, optimizer, step, RNG, config
    best.pt           the params with the best validation metric so far
    events.out.tfevents.*   TensorBoard scalars (when tensorboard is installed)
    """

    path: Path

    @property
    def config(self) -> Path:
        """``config.toml``."""
        return self.path / "config.toml"

    @property
    def metrics(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        """``checkpoint.pt``."""
        return self.path / "checkpoint.pt"

    @property
    def best(self) -> Path:
        """``best.pt``."""
        return self.path / "best.pt"

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (empty if there is none)."""
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, step: int) -> None:
        """Drop the records logged after ``step`` (a resumed run logs them again)."""
        if not self.metrics.is_file():
            return
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= step]
        tmp = self.metrics.with_name(self.metrics.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.metrics)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or a run directory's ``best.pt`` (else ``checkpoint.pt``)."""
    path = Path(path)
    if path.is_dir():
        run = RunDir(path)
        if run.best.is_file():
            return run.best
        if run.checkpoint.is_file():
            return run.checkpoint
        raise checkpoint.CheckpointError(f"{path} holds no best.pt or checkpoint.pt")
    return path


def checkpoint_config(state: dict[str, Any], overrides: Iterable[str] = ()) -> Config:
    """The config stored in a checkpoint, with ``KEY=VALUE`` overrides applied."""
    return from_dict(json.loads(state["config"]), overrides)
