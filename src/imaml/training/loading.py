"""Reading trained parameters back: a checkpoint's config, a checkpoint or published model file
made ready to adapt, and the check that parameters fit a model."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imaml import checkpoint, zoo
from imaml.config import Config, from_dict
from imaml.training.builders import Problem, build_problem
from imaml.training.rundir import resolve_checkpoint
from imaml.types import Params


def checkpoint_config(state: dict[str, Any], overrides: Iterable[str] = ()) -> Config:
    """The config stored in a checkpoint, with ``KEY=VALUE`` overrides applied."""
    return from_dict(json.loads(state["config"]), overrides)


def shape_mismatch(expected: Params, found: Params) -> list[tuple[str, tuple[int, ...]]]:
    """The ``(name, shape)`` pairs of one parameter dict missing from the other, sorted: empty
    when both have the same names with the same shapes."""
    shapes = [{name: tuple(p.shape) for name, p in params.items()} for params in (expected, found)]
    return sorted(set(shapes[0].items()) ^ set(shapes[1].items()))


@dataclass(frozen=True)
class TrainedModel:
    """A checkpoint made ready to adapt: its file, config (with overrides), problem (model
    and loss), parameters on the device, and step."""

    path: Path
    config: Config
    problem: Problem
    params: Params
    step: int


def load_trained_model(
    path: str | Path, overrides: Sequence[str] = (), device: torch.device | str = "cpu"
) -> TrainedModel:
    """Load a checkpoint, a published model file (``.safetensors``) or a run directory's best
    checkpoint, with its config and ``KEY=VALUE`` ``overrides``, checking that its parameters
    fit the config's model.

    Raises:
        CheckpointError: no readable checkpoint there, or its parameters do not fit.
    """
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":  # a published model file
        published = zoo.read_model(path)
        state = {"config": published.config, "params": published.params, "step": published.step}
    else:
        state = checkpoint.load(path)
    config = checkpoint_config(state, overrides)
    problem = build_problem(config)
    params = {k: v.to(device) for k, v in state["params"].items()}
    if shape_mismatch(dict(problem.model.named_parameters()), params):
        raise checkpoint.CheckpointError(f"{path}: its parameters do not fit its config's model")
    return TrainedModel(path, config, problem, params, state["step"])
