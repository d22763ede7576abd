"""Trained parameters read back: the shape check, and a checkpoint that does not fit its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imaml import checkpoint
from imaml.config import load_config
from imaml.training import build_problem, load_trained_model
from imaml.training.loading import shape_mismatch


def test_shape_mismatch_lists_the_names_and_shapes_on_either_side_only() -> None:
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3), "c": torch.zeros(1)}
    b = {"w": torch.zeros(3, 2), "b": torch.ones(3), "d": torch.zeros(1)}
    assert shape_mismatch(a, b) == [("c", (1,)), ("d", (1,)), ("w", (2, 3)), ("w", (3, 2))]
    assert shape_mismatch(a, dict(a)) == []


def test_a_checkpoint_whose_params_do_not_fit_its_model_is_refused(tmp_path: Path) -> None:
    config = load_config("sinusoid")[1]
    params = {k: v.detach() for k, v in build_problem(config).model.named_parameters()}
    state = {"kind": "best", "config": config.to_json(), "step": 3, "params": params}
    checkpoint.save(state, tmp_path / "best.pt")
    model = load_trained_model(tmp_path)
    assert model.path == tmp_path / "best.pt" and model.step == 3
    assert all(torch.equal(model.params[k], v) for k, v in params.items())
    with pytest.raises(checkpoint.CheckpointError, match="do not fit its config's model"):
        load_trained_model(tmp_path, ["model.hidden=[8]"])
