"""Whether a run may start or resume in a run directory, checked before anything is written
there; the config of a run to resume; and the directory made ready for the run.

A fresh start refuses a directory that holds a run unless asked to overwrite it. A resume
needs the run's checkpoint and keeps what the checkpoint was trained as: its algorithm, data
set, model (so its parameter shapes) and outer optimizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imaml import checkpoint
from imaml._atomic import write_atomic
from imaml.config import Config, load_config
from imaml.distributed import World
from imaml.training.builders import build_problem
from imaml.training.errors import TrainingError
from imaml.training.loading import checkpoint_config, shape_mismatch
from imaml.training.rundir import RunDir

_KEPT_ON_RESUME = ("algorithm", "data.dataset", "model.", "train.outer_optimizer")
"""The config keys (and key prefixes) a resumed run keeps: what it meta-learns, with which
model, and the optimizer whose state the checkpoint holds."""


def check_request(run: RunDir, resume: bool, overwrite: bool) -> None:
    """Check that ``resume`` and ``overwrite`` go together and that a run to resume has a
    checkpoint (before the directory is locked, so nothing is created for nothing).

    Raises:
        TrainingError: both asked, or nothing to resume.
    """
    if resume and overwrite:
        raise TrainingError("resume continues a run and overwrite starts it afresh: choose one")
    if resume:
        _require_checkpoint(run)


def _require_checkpoint(run: RunDir) -> None:
    if not run.checkpoint.is_file():
        raise TrainingError(f"nothing to resume: {run.checkpoint} does not exist")


def check_start(
    config: Config, run: RunDir, resume: bool, overwrite: bool, world: World
) -> dict[str, Any] | None:
    """Check ``run`` against what is asked; return the checkpoint to resume (None: a fresh
    start). A fresh start without ``overwrite`` refuses a directory that holds a run (on rank
    0, the one that writes).

    Raises:
        TrainingError: the directory holds a run and neither ``resume`` nor ``overwrite`` is
            asked, or its checkpoint cannot be resumed with ``config`` (:func:`check_resume`).
        CheckpointError: its checkpoint is unreadable.
    """
    if resume:
        state = checkpoint.load(run.checkpoint)
        check_resume(run, state, config)
        return state
    if world.is_main and not overwrite and run.holds_a_run():
        way = (
            "pass --resume to continue it, --overwrite to start afresh"
            if run.checkpoint.is_file()
            else "it has no checkpoint to resume; pass --overwrite to start afresh"
        )
        raise TrainingError(
            f"{run.path} already holds a run; {way} (deleting its metrics and checkpoints), or "
            "another --run-dir"
        )
    return None


def prepare(run: RunDir, config: Config, step: int, resume: bool, overwrite: bool) -> None:
    """Make ``run`` ready once every check has passed: its metrics cut to the checkpoint's
    ``step`` (``resume``) or the old run's files deleted (``overwrite``), and config.toml
    written."""
    if resume:
        run.truncate_metrics(step)
    elif overwrite:
        run.clear()
    text = config.to_toml().encode("utf-8")
    write_atomic(run.config, lambda f: f.write(text))


def check_resume(run: RunDir, state: dict[str, Any], config: Config) -> None:
    """Check that ``run``'s checkpoint (``state``) is this run's, and that ``config`` keeps
    what a resumed run must keep: the checkpoint's model, parameter shapes and optimizer.

    Raises:
        TrainingError: naming the keys at fault.
    """
    saved = checkpoint_config(state)
    if run.config.is_file():
        foreign = _kept(_differences(saved, load_config(str(run.config))[1]))
        if foreign:
            raise TrainingError(
                f"{run.checkpoint} is not this run's checkpoint: "
                f"{_listed(foreign, 'in it', 'in config.toml')}; resume it in its own run dir"
            )
    changed = _kept(_differences(saved, config))
    if changed:
        raise TrainingError(
            f"a resumed run keeps its {', '.join(changed)}: "
            f"{_listed(changed, 'in the checkpoint', 'asked')}; start a new run to change it "
            f"(another --run-dir; --set train.init_from={run.path} starts from its parameters)"
        )
    mismatch = shape_mismatch(dict(build_problem(config).model.named_parameters()), state["params"])
    if mismatch:
        keys = [k for k in _differences(saved, config) if k.startswith("data.")]
        raise TrainingError(
            f"{' and '.join(keys) or 'the config'} cannot change on resume: the model's "
            f"parameters would change shape (differing name/shape: {mismatch[:4]}); start a "
            "new run instead (another --run-dir)"
        )
    missing = [key for key in ("optimizer", "rng") if key not in state]
    if missing:
        raise TrainingError(
            f"{run.checkpoint} cannot be resumed: it holds no {' or '.join(missing)} state "
            "(a best.pt?); start a new run from it with --set train.init_from=PATH"
        )


def _differences(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in a, value in b)}`` of the keys whose values differ."""
    flat_a, flat_b = _flat(a.to_dict()), _flat(b.to_dict())
    keys = [*flat_a, *(key for key in flat_b if key not in flat_a)]  # options differ in keys
    return {k: (flat_a.get(k), flat_b.get(k)) for k in keys if flat_a.get(k) != flat_b.get(k)}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"table.key": value}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _kept(differences: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The differences in keys that a resumed run keeps."""
    return {k: v for k, v in differences.items() if k.startswith(_KEPT_ON_RESUME)}


def _listed(differences: dict[str, tuple[Any, Any]], first: str, second: str) -> str:
    """``key is A <first>, B <second>`` for each difference, comma-separated."""
    return ", ".join(f"{k} is {a!r} {first}, {b!r} {second}" for k, (a, b) in differences.items())


def resume_config(
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    named: Config | None = None,
    name: str = "CONFIG",
) -> Config:
    """The config of the run in ``run_dir`` (from its checkpoint), with overrides applied.

    ``named``, the config ``name`` given along with ``--resume`` (overrides applied), must be
    the run's own: equal to its ``config.toml`` (else its checkpoint's config) with the same
    overrides.

    Raises:
        TrainingError: no checkpoint to resume, or ``named`` differs (the keys are listed).
    """
    run = RunDir(Path(run_dir))
    _require_checkpoint(run)
    config = checkpoint_config(checkpoint.load(run.checkpoint), overrides)
    if named is not None:
        own = load_config(str(run.config), overrides)[1] if run.config.is_file() else config
        differences = _differences(own, named)
        if differences:
            raise TrainingError(
                f"{name} is not the config of the run in {run.path}: "
                f"{_listed(differences, 'in the run', f'in {name}')}; drop {name} to resume the "
                "run with its own config (--set changes a key)"
            )
    return config
