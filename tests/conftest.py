"""The test suite's fixtures; the problems themselves are in :mod:`imaml.testing`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import imaml
from imaml.testing import LinearTasks, make_linear_tasks, make_mlp, make_regression_batch

torch.set_num_threads(2)


@pytest.fixture
def linear_tasks() -> LinearTasks:
    """:func:`imaml.testing.make_linear_tasks`: 4 tasks, 4 features, 10 support points."""
    return make_linear_tasks()


@pytest.fixture
def mlp_problem():
    """``(loss_fn, params, (xs, ys, xq, yq))``: :func:`imaml.testing.make_mlp` (its
    parameters, not detached) on :func:`imaml.testing.make_regression_batch`'s 3 tasks."""
    model = make_mlp()
    return imaml.regression_loss(model), dict(model.named_parameters()), make_regression_batch()


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    """``$IMAML_DATA``, the folder holding ``omniglot/``; skips the test where it is absent."""
    data = os.environ.get("IMAML_DATA")
    if not data:
        pytest.skip("IMAML_DATA is not set: no Omniglot copy to train on")
    if not (Path(data) / "omniglot").is_dir():
        pytest.skip(f"IMAML_DATA={data} holds no omniglot/ folder")
    return Path(data)
