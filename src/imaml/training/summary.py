"""How far a run got, how long its meta-steps took and how it validated, read from its run dir.

Everything comes from ``config.toml`` and ``metrics.jsonl``, so it works on a run in progress,
a finished one, or a copy committed elsewhere, without loading a model or any data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaml.config import load_config
from imaml.training.evaluation import EvalResult
from imaml.training.rundir import RunDir


class SummaryError(ValueError):
    """The run directory has no config or no training records to summarize."""


@dataclass(frozen=True)
class RunSummary:
    """What a run's metrics say.

    Attributes:
        path: the run directory.
        description: the config's ``description``.
        step: the last meta-step logged.
        meta_steps: the config's ``train.meta_steps`` (where the run stops).
        train_seconds: wall-clock time spent in meta-steps, the sum over the logged windows of
            ``sec_per_step`` × the steps since the previous record (validation and checkpoint
            writes excluded). Exact when every resume starts at a logged step; after a resume
            from a Ctrl-C checkpoint between two log steps, the unlogged steps before the
            checkpoint are timed at the rate of the window logged after it.
        validation: ``(step, result)`` of each validation, in order.
        best_step: the step of the params in ``best.pt`` (``None`` before any validation).
        final: ``(name, result)`` of the end-of-training evaluations (``eval.at_end``).
        recent: the mean of each training diagnostic (meta-loss, query accuracy, support loss,
            inner gradient norm, solver residual and curvature...) over the records logged in
            the last ``recent_steps`` steps up to ``step``.
        recent_steps: the length of that window.
    """

    path: Path
    description: str
    step: int
    meta_steps: int
    train_seconds: float
    validation: tuple[tuple[int, EvalResult], ...]
    best_step: int | None
    final: tuple[tuple[str, EvalResult], ...]
    recent: dict[str, float]
    recent_steps: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; each result as :meth:`EvalResult.to_dict` plus its step or name."""
        return {
            "path": str(self.path),
            "description": self.description,
            "step": self.step,
            "meta_steps": self.meta_steps,
            "train_seconds": self.train_seconds,
            "validation": [{"step": s, **r.to_dict()} for s, r in self.validation],
            "best_step": self.best_step,
            "final": [{"params": name, **r.to_dict()} for name, r in self.final],
            "recent": self.recent,
            "recent_steps": self.recent_steps,
        }

    def __str__(self) -> str:
        per_step = self.train_seconds / self.step
        lines = [
            f"{self.path}: {self.description}".rstrip(": "),
            f"meta-steps: {self.step:,} of {self.meta_steps:,}, "
            f"{self.train_seconds / 3600:.2f} h of meta-steps ({per_step:.2f} s per step)",
            f"steps {max(self.step - self.recent_steps, 0) + 1:,}-{self.step:,} (mean): "
            + ", ".join(f"{key} {value:.4g}" for key, value in self.recent.items()),
        ]
        if self.validation:
            lines.append(f"validation ({self.validation[-1][1].tasks} tasks):")
            for step, result in self.validation:
                mark = " (best)" if step == self.best_step else ""
                lines.append(f"  step {step:>7,}  {result}{mark}")
        for name, result in self.final:
            lines.append(f"final, {name} params ({result.tasks} tasks): {result}")
        return "\n".join(lines)


_NOT_DIAGNOSTICS = {"step", "split", "sec_per_step", "tasks_per_sec"}


def elapsed_seconds(train_records: Sequence[Mapping[str, Any]]) -> list[tuple[int, float]]:
    """``(step, seconds of meta-steps up to it)`` at each training record, in order.

    Each record's ``sec_per_step`` times the steps since the previous record, summed (see
    :attr:`RunSummary.train_seconds`).
    """
    elapsed, seconds, previous = [], 0.0, 0
    for record in train_records:
        seconds += record["sec_per_step"] * (record["step"] - previous)
        previous = record["step"]
        elapsed.append((previous, seconds))
    return elapsed


def summarize_run(
    run_dir: str | Path, recent_steps: int = 250, until: int | None = None
) -> RunSummary:
    """Summarize the run in ``run_dir`` from its ``config.toml`` and ``metrics.jsonl``.

    ``until`` summarizes the run as it stood at that step (records after it are ignored);
    ``recent_steps`` is the window of :attr:`RunSummary.recent`.

    Raises:
        SummaryError: ``run_dir`` has no ``config.toml`` or no training records (up to
            ``until``); ``recent_steps`` is not positive.
        ConfigError: its ``config.toml`` is not a valid config.
    """
    if recent_steps < 1:
        raise SummaryError(f"the window of recent steps must be positive, got {recent_steps}")
    run = RunDir(Path(run_dir))
    if not run.config.is_file():
        raise SummaryError(f"{run.path} is not a run directory: it has no config.toml")
    config = load_config(str(run.config))[1]
    records = [r for r in run.read_metrics() if until is None or r["step"] <= until]
    train = [r for r in records if r.get("split") == "train"]
    if not train:
        upto = "" if until is None else f" up to step {until}"
        raise SummaryError(f"{run.metrics} holds no training records{upto} yet")
    seconds = elapsed_seconds(train)[-1][1]
    validation = tuple(
        (r["step"], EvalResult.from_dict(r)) for r in records if r.get("split") == "val"
    )
    best = [r["step"] for r in records if r.get("split") == "val" and r.get("best")]
    final = tuple((r["params"], EvalResult.from_dict(r)) for r in records if "params" in r)
    step = train[-1]["step"]
    window = [r for r in train if r["step"] > step - recent_steps]
    keys = [k for k in window[-1] if k not in _NOT_DIAGNOSTICS]
    recent = {k: sum(r[k] for r in window if k in r) / sum(k in r for r in window) for k in keys}
    return RunSummary(
        path=run.path,
        description=config.description,
        step=step,
        meta_steps=config.train.meta_steps,
        train_seconds=seconds,
        validation=validation,
        best_step=best[-1] if best else None,
        final=final,
        recent=recent,
        recent_steps=recent_steps,
    )
