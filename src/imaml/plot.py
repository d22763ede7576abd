"""Learning curves of a run directory as a PNG (needs matplotlib: ``pip install 'imaml[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imaml.training.rundir import RunDir


class PlotError(Exception):
    """The curves cannot be drawn: matplotlib is missing or the run has no metrics yet."""


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in records if r.get("split") == split and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError("plotting needs matplotlib: pip install 'imaml[plot]'") from None

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
    out = Path(out) if out is not None else run.path / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
