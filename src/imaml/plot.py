"""Learning curves of run directories as PNGs: the public names of
:mod:`imaml.training.plot`, re-exported here so that ``imaml.plot`` keeps working.

:func:`plot_run` draws one run's training curves and diagnostics; :func:`plot_validation`
compares runs by validation metric against meta-steps and hours; :func:`validation_curve`
reads those points from a run's metrics; :class:`PlotError` says why a plot cannot be drawn.
"""

from imaml.training.plot import PlotError, plot_run, plot_validation, validation_curve

__all__ = ["PlotError", "plot_run", "plot_validation", "validation_curve"]
