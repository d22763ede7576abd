"""Learning curves of run directories as PNGs (needs matplotlib: ``pip install 'imaml[plot]'``).

:func:`plot_run` draws one run's training curves and diagnostics; :func:`plot_validation`
compares runs (methods, settings) by validation metric against meta-steps and hours.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imaml.training.builders import METRICS
from imaml.training.rundir import RunDir
from imaml.training.summary import elapsed_seconds


class PlotError(Exception):
    """The curves cannot be drawn: matplotlib is missing or the run has no metrics yet."""


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in records if r.get("split") == split and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _pyplot() -> Any:
    """matplotlib.pyplot with the file-only Agg backend; PlotError if not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'imaml[plot]'") from None
    return plt


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw meta-loss, query metric and solver diagnostics against the meta-step.

    Writes ``out`` (default ``RUN_DIR/curves.png``) and returns its path.

    Raises:
        PlotError: matplotlib is not installed, or metrics.jsonl has no training records.
    """
    run = RunDir(Path(run_dir))
    records = run.read_metrics()
    if not any(r.get("split") == "train" for r in records):
        raise PlotError(f"{run.metrics} holds no training records yet")
    plt = _pyplot()

    # (title, [(split, key, label)]); for regression the meta-loss is the MSE, one panel.
    panels: list[tuple[str, list[tuple[str, str, str]]]] = [
        ("meta-loss", [("train", "meta_loss", "train (query loss)"), ("val", "loss", "val")]),
        (
            "diagnostics",
            [
                ("train", "solver_residual", "solver residual"),
                ("train", "solver_correction", "implicit correction"),
                ("train", "inner_grad_norm", "inner grad norm"),
                ("train", "inner_stationarity", "inner stationarity"),
                ("train", "support_loss", "support loss (adapted)"),
                ("train", "outer_lr", "outer lr"),
            ],
        ),
    ]
    if any("query_accuracy" in r for r in records):
        accuracy = [("train", "query_accuracy", "train (query)"), ("val", "accuracy", "val")]
        panels.insert(1, ("accuracy", accuracy))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels, strict=True):
        for split, key, label in lines:
            steps, values = _series(records, split, key)
            if steps:
                ax.plot(steps, values, label=label, marker="o" if split == "val" else None)
        ax.set_title(title)
        ax.set_xlabel("meta-step")
        if title == "diagnostics":
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(str(run.path))
    fig.tight_layout()
    out = Path(out) if out is not None else run.curves
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def validation_curve(
    records: Sequence[dict[str, Any]],
) -> tuple[str, list[int], list[float], list[float]] | None:
    """``(metric, steps, hours, values)`` of a run's validations, from its metrics records.

    ``hours`` are the hours of meta-steps up to each validation, from the training record at
    or before its step (:func:`imaml.training.summary.elapsed_seconds`); None if the records
    hold no training or no validation record.
    """
    elapsed = elapsed_seconds([r for r in records if r.get("split") == "train"])
    val = [r for r in records if r.get("split") == "val"]
    if not elapsed or not val:
        return None
    metric = next(m for m in METRICS if m in val[0])
    logged = [step for step, _ in elapsed]
    steps = [r["step"] for r in val]
    before = [bisect.bisect_right(logged, s) - 1 for s in steps]  # -1: before any record
    hours = [elapsed[i][1] / 3600 if i >= 0 else 0.0 for i in before]
    return metric, steps, hours, [r[metric] for r in val]


def plot_validation(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Compare runs: each one's validation metric against meta-steps and hours of meta-steps.

    One line per run, labelled with its directory's name; the hours at a validation are the
    run's time in meta-steps up to it (:func:`imaml.training.summary.elapsed_seconds`), so
    methods of different cost per step compare on both axes. Writes ``out`` (a PNG) and
    returns its path.

    Raises:
        PlotError: matplotlib is not installed, ``run_dirs`` is empty, or a run has no
            training or no validation records yet.
    """
    if not run_dirs:
        raise PlotError("no run directories to compare")
    curves = []  # (label, metric, steps, hours, values)
    for run_dir in run_dirs:
        run = RunDir(Path(run_dir))
        curve = validation_curve(run.read_metrics())
        if curve is None:
            raise PlotError(f"{run.metrics} holds no training or no validation records yet")
        curves.append((run.path.name, *curve))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, _, steps, hours, values in curves:
        axes[0].plot(steps, values, marker="o", markersize=3, label=label)
        axes[1].plot(hours, values, marker="o", markersize=3, label=label)
    metrics = sorted({c[1] for c in curves})
    for ax, xlabel in zip(axes, ("meta-step", "hours of meta-steps"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation {' / '.join(metrics)}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
