"""Published models: the file format, the manifest that names them, and loading by name.

A published model is one ``.safetensors`` file: the meta-learned parameters as tensors, and in
its metadata the resolved config (JSON), the meta-step it was taken at and a format tag. Loading
it runs no code (safetensors holds tensors and strings only). The manifest,
``models/manifest.toml`` beside the files, gives each model a name, its file's sha256, the
setting, the test accuracy it reaches and the commands that made and evaluate it::

    imaml models                           # list them
    imaml eval omniglot-5w1s-imaml         # resolve the name, check the sha256, meta-test

From Python, :func:`pretrained` returns the model ready to adapt, with its config.
The folder is ``$IMAML_MODELS`` if set, else the ``models/`` folder of this source checkout.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from imaml._atomic import write_atomic
from imaml.checkpoint import CheckpointError
from imaml.types import Params

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from torch import nn

    from imaml.config import Config
    from imaml.learner import MetaLearner

MODEL_FORMAT = "imaml-model-1"
"""The ``format`` metadata entry of every model file this version writes."""

MANIFEST = "manifest.toml"
"""The manifest's file name inside the models folder."""


class ModelError(CheckpointError):
    """A published model is unknown, missing, altered or not a model file."""


@dataclass(frozen=True)
class ModelFile:
    """The contents of a model file: ``params`` (name -> tensor, on the CPU), the resolved
    ``config`` as the JSON text a checkpoint stores, and the meta-``step`` it was taken at."""

    params: Params
    config: str
    step: int


def save_model(path: str | Path, params: Params, config: str, step: int) -> str:
    """Atomically write a model file; return its sha256 (hex).

    Args:
        path: the ``.safetensors`` file to write.
        params: name -> tensor; stored contiguous, on the CPU, with their dtypes.
        config: the resolved config as JSON (a checkpoint's ``config`` entry).
        step: the meta-step the parameters were taken at.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in params.items()}
    metadata = {"format": MODEL_FORMAT, "config": config, "step": str(step)}
    data = save(tensors, metadata=metadata)
    write_atomic(Path(path), lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def read_model(path: str | Path) -> ModelFile:
    """Read a model file written by :func:`save_model` (no code runs: safetensors).

    Raises:
        ModelError: the file is missing, unreadable, or not an imaml model file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no model file at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        params = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelError(f"{path} is not a readable safetensors file ({err})") from None
    if metadata.get("format") != MODEL_FORMAT or "config" not in metadata:
        raise ModelError(f"{path} is not an imaml model file (format {MODEL_FORMAT})")
    try:
        step = int(metadata.get("step", "0"))
    except ValueError:
        raise ModelError(f"{path}: its step {metadata['step']!r} is not an integer") from None
    return ModelFile(params, metadata["config"], step)


def sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One published model of the manifest.

    ``accuracy`` and ``ci95`` are fractions (mean test accuracy over ``tasks`` tasks and its
    95% CI, 1.96·std/√tasks), as ``imaml eval NAME`` prints them: with the query images per
    class of the model's config (``data.query_shots``).
    ``k_query_accuracy`` and ``k_query_ci95`` are the same on the protocol of MAML's and
    iMAML's code, which the ``paper`` figure for the setting and algorithm comes from: K query
    images per class at K-shot, with every query image scored in a BatchNorm batch of K per
    class (``imaml eval NAME --set eval.query_batch_shots=K``).
    ``meta_steps`` are those of the model, beside the ``config_meta_steps`` its config plans;
    ``config`` is the bundled config it was trained from and ``train`` the commands, one a
    line, that made it.
    """

    name: str
    file: str
    sha256: str
    config: str
    dataset: str
    ways: int
    shots: int
    algorithm: str
    character_split: str
    accuracy: float
    ci95: float
    k_query_accuracy: float
    k_query_ci95: float
    tasks: int
    meta_steps: int
    config_meta_steps: int
    paper: str
    train: str
    description: str = ""


def models_dir() -> Path:
    """``$IMAML_MODELS`` if set, else the ``models/`` folder of this source checkout."""
    if os.environ.get("IMAML_MODELS"):
        return Path(os.environ["IMAML_MODELS"]).expanduser()
    return Path(__file__).resolve().parents[2] / "models"


def list_models(directory: str | Path | None = None) -> list[ModelEntry]:
    """The entries of the manifest in ``directory`` (default: :func:`models_dir`), in order.

    Raises:
        ModelError: there is no manifest there, or it is malformed.
    """
    directory = Path(directory) if directory is not None else models_dir()
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise ModelError(
            f"no {MANIFEST} in {directory}: published models ship in the repository's models/ "
            "folder; set IMAML_MODELS to that folder"
        )
    try:
        table = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{manifest} is not valid TOML ({err})") from None
    names = {f.name for f in fields(ModelEntry)}
    required = names - {"description"}
    entries = []
    for i, record in enumerate(table.get("model", [])):
        unknown, missing = set(record) - names, required - set(record)
        if unknown or missing:
            raise ModelError(
                f"{manifest}: model {i + 1} has unknown keys {sorted(unknown)} or lacks "
                f"{sorted(missing)}"
            )
        entries.append(ModelEntry(**record))
    return entries


def find_model(name: str, directory: str | Path | None = None) -> ModelEntry:
    """The manifest entry called ``name``.

    Raises:
        ModelError: no published model has that name (the message lists them).
    """
    entries = list_models(directory)
    for entry in entries:
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries)
    raise ModelError(f"no published model named {name!r}; published: {known}")


def model_path(name: str, directory: str | Path | None = None) -> Path:
    """The file of the published model ``name``, its sha256 checked against the manifest.

    Raises:
        ModelError: unknown name, missing file, or a file whose sha256 differs.
    """
    directory = Path(directory) if directory is not None else models_dir()
    return _checked_file(find_model(name, directory), directory)


def _checked_file(entry: ModelEntry, directory: Path) -> Path:
    """``entry``'s file in ``directory``, present and with the manifest's sha256."""
    path = directory / entry.file
    if not path.is_file():
        raise ModelError(f"model {entry.name!r}: its file {path} is missing")
    actual = sha256(path)
    if actual != entry.sha256:
        raise ModelError(
            f"model {entry.name!r}: {path} has sha256 {actual}, the manifest says "
            f"{entry.sha256}; the file is altered or truncated: restore it (git checkout -- "
            "models/)"
        )
    return path


def locate(name_or_path: str | Path) -> Path:
    """A checkpoint, model file or run directory as given if it exists, else the file of the
    published model of that name (checked: :func:`model_path`)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    directory = models_dir()
    try:
        entry = find_model(str(name_or_path), directory)
    except ModelError as err:
        raise ModelError(f"no file or run directory {path}, and {err}") from None
    return _checked_file(entry, directory)


@dataclass(frozen=True)
class Pretrained:
    """A published model made ready to use.

    ``model`` is the network with the meta-learned parameters loaded; ``learner`` wraps it
    with the model's algorithm (:class:`imaml.IMAML`, :class:`imaml.MAML` or
    :class:`imaml.Reptile`), set to adapt as the published accuracy was measured (the
    inner optimizer with ``eval.inner_steps``, iMAML's λ); ``config`` is the full config.
    """

    name: str
    model: nn.Module
    learner: MetaLearner
    config: Config
    step: int


def pretrained(name: str, *, device: torch.device | str = "cpu") -> Pretrained:
    """The published model ``name`` (see ``imaml models``), loaded onto ``device``.

    Example::

        net = imaml.pretrained("omniglot-5w1s-imaml")
        adapted = net.learner.adapt((xs, ys))   # xs (B, 5, 1, 28, 28), ys (B, 5)
        logits = adapted(xq)                    # (B, N, 5)
    """
    from imaml.training.builders import build_learner
    from imaml.training.loading import load_trained_model

    trained = load_trained_model(model_path(name), device=device)
    model = trained.problem.model.to(device)
    with torch.no_grad():
        for key, p in model.named_parameters():
            p.copy_(trained.params[key])
    learner = build_learner(trained.config, model)
    return Pretrained(name, model, learner, trained.config, trained.step)


def describe(entry: ModelEntry) -> dict[str, Any]:
    """The manifest entry as a JSON-ready dict."""
    return {f.name: getattr(entry, f.name) for f in fields(ModelEntry)}
