"""The files of a run directory, the lock that gives it one writer, and which checkpoint in it
to load."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaml import checkpoint
from imaml._atomic import remove_temporaries, write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]


class RunInUse(Exception):
    """Another process holds the lock of the run directory (it is training into it)."""


class MetricsWarning(UserWarning):
    """A line of ``metrics.jsonl`` was skipped: cut short by a crash or a full disk."""


@dataclass(frozen=True)
class RunDir:
    """A run directory::

    config.toml       the resolved config (every key)
    metrics.jsonl     one JSON object per logged step / validation / final test
    checkpoint.pt     the latest state: params, optimizer, step, RNG, config
    best.pt           the params with the best validation metric so far
    events.out.tfevents.*   TensorBoard scalars (when tensorboard is installed)
    curves.png        the learning curves, from ``imaml plot``
    .lock             locked by the process training into it (the pid and host inside)
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

    @property
    def curves(self) -> Path:
        """``curves.png``."""
        return self.path / "curves.png"

    @property
    def lock_file(self) -> Path:
        """``.lock``."""
        return self.path / ".lock"

    def holds_a_run(self) -> list[str]:
        """The names of the files that say a run was trained here (none: a fresh dir)."""
        found = [p.name for p in (self.checkpoint, self.best) if p.is_file()]
        if self.metrics.is_file() and self.metrics.stat().st_size > 0:
            found.insert(0, self.metrics.name)
        return found

    def clear(self) -> list[Path]:
        """Delete the run's files (all above but ``.lock``) to start afresh; return them."""
        files = [self.config, self.metrics, self.checkpoint, self.best, self.curves]
        files += self.path.glob("events.out.tfevents.*")
        removed = [p for p in files if p.is_file()]
        for p in removed:
            p.unlink()
        return removed + remove_temporaries(self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[list[Path]]:
        """Hold the run directory (created if needed) for one writer while the block runs.

        An exclusive, non-blocking ``flock`` on ``.lock``: the operating system releases it
        when the process ends, however it ends, so a killed run leaves no stale lock. Once
        held, the temporary files of writes killed mid-way are removed; the block receives
        their paths.

        Raises:
            RunInUse: another process holds it (the message names its pid and host).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+", encoding="utf-8") as f:
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    pid, _, host = f.read().strip().partition(" ")
                    holder = f"process {pid} on {host}" if host else "another process"
                    raise RunInUse(
                        f"{self.path} is in use by {holder}; wait for it to end, or use "
                        "another --run-dir"
                    ) from None
                except OSError as err:  # e.g. ENOLCK: a network file system without locks
                    warnings.warn(
                        f"cannot lock {self.lock_file} ({err.strerror}); make sure no other "
                        "process trains into this run directory",
                        stacklevel=3,
                    )
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
            f.flush()
            yield remove_temporaries(self.path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (empty if there is none).

        A line that is not a record (a JSON object with an integer ``step`` and a ``split``),
        e.g. the last one cut short by a crash or a full disk, is skipped with a
        :class:`MetricsWarning`.
        """
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text(encoding="utf-8", errors="replace").split("\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if _is_record(record):
                records.append(record)
                continue
            what = "its incomplete last line" if i == last else f"line {i + 1}, not a record,"
            warnings.warn(
                f"{self.metrics}: skipped {what} (a write cut short by a crash or a full disk?)",
                MetricsWarning,
                stacklevel=2,
            )
        return records

    def truncate_metrics(self, step: int) -> None:
        """Drop what a run resumed from ``step`` logs again: the records after ``step``, the
        end-of-training tests at it, and unreadable lines."""
        if not self.metrics.is_file():
            return
        kept = [
            r
            for r in self.read_metrics()
            if r.get("step", 0) < step or (r.get("step", 0) == step and "params" not in r)
        ]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        write_atomic(self.metrics, lambda f: f.write(text.encode("utf-8")))


def _is_record(value: Any) -> bool:
    """Whether a decoded line of metrics.jsonl is a record: has an int step and a split."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("step"), int)
        and isinstance(value.get("split"), str)
    )


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
