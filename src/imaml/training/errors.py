"""The errors that stop training: it cannot start or go on (:class:`TrainingError`), or the
meta-loss stopped being finite (:class:`Diverged`). A signal that stops it raises
:class:`~imaml.training.signals.Interrupted`."""

from __future__ import annotations

from pathlib import Path


class TrainingError(Exception):
    """Training cannot start or go on; the message says why and what to do."""


class Diverged(TrainingError):
    """The meta-loss or the meta-gradient is not finite at ``step`` (1-based); no update applied."""

    def __init__(self, step: int, last_checkpoint: int | None, path: Path) -> None:
        kept = (
            f"the last good checkpoint (step {last_checkpoint}) is kept in {path}"
            if last_checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"the meta-loss or meta-gradient is not finite (NaN/inf) at step {step}; training "
            f"stopped and {kept}. Lower train.outer_lr or inner.lr and start again."
        )
        self.step = step
