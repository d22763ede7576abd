"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, dicts, lists, strings, numbers and None only, so loading it
never unpickles arbitrary objects. :func:`save` writes a temporary file in the destination's
folder, flushes and fsyncs it, then renames it over the destination: a crash at any point leaves
either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imaml._atomic import write_atomic

FORMAT = "imaml-checkpoint-1"
"""The ``format`` entry of every checkpoint this version writes."""


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or not one this library wrote."""


def save(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` (plus ``format``) to ``path`` with :func:`torch.save`."""
    write_atomic(Path(path), lambda f: torch.save({**state, "format": FORMAT}, f))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save` onto the CPU (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, unreadable, or not an imaml checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an imaml checkpoint (format {FORMAT})")
    return state
