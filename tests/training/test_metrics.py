"""The logged diagnostics: window means, and records sent to every sink."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from imaml.distributed import World
from imaml.training import MetricSink
from imaml.training.metrics import JsonlSink, MetricLogger, MetricWindow, Progress


def test_a_window_averages_its_steps_then_starts_empty() -> None:
    window = MetricWindow()
    window.add(torch.tensor(1.0), {"support_loss": torch.tensor([2.0, 4.0])}, seconds=0.5)
    window.add(torch.tensor(3.0), {"support_loss": torch.tensor([6.0, 8.0])}, seconds=1.5)
    record = window.flush(meta_batch=4, world=World())
    assert record == {
        "meta_loss": 2.0,
        "support_loss": 5.0,  # the mean over tasks, then over steps
        "sec_per_step": 1.0,
        "tasks_per_sec": 4.0,  # 2 steps of 4 tasks in 2 s
    }
    window.add(torch.tensor(5.0), {}, seconds=2.0)
    assert window.flush(meta_batch=4, world=World()) == pytest.approx(
        {"meta_loss": 5.0, "sec_per_step": 2.0, "tasks_per_sec": 2.0}
    )


class Kept:
    """A sink of its own: keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.closed = False

    def log(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        self.closed = True


def test_the_logger_sends_each_record_to_every_sink(tmp_path: Path) -> None:
    kept, path = Kept(), tmp_path / "metrics.jsonl"
    sinks: list[MetricSink] = [JsonlSink(path), kept]
    logger = MetricLogger(sinks, Progress(total=2, start=0, quiet=True))
    records = [
        {"step": 1, "split": "train", "meta_loss": 0.5, "tasks_per_sec": 3.0},
        {"step": 1, "split": "val", "mse": 0.25, "best": True},
    ]
    for record in records:
        logger.log(record)
    logger.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == records
    assert kept.records == records and kept.closed
