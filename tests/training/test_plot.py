"""Learning-curve plots: one run's curves, and runs compared by validation against time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import imaml.plot
from imaml.training import plot
from imaml.training.plot import PlotError, plot_validation, validation_curve

PNG = b"\x89PNG\r\n\x1a\n"
VAL = {"split": "val", "ci95": 0.01, "loss": 0.3, "tasks": 200}


def train_record(step: int, sec_per_step: float) -> dict:
    return {"step": step, "split": "train", "sec_per_step": sec_per_step, "meta_loss": 1.0}


def test_validation_curve_times_each_validation_by_the_steps_before_it() -> None:
    records = [
        train_record(10, 36.0),
        {"step": 10, "accuracy": 0.90, **VAL},
        train_record(20, 72.0),
        train_record(30, 36.0),
        {"step": 30, "accuracy": 0.95, **VAL},
        train_record(40, 1e6),  # after the last validation: not counted
    ]
    metric, steps, hours, values = validation_curve(records)
    assert (metric, steps, values) == ("accuracy", [10, 30], [0.90, 0.95])
    # 10 steps × 36 s = 0.1 h; then + 10 × 72 s + 10 × 36 s = 0.4 h.
    assert hours == pytest.approx([0.1, 0.4], rel=1e-12)


def test_validation_curve_of_a_regression_run_and_of_a_run_without_validation() -> None:
    records = [{"step": 0, "mse": 2.0, **VAL}, train_record(5, 1.0), {"step": 5, "mse": 1.0, **VAL}]
    assert validation_curve(records) == ("mse", [0, 5], [0.0, 5 / 3600], [2.0, 1.0])
    assert validation_curve([train_record(5, 1.0)]) is None
    assert validation_curve([]) is None


def write_metrics(run: Path, records: list[dict]) -> Path:
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def test_plot_validation_compares_runs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fast = write_metrics(
        tmp_path / "maml", [train_record(10, 1.0), {"step": 10, "accuracy": 0.9, **VAL}]
    )
    slow = write_metrics(
        tmp_path / "imaml", [train_record(10, 2.0), {"step": 10, "accuracy": 0.95, **VAL}]
    )
    out = plot_validation([fast, slow], tmp_path / "compare.png")
    assert out == tmp_path / "compare.png" and out.read_bytes()[:8] == PNG
    empty = write_metrics(tmp_path / "new", [train_record(10, 1.0)])
    with pytest.raises(PlotError, match="no training or no validation records"):
        plot_validation([fast, empty], tmp_path / "never.png")
    with pytest.raises(PlotError, match="no run directories"):
        plot_validation([], tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def test_imaml_plot_re_exports_the_public_names() -> None:
    assert (imaml.plot.PlotError, imaml.plot.plot_run) == (PlotError, plot.plot_run)
    assert (imaml.plot.plot_validation, imaml.plot.validation_curve) == (
        plot_validation,
        validation_curve,
    )
