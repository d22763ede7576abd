"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, dicts, lists, strings, numbers and None only, so loading it
never unpickles arbitrary objects. :func:`save` writes a temporary file in the destination's
folder, flushes and fsyncs it, then renames it over the destination: a crash at any point leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import errno
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from imaml._atomic import write_atomic
from imaml.config import ConfigError, from_dict

FORMAT = "imaml-checkpoint-1"
"""The ``format`` entry of every checkpoint this version writes."""


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or not one this library wrote."""


def save(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` (plus ``format``) to ``path`` with :func:`torch.save`.

    Raises:
        CheckpointError: the device is full; the file at ``path`` is then unchanged.
    """
    path = Path(path)
    existed = path.is_file()
    try:
        write_atomic(path, lambda f: torch.save({**state, "format": FORMAT}, f))
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        kept = "the previous checkpoint is intact" if existed else "no checkpoint was written"
        raise CheckpointError(f"no space left on device writing {path}; {kept}") from None


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` onto the CPU (``weights_only=True``).

    The result has at least ``config`` (a valid config as JSON), ``params`` (name -> tensor)
    and ``step``.

    Raises:
        CheckpointError: the file is missing, empty, unreadable, holds anything but plain data
            (it is never unpickled), or is not a complete imaml checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a global outside the allowed types: possibly code
        raise CheckpointError(
            f"{path}: not an imaml checkpoint, or corrupt; refusing to load code from it"
        ) from None
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"cannot read checkpoint {path}: corrupt or not a checkpoint ({_reason(err)})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an imaml checkpoint (format {FORMAT})")
    _check_contents(path, state)
    return state


def _check_contents(path: Path, state: dict[str, Any]) -> None:
    """CheckpointError unless ``state`` has a valid config, a dict of tensors and a step."""
    missing = [key for key in ("config", "params", "step") if key not in state]
    if missing:
        raise CheckpointError(f"{path} is incomplete: it has no {' or '.join(missing)}")
    params = state["params"]
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in params.items()
    ):
        raise CheckpointError(f"{path} is corrupt: its params are not a dict of named tensors")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise CheckpointError(f"{path} is corrupt: its step is {state['step']!r}")
    try:
        values = json.loads(state["config"])
        if not isinstance(values, dict):
            raise ConfigError(f"a config is a JSON object, got {values!r}")
        from_dict(values)
    except (TypeError, ValueError) as err:  # JSONDecodeError and ConfigError are ValueErrors
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None


def _reason(err: BaseException) -> str:
    """The first sentence of ``err`` (its type if it has none), for a one-line message."""
    text = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
