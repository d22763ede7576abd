"""What training logs: the per-step diagnostics averaged over a window of steps, and the sinks
that records go to (metrics.jsonl, TensorBoard, progress on stderr) behind one protocol,
:class:`MetricSink`.

A record is a flat dict with an integer ``step``, a ``split`` (``"train"``, ``"val"`` or the
test split) and numbers, e.g. ``{"step": 20, "split": "train", "meta_loss": 0.41, ...}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from imaml.distributed import World
from imaml.training.rundir import RunDir


class MetricSink(Protocol):
    """Anything that takes metrics records, as :class:`MetricLogger` sends them: a file, a
    dashboard, the progress display."""

    def log(self, record: Mapping[str, Any]) -> None:
        """Take one record (with ``step`` and ``split``)."""
        ...

    def close(self) -> None:
        """Flush and release what the sink holds."""
        ...


class MetricWindow:
    """Running sums of the per-step diagnostics between two log lines (no host sync)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.seconds = 0.0

    def add(self, meta_loss: Tensor, info: Mapping[str, Tensor], seconds: float) -> None:
        """Add a step's meta-loss and diagnostics (each averaged over its tasks: any shape)
        and its duration."""
        for key, value in {"meta_loss": meta_loss, **info}.items():
            value = value.detach().mean()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps += 1
        self.seconds += seconds

    def flush(self, meta_batch: int, world: World) -> dict[str, float]:
        """The window's means over steps and, in a distributed run, over all the tasks of
        every rank (one all-reduce); then its rate of steps and tasks, timed on this rank.
        The window starts empty again."""
        means = torch.stack([v.double() for v in self.sums.values()]) / self.steps
        tasks = world.shard(meta_batch)
        means = world.weighted_mean(means, weight=tasks.stop - tasks.start)
        record = dict(zip(self.sums, means.tolist(), strict=True))
        record["sec_per_step"] = self.seconds / self.steps
        record["tasks_per_sec"] = meta_batch * self.steps / self.seconds
        self._reset()
        return record


class JsonlSink:
    """Appends each record to a JSON-lines file as one line, flushed at once."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def log(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as a line."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class TensorBoardSink:
    """TensorBoard scalars: each number of a record as ``SPLIT/KEY`` at its step."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer

    @classmethod
    def open(cls, path: Path, start: int) -> TensorBoardSink | None:
        """A sink writing into ``path`` (steps after ``start`` of an earlier run purged), or
        None when tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return cls(SummaryWriter(str(path), purge_step=start or None))

    def log(self, record: Mapping[str, Any]) -> None:
        """Add the record's numbers as scalars."""
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, int | float):
                self._writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


class Progress:
    """Progress on stderr: a tqdm bar on a terminal, one line per training record otherwise,
    nothing when quiet. As a sink it shows training records and ignores the others."""

    def __init__(self, total: int, start: int, quiet: bool) -> None:
        stream = sys.stderr
        self.lines = None if quiet or stream.isatty() else stream
        self.bar = tqdm(
            total=total,
            initial=start,
            file=stream,
            disable=quiet or self.lines is not None,
            unit="step",
            dynamic_ncols=True,
        )
        self.total = total

    def advance(self) -> None:
        """One more step done."""
        self.bar.update(1)

    def log(self, record: Mapping[str, Any]) -> None:
        """Show a training record's loss, accuracy and rate."""
        if record["split"] != "train":
            return
        shown = {"loss": f"{record['meta_loss']:.4f}"}
        if "query_accuracy" in record:
            shown["acc"] = f"{record['query_accuracy']:.3f}"
        shown["tasks/s"] = f"{record['tasks_per_sec']:.1f}"
        self.bar.set_postfix(shown, refresh=False)
        self._say(f"step {record['step']}/{self.total} " + " ".join(map(" ".join, shown.items())))

    def _say(self, message: str) -> None:
        """A line of progress when stderr is no terminal (there the bar shows progress)."""
        if self.lines is not None:
            print(message, file=self.lines, flush=True)

    def note(self, message: str) -> None:
        """A message worth keeping on screen (validation results)."""
        if self.bar.disable:
            self._say(message)
        else:
            self.bar.write(message, file=self.bar.fp)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class MetricLogger:
    """Sends each record to every sink and to the progress display."""

    def __init__(self, sinks: Sequence[MetricSink], progress: Progress) -> None:
        self.sinks = list(sinks)
        self.progress = progress

    @classmethod
    def for_run(cls, run: RunDir, total: int, start: int, quiet: bool, write: bool) -> MetricLogger:
        """The logger of a run going from step ``start`` to ``total``: metrics.jsonl and
        TensorBoard scalars (if tensorboard is installed) in ``run`` unless not ``write`` (a
        process other than rank 0), progress unless ``quiet``."""
        sinks: list[MetricSink] = []
        if write:
            sinks.append(JsonlSink(run.metrics))
            tensorboard = TensorBoardSink.open(run.path, start)
            if tensorboard is not None:
                sinks.append(tensorboard)
        return cls(sinks, Progress(total, start, quiet))

    def log(self, record: Mapping[str, Any]) -> None:
        """Send ``record`` to every sink, then to the progress display."""
        for sink in self.sinks:
            sink.log(record)
        self.progress.log(record)

    def advance(self) -> None:
        """One more step done (:meth:`Progress.advance`)."""
        self.progress.advance()

    def note(self, message: str) -> None:
        """A message worth keeping on screen (:meth:`Progress.note`)."""
        self.progress.note(message)

    def close(self) -> None:
        """Close the progress display, then every sink."""
        self.progress.close()
        for sink in self.sinks:
            sink.close()
