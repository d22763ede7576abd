"""The sinusoid regression tasks of MAML (Finn et al. 2017), generated on the fly."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class SinusoidTask(NamedTuple):
    """One sinusoid task: ``y = amplitude * sin(x - phase)`` at ``num_points`` inputs.

    Attributes:
        amplitude: the task's amplitude.
        phase: the task's phase.
        x: float64 (num_points,) inputs.
        y: float64 (num_points,) targets.
    """

    amplitude: float
    phase: float
    x: np.ndarray
    y: np.ndarray


class Sinusoid:
    """Distribution of regression tasks ``y = A sin(x - phase)`` with uniform A, phase and x.

    The defaults are MAML's: A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]. Sample batches with
    :class:`imaml.data.TaskSampler` (``ways`` is ignored); :meth:`draw` gives one task with its
    parameters, e.g. to plot the true function of a sampled task.

    Args:
        amplitude: (low, high) of the uniform amplitude.
        phase: (low, high) of the uniform phase.
        x_range: (low, high) of the uniform inputs.

    Raises:
        ValueError: a range has low > high.
    """

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        for name, (low, high) in {
            "amplitude": amplitude,
            "phase": phase,
            "x_range": x_range,
        }.items():
            if low > high:
                raise ValueError(f"{name} range must have low <= high, got ({low}, {high})")
        self.amplitude = amplitude
        self.phase = phase
        self.x_range = x_range

    def draw(self, rng: np.random.Generator, num_points: int) -> SinusoidTask:
        """Draw a task's amplitude and phase, then ``num_points`` inputs and their targets."""
        amplitude = rng.uniform(*self.amplitude)
        phase = rng.uniform(*self.phase)
        x = rng.uniform(*self.x_range, size=num_points)
        return SinusoidTask(amplitude, phase, x, amplitude * np.sin(x - phase))

    def __repr__(self) -> str:
        return f"Sinusoid(amplitude={self.amplitude}, phase={self.phase}, x_range={self.x_range})"
