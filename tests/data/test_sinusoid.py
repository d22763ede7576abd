"""Sinusoid regression tasks through the TaskSampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from imaml.data import Sinusoid, TaskSampler


def test_shapes_ranges_and_targets():
    sampler = TaskSampler(Sinusoid(), ways=1, shots=10, query_shots=15, seed=0)
    xs, ys, xq, yq = sampler.sample(32)
    assert xs.shape == ys.shape == (32, 10, 1)
    assert xq.shape == yq.shape == (32, 15, 1)
    assert all(t.dtype == torch.float32 for t in (xs, ys, xq, yq))
    assert -5 <= xs.min() and xs.max() <= 5
    assert ys.abs().max() <= 5
    for i in range(32):
        task = Sinusoid().draw(sampler.task_generator(i), 25)
        assert 0.1 <= task.amplitude <= 5 and 0 <= task.phase <= math.pi
        x = torch.cat([xs[i, :, 0], xq[i, :, 0]]).double()
        expected = task.amplitude * torch.sin(x - task.phase)
        assert torch.allclose(torch.cat([ys[i, :, 0], yq[i, :, 0]]).double(), expected, atol=1e-5)
        assert np.allclose(task.x, x, atol=1e-6)


def test_parameters_cover_their_ranges():
    sinusoid = Sinusoid(amplitude=(1.0, 2.0), phase=(0.5, 0.7), x_range=(0.0, 1.0))
    sampler = TaskSampler(sinusoid, 1, 5, 5, seed=1)
    tasks = [sinusoid.draw(sampler.task_generator(i), 10) for i in range(500)]
    amplitudes = np.array([t.amplitude for t in tasks])
    phases = np.array([t.phase for t in tasks])
    assert 1.0 <= amplitudes.min() < 1.05 and 1.95 < amplitudes.max() <= 2.0
    assert 0.5 <= phases.min() < 0.51 and 0.69 < phases.max() <= 0.7
    xs = sampler.sample(64).xs
    assert 0.0 <= xs.min() < 0.01 and 0.99 < xs.max() <= 1.0


def test_determinism_and_process_count_independence():
    a = TaskSampler(Sinusoid(), 1, 5, 5, seed=3)
    b = TaskSampler(Sinusoid(), 1, 5, 5, seed=3)
    whole = a.sample(8, step=2)
    assert all(torch.equal(x, y) for x, y in zip(whole, b.sample(8, step=2), strict=True))
    halves = [a.sample(8, step=2, rank=r, world_size=2) for r in range(2)]
    assert all(
        torch.equal(x, torch.cat(parts))
        for x, parts in zip(whole, zip(*halves, strict=True), strict=True)
    )
    assert not torch.equal(whole.xs, TaskSampler(Sinusoid(), 1, 5, 5, seed=4).sample(8, step=2).xs)


def test_bad_ranges_and_task_indices():
    with pytest.raises(ValueError, match="amplitude range"):
        Sinusoid(amplitude=(5.0, 0.1))
    with pytest.raises(TypeError, match="ImageDataset"):
        TaskSampler(Sinusoid(), 1, 5, 5).task_indices([0])
    assert "amplitude=(0.1, 5.0)" in repr(Sinusoid())
