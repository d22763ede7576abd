"""Experiment configuration: a typed schema, the bundled TOML configs, and ``--set`` overrides.

A config is a TOML file with two top-level keys and seven tables::

    algorithm = "imaml"            # imaml | imaml-released | maml | fomaml | reptile
    description = "one line"
    [data]   dataset, ways, shots, query_shots, image_size, rotations, random_rotation,
             train_split, val_split, character_split, character_seed, task_pool
    [model]  name, filters, downsample, hidden
    [inner]  optimizer, steps, lr, options
    [imaml]  lam, solver, solver_iters, solver_options
    [released] cg_damping, lam_damping, inner_loop, solve
    [train]  meta_steps, meta_batch, seed, outer_optimizer, outer_lr, adam_eps,
             outer_lr_milestones, outer_lr_gamma, chunk_size, log_every, val_every, val_tasks,
             checkpoint_every, init_from, query_batch_shots
    [eval]   tasks, batch, inner_steps, split, at_end, query_batch_shots

Every key has a default (:class:`Config`), so a file states only what it changes. Unknown keys
and values of the wrong type raise :class:`ConfigError`, naming the key and what is allowed.

``inner.optimizer`` and ``imaml.solver`` name a class of :data:`imaml.inner.OPTIMIZERS` and
:data:`imaml.solvers.SOLVERS`; their tables ``[inner.options]`` and ``[imaml.solver_options]``
hold that class's other fields (its dataclass fields but ``steps`` and ``lr``, or ``iters``),
checked against it: ``options = {cg_iters = 5, ls_steps = 10}`` for ``hf``, ``betas`` and
``eps`` for ``adam``, ``alpha`` for ``neumann``, ``tol`` for ``cg`` and ``minres``. Changing
the choice with an override drops the options of the one it replaces. The keys of configs
written before those tables, ``inner.cg_iters``, ``inner.ls_steps`` and
``imaml.neumann_alpha``, are still read (:data:`LEGACY_OPTIONS`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

from imaml.inner import OPTIMIZERS
from imaml.solvers import SOLVERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

Algorithm = Literal["imaml", "imaml-released", "maml", "fomaml", "reptile"]
Split = Literal["train", "val", "test", "trainval"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what is allowed."""


@dataclass
class DataConfig:
    """Which tasks to meta-learn: the data set and the N-way K-shot episode shape.

    ``image_size``, ``rotations``, ``character_split`` and ``character_seed`` apply to Omniglot
    (mini-ImageNet is 84×84; the model reads ``image_size``); ``ways`` is ignored for sinusoids.
    Splits: ``train`` / ``val`` / ``test`` / ``trainval`` (mini-ImageNet has no ``trainval``), of
    Omniglot's Vinyals character split (test alphabets unseen in training) or, with
    ``character_split = "random"``, of a random one drawn with ``character_seed`` (MAML's and
    iMAML's protocol: test characters from training alphabets; :class:`imaml.data.Omniglot`).
    ``task_pool`` > 0 meta-trains on a fixed pool of that many tasks pre-sampled once, as the
    released iMAML code does (0: a fresh task every time; :class:`imaml.data.TaskSampler`).
    ``rotations`` makes each character's rotations by 90, 180 and 270 degrees classes of their
    own; ``random_rotation`` (with ``rotations = false``) instead turns each class of a task by
    a random multiple of 90 degrees each time the task is drawn, as the released code does.
    """

    dataset: Literal["omniglot", "miniimagenet", "sinusoid"] = "omniglot"
    ways: int = 5
    shots: int = 1
    query_shots: int = 15
    image_size: int = 28
    rotations: bool = True
    random_rotation: bool = False
    train_split: Split = "train"
    val_split: Split = "val"
    character_split: Literal["vinyals", "random"] = "vinyals"
    character_seed: int = 0
    task_pool: int = 0


@dataclass
class ModelConfig:
    """The network: ``conv4`` (``filters``, ``downsample``) or ``mlp`` (``hidden`` sizes).

    ``conv4-released`` is the released iMAML code's conv4 (its padding and initialization,
    :class:`imaml.models.Conv4` with ``variant="released"``; ``downsample = "stride"``).
    """

    name: Literal["conv4", "conv4-released", "mlp"] = "conv4"
    filters: int = 64
    downsample: Literal["stride", "pool"] = "stride"
    hidden: list[int] = field(default_factory=lambda: [40, 40])


@dataclass
class InnerConfig:
    """The inner (task-adaptation) optimizer: a class of :data:`imaml.inner.OPTIMIZERS`.

    ``lr`` applies where the class has an ``lr`` field (not ``hf``); ``options`` are the
    class's other fields (``hf``: ``cg_iters``, ``ls_steps``, ``decay``, ``armijo``;
    ``adam``: ``betas``, ``eps``), its defaults where not given.
    """

    optimizer: str = "gd"
    steps: int = 16
    lr: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)

    def kwargs(self, steps: int | None = None) -> dict[str, Any]:
        """The keyword arguments of the chosen class, optionally with another ``steps``."""
        common = {"steps": self.steps if steps is None else steps, "lr": self.lr}
        return _choice_kwargs(OPTIMIZERS[self.optimizer], common, self.options)


@dataclass
class ImamlConfig:
    """iMAML's proximal strength λ and the linear solver for ``(I + H/λ) g = ∇L_q``.

    ``solver`` is a class of :data:`imaml.solvers.SOLVERS`, built with ``solver_iters`` as its
    ``iters`` (not ``dense``) and ``solver_options``, its other fields (``neumann``: ``alpha``,
    0.1 where not given; ``cg``, ``minres``: ``tol``).
    """

    lam: float = 2.0
    solver: str = "cg"
    solver_iters: int = 5
    solver_options: dict[str, Any] = field(default_factory=dict)

    def solver_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the chosen solver class."""
        return _choice_kwargs(
            SOLVERS[self.solver], {"iters": self.solver_iters}, self.solver_options
        )


@dataclass
class ReleasedConfig:
    """The dampings and pieces of ``algorithm = "imaml-released"`` (:mod:`imaml.released`).

    Its operator is ``(1 + cg_damping)·v + Hv/(λ + lam_damping)`` with λ = ``imaml.lam``;
    the released code's ``--cg_damping`` (1.0 in its README) and ``Learner.matrix_evaluator``'s
    ``lam_damping`` (10).

    ``inner_loop`` and ``solve`` (both true: the released pipeline) measure one released piece
    at a time: ``inner_loop = false`` adapts as exact iMAML does instead (the ``[inner]``
    optimizer on the proximal objective, no pull-back step), ``solve = false`` solves exact
    iMAML's ``(I + H/λ) v = ∇L_q(φ)`` with ``imaml.solver`` instead of the damped CG. Both
    false is exact iMAML (``algorithm = "imaml"``) but for the test-time adaptation at λ = 0.
    """

    cg_damping: float = 1.0
    lam_damping: float = 10.0
    inner_loop: bool = True
    solve: bool = True


@dataclass
class TrainConfig:
    """The outer loop: steps, meta-batch, seed, outer optimizer, logging and checkpoints.

    ``chunk_size`` > 0 computes the meta-batch in vmap chunks of that many tasks (less memory);
    ``val_every`` = 0 disables validation. ``adam_eps`` is the outer Adam's ε (torch's default
    1e-8; the released iMAML code uses 1e-3). The outer learning rate is ``outer_lr`` times
    ``outer_lr_gamma`` for each of ``outer_lr_milestones`` (meta-steps, increasing) already
    reached, as torch's ``MultiStepLR``: ``[8000]`` gives the updates after step 8,000 a tenth
    of the rate with the default gamma (:func:`imaml.training.step.outer_lr`).

    ``init_from``, a checkpoint file or a run directory (its ``best.pt``), starts the run from
    that checkpoint's parameters instead of a random initialization (a warm start, e.g. iMAML
    from a MAML model); the model must have the same parameters, the outer optimizer and the
    step count start afresh. A resumed run continues from its own checkpoint and ignores it.

    ``query_batch_shots`` = k > 0 runs the network on each training task's query set in
    batches of k images per class (as ``eval.query_batch_shots`` scores), so BatchNorm
    normalizes the query images as it does a task with k query images per class while the
    meta-gradient takes all of them; k must be ``data.shots``, so that the support set, one
    such batch, is unchanged. 0 runs the query set in one batch. Validation uses one batch.
    """

    meta_steps: int = 20000
    meta_batch: int = 32
    seed: int = 0
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    outer_lr: float = 1e-3
    adam_eps: float = 1e-8
    outer_lr_milestones: list[int] = field(default_factory=list)
    outer_lr_gamma: float = 0.1
    chunk_size: int = 0
    log_every: int = 10
    val_every: int = 500
    val_tasks: int = 200
    checkpoint_every: int = 100
    init_from: str = ""
    query_batch_shots: int = 0


@dataclass
class EvalConfig:
    """Meta-test: ``tasks`` tasks of ``split`` adapted ``batch`` at a time.

    ``inner_steps`` = 0 adapts with the training number of inner steps. With ``at_end``,
    training ends by evaluating the meta-learned and the initial parameters on ``split``.
    ``query_batch_shots`` = k > 0 scores each task's query set in forward passes of k images
    per class (a divisor of ``data.query_shots``; 1: BatchNorm sees the released code's 1-query
    batches); 0 scores it in one pass. Validation during training always uses one pass.
    """

    tasks: int = 600
    batch: int = 50
    inner_steps: int = 0
    split: Split = "test"
    at_end: bool = False
    query_batch_shots: int = 0


@dataclass
class Config:
    """A whole experiment; see the module docstring for the TOML layout."""

    algorithm: Algorithm = "imaml"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    imaml: ImamlConfig = field(default_factory=ImamlConfig)
    released: ReleasedConfig = field(default_factory=ReleasedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The config as nested plain dicts (TOML/JSON-ready)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """The config as a JSON string (what checkpoints store)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_toml(self) -> str:
        """The config as TOML text that :func:`parse_config` reads back to an equal config."""
        data = self.to_dict()
        lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
        for table, values in data.items():
            if isinstance(values, dict):
                lines += ["", f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
        return "\n".join(lines) + "\n"


# Lower bounds of the numeric keys that must be positive (> 0) or non-negative (>= 0).
_POSITIVE = {
    "data.ways", "data.shots", "data.query_shots", "data.image_size", "model.filters",
    "inner.lr", "imaml.solver_iters", "train.meta_batch", "train.outer_lr", "train.outer_lr_gamma",
    "train.log_every", "train.val_tasks", "train.checkpoint_every", "eval.tasks", "eval.batch",
}  # fmt: skip
_NON_NEGATIVE = {
    "inner.steps", "imaml.lam", "train.meta_steps", "train.seed", "train.chunk_size",
    "train.val_every", "eval.inner_steps", "data.task_pool", "released.cg_damping",
    "released.lam_damping", "train.adam_eps", "eval.query_batch_shots", "train.query_batch_shots",
}  # fmt: skip


class LegacyOption(NamedTuple):
    """A key of the union tables before ``[inner.options]`` and ``[imaml.solver_options]``."""

    choice: str  # the dotted key of the choice it belongs to
    name: str  # the choice that takes it
    option: str  # its name among that class's options
    default: Any  # its value in every config written before, whatever the choice


LEGACY_OPTIONS = {
    "inner.cg_iters": LegacyOption("inner.optimizer", "hf", "cg_iters", 5),
    "inner.ls_steps": LegacyOption("inner.optimizer", "hf", "ls_steps", 10),
    "imaml.neumann_alpha": LegacyOption("imaml.solver", "neumann", "alpha", 0.1),
}
"""The old keys still read: into the options of the choice that takes them; elsewhere ignored
at their old default (configs written before list them whatever the choice), else refused.
An option the chosen class requires (no default) takes the old default where not given."""


class _Choice(NamedTuple):
    """A key that names a class of ``registry``, with the table of that class's options."""

    registry: Mapping[str, type]
    options: str  # the dotted key of its options table
    common: Mapping[str, str]  # class field -> the config key that sets it for every class


_CHOICES = {
    "inner.optimizer": _Choice(
        OPTIMIZERS, "inner.options", {"steps": "inner.steps", "lr": "inner.lr"}
    ),
    "imaml.solver": _Choice(SOLVERS, "imaml.solver_options", {"iters": "imaml.solver_iters"}),
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of {args[0].__name__}"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin is dict:
        return "a table"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[tp]


def _choice_kwargs(
    cls: type, common: Mapping[str, Any], options: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of ``cls``: the ``common`` values it has fields for, ``options``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {**{k: v for k, v in common.items() if k in names}, **options}


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to the field type ``tp`` (int → float only), or raise."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        ok = value in typing.get_args(tp) and isinstance(value, str)
    elif origin is list:
        (item,) = typing.get_args(tp)
        ok = isinstance(value, list)
        if ok:
            value = [_check_value(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    elif origin is tuple:
        items = typing.get_args(tp)
        ok = isinstance(value, list | tuple) and len(value) == len(items)
        if ok:
            value = tuple(
                _check_value(f"{key}[{i}]", v, t)
                for i, (v, t) in enumerate(zip(value, items, strict=True))
            )
    elif origin is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    return value


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown(key: str, known: Iterable[str]) -> ConfigError:
    return ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(known)}")


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate the dataclass ``cls`` from a (nested) mapping, checking every key and type."""
    fields = _fields(cls)
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        if name not in fields:
            raise _unknown(key, (prefix + f for f in fields))
        tp = fields[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a table ([{key}]), got {value!r}")
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _check_value(key, value, tp)
        if key in _CHOICES and kwargs[name] not in _CHOICES[key].registry:
            names = ", ".join(repr(n) for n in _CHOICES[key].registry)
            raise ConfigError(f"{key} must be one of {names}, got {kwargs[name]!r}")
    return cls(**kwargs)


def _validate(config: Config) -> Config:
    """Check the value ranges of a type-correct config."""
    for key in _POSITIVE | _NON_NEGATIVE:
        table, name = key.split(".")
        value = getattr(getattr(config, table), name)
        if not math.isfinite(value) or value < 0 or (key in _POSITIVE and value == 0):
            bound = "> 0" if key in _POSITIVE else ">= 0"
            raise ConfigError(f"{key} must be {bound}, got {value!r}")
    if config.algorithm in ("imaml", "imaml-released") and config.imaml.lam == 0:
        raise ConfigError(
            f"imaml.lam must be > 0 for algorithm {config.algorithm!r} (the paper uses 2.0)"
        )
    if config.algorithm == "imaml-released":
        _validate_released(config)
    inner, imaml = config.inner, config.imaml
    _validate_options("inner.optimizer", inner.optimizer, inner.options, inner.kwargs)
    _validate_options("imaml.solver", imaml.solver, imaml.solver_options, imaml.solver_kwargs)
    if config.train.outer_optimizer != "adam" and config.train.adam_eps != TrainConfig.adam_eps:
        raise ConfigError(
            f"train.adam_eps applies to train.outer_optimizer 'adam' only, not "
            f"{config.train.outer_optimizer!r}; remove it"
        )
    if config.model.name == "mlp" and config.data.dataset != "sinusoid":
        raise ConfigError("model.name 'mlp' needs data.dataset 'sinusoid'; images need 'conv4'")
    if config.model.name != "mlp" and config.data.dataset == "sinusoid":
        raise ConfigError("data.dataset 'sinusoid' needs model.name 'mlp'")
    if config.model.name == "conv4-released" and config.model.downsample != "stride":
        raise ConfigError("model.name 'conv4-released' needs model.downsample 'stride'")
    splits = (config.data.train_split, config.data.val_split, config.eval.split)
    if config.data.dataset == "miniimagenet" and "trainval" in splits:
        raise ConfigError("mini-ImageNet has no 'trainval' split; use 'train', 'val' or 'test'")
    if config.data.character_split != "vinyals" and config.data.dataset != "omniglot":
        raise ConfigError(
            f"data.character_split {config.data.character_split!r} needs data.dataset 'omniglot'"
            f" (got {config.data.dataset!r}, whose splits are fixed); remove it"
        )
    if config.data.random_rotation and (config.data.rotations or config.data.dataset == "sinusoid"):
        raise ConfigError(
            "data.random_rotation turns the images of a task's classes, so it needs an image data "
            "set and data.rotations = false (rotated copies as classes of their own)"
        )
    group, query_shots = config.eval.query_batch_shots, config.data.query_shots
    if group and query_shots % group:
        raise ConfigError(
            f"eval.query_batch_shots must divide data.query_shots = {query_shots}, got {group}"
        )
    group, shots = config.train.query_batch_shots, config.data.shots
    if group and (group != shots or query_shots % group):
        raise ConfigError(
            f"train.query_batch_shots must be 0 or data.shots = {shots} (a divisor of "
            f"data.query_shots = {query_shots}), got {group}"
        )
    milestones = config.train.outer_lr_milestones
    if any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(
            f"train.outer_lr_milestones must be increasing meta-steps > 0, got {milestones}"
        )
    if any(h < 1 for h in config.model.hidden):
        raise ConfigError(f"model.hidden sizes must be > 0, got {config.model.hidden}")
    return config


def _validate_options(
    choice: str, name: str, options: dict[str, Any], kwargs: Callable[[], dict[str, Any]]
) -> None:
    """Check ``options`` (converted in place) against the fields of the class ``name`` of
    ``choice`` but the common ones, then the class's own checks of ``kwargs()``."""
    spec = _CHOICES[choice]
    cls = spec.registry[name]
    fields = _fields(cls)
    allowed = {f: tp for f, tp in fields.items() if f not in spec.common}
    for option, value in options.items():
        key = f"{spec.options}.{option}"
        if option in spec.common:
            raise ConfigError(f"{key}: set {spec.common[option]} instead")
        if option not in allowed:
            raise ConfigError(
                f"{key} is not an option of {choice} {name!r}; its options: "
                f"{', '.join(allowed) or 'none'}"
            )
        options[option] = _check_value(key, value, allowed[option])
    try:
        cls(**kwargs())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{spec.options} of {choice} {name!r}: {err}") from None


def _validate_released(config: Config) -> None:
    """The released inner loop takes GD steps, the released solve is CG of >= 2 steps."""
    if config.released.inner_loop and config.inner.optimizer != "gd":
        raise ConfigError(
            "algorithm 'imaml-released' needs inner.optimizer 'gd' (the released code's only "
            f"inner loop), got {config.inner.optimizer!r}; released.inner_loop=false adapts "
            "with it as exact iMAML does"
        )
    if config.released.solve and (config.imaml.solver != "cg" or config.imaml.solver_iters < 2):
        raise ConfigError(
            "algorithm 'imaml-released' needs imaml.solver 'cg' with imaml.solver_iters >= 2 "
            f"(the released code's solve), got {config.imaml.solver!r} with "
            f"{config.imaml.solver_iters}; released.solve=false solves with it as exact iMAML does"
        )


def from_dict(values: Mapping[str, Any], overrides: Iterable[str] = ()) -> Config:
    """Build and validate a :class:`Config` from nested dicts and ``KEY=VALUE`` overrides."""
    merged = json.loads(json.dumps(dict(values)))  # a deep copy of plain data
    parsed = [parse_override(item) for item in overrides]
    for key, value in parsed:
        if key in _CHOICES and value != _chosen(merged, key):
            _drop_options(merged, key)  # they belong to the choice the override replaces
    for key, value in parsed:
        *tables, name = key.split(".")
        target = merged
        for table in tables:
            target = target.setdefault(table, {})
        target[name] = value
    _read_legacy(merged)
    return _validate(_build(Config, merged))


def _chosen(values: Mapping[str, Any], choice: str) -> Any:
    """The value of the choice key ``choice`` in nested ``values``, or its default."""
    table, name = choice.split(".")
    section = values.get(table, {})
    default = getattr(getattr(Config(), table), name)
    return section.get(name, default) if isinstance(section, Mapping) else default


def _drop_options(values: dict[str, Any], choice: str) -> None:
    """Remove from nested ``values`` the options of ``choice``, legacy keys included."""
    section = values.get(_CHOICES[choice].options.split(".")[0])
    if isinstance(section, dict):
        section.pop(_CHOICES[choice].options.split(".")[1], None)
        for key, legacy in LEGACY_OPTIONS.items():
            if legacy.choice == choice:
                section.pop(key.split(".")[1], None)


def _read_legacy(values: dict[str, Any]) -> None:
    """Move the :data:`LEGACY_OPTIONS` keys of nested ``values`` into their options tables."""
    for key, legacy in LEGACY_OPTIONS.items():
        table, old = key.split(".")
        section = values.setdefault(table, {})
        spec = _CHOICES[legacy.choice]
        options_name = spec.options.split(".")[1]
        options = section.get(options_name, {}) if isinstance(section, dict) else None
        if not isinstance(options, dict):
            continue  # not tables: _build says so
        chosen = _chosen(values, legacy.choice)
        if chosen != legacy.name:
            if section.pop(old, legacy.default) != legacy.default:
                raise ConfigError(
                    f"{key} applies to {legacy.choice} {legacy.name!r} only, not {chosen!r}; "
                    "remove it"
                )
            continue
        if old in section:
            value = section.pop(old)
            if options.setdefault(legacy.option, value) != value:
                raise ConfigError(
                    f"{key} and {spec.options}.{legacy.option} differ; set "
                    f"{spec.options}.{legacy.option} only"
                )
        field_ = {f.name: f for f in dataclasses.fields(spec.registry[chosen])}[legacy.option]
        required = field_.default is field_.default_factory is dataclasses.MISSING
        if required and legacy.option not in options:
            options[legacy.option] = legacy.default
        if options:
            section[options_name] = options


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` and read VALUE with the type of the config field KEY names.

    VALUE is read as a TOML value (``100``, ``1e-3``, ``true``, ``[40, 40]``, ``"x"``); a
    bare word is taken as a string, so ``algorithm=maml`` works without quotes.
    """
    key, sep, raw = item.partition("=")
    key, raw = key.strip(), raw.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.meta_steps=100), got {item!r}")
    tp = _field_type(key)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if tp is not str and typing.get_origin(tp) is not Literal:
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {raw!r}") from None
        value = raw
    return key, _check_value(key, value, tp)


def _field_type(key: str) -> Any:
    """The type of the (dotted) config key; ConfigError listing the valid keys if unknown.

    An option's type is that of the field of that name in the classes of its choice (which
    class is chosen is known only once every override is read).
    """
    if key in LEGACY_OPTIONS:
        legacy = LEGACY_OPTIONS[key]
        return _fields(_CHOICES[legacy.choice].registry[legacy.name])[legacy.option]
    for choice, spec in _CHOICES.items():
        if key.startswith(spec.options + "."):
            types = {
                option: tp
                for cls in spec.registry.values()
                for option, tp in _fields(cls).items()
                if option not in spec.common
            }
            option = key[len(spec.options) + 1 :]
            if option in spec.common:
                raise ConfigError(f"{key}: set {spec.common[option]} instead")
            if option not in types:
                raise ConfigError(
                    f"{key} is not an option of any {choice}; options: {', '.join(types)}"
                )
            return types[option]
    cls: Any = Config
    prefix = ""
    parts = key.split(".")
    for i, name in enumerate(parts):
        fields = _fields(cls)
        if name not in fields:
            raise _unknown(key, (prefix + f for f in fields))
        tp = fields[name]
        if dataclasses.is_dataclass(tp) != (i < len(parts) - 1):
            kind = "a table; set one of its keys" if dataclasses.is_dataclass(tp) else "not a table"
            raise ConfigError(f"{prefix + name} is {kind}")
        cls, prefix = tp, prefix + name + "."
    return cls


def parse_config(text: str, overrides: Iterable[str] = (), source: str = "<string>") -> Config:
    """Parse TOML ``text`` into a validated :class:`Config`, then apply ``overrides``."""
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from None
    try:
        return from_dict(values, overrides)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def bundled_configs() -> dict[str, str]:
    """The bundled configs, ``{name: description}``, sorted by name."""
    folder = resources.files("imaml") / "configs"
    names = sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))
    return {
        name: parse_config(bundled_config_text(name), source=name).description for name in names
    }


def bundled_config_text(name: str) -> str:
    """The TOML text (with its comments) of the bundled config ``name``."""
    return (resources.files("imaml") / "configs" / f"{name}.toml").read_text(encoding="utf-8")


def load_config(name_or_path: str, overrides: Iterable[str] = ()) -> tuple[str, Config]:
    """Load a bundled config by name, or a TOML file by path; returns ``(name, config)``.

    ``name`` is the bundled name or the file's stem (it names the run directory).
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"{path} is not a TOML file: byte {err.start} is not UTF-8 text"
            ) from None
        return path.stem, parse_config(text, overrides, source=str(path))
    try:
        text = bundled_config_text(name_or_path)
    except (FileNotFoundError, OSError):
        names = ", ".join(bundled_configs())
        raise ConfigError(
            f"no bundled config named {name_or_path!r} and no such file; bundled: {names}"
        ) from None
    return name_or_path, parse_config(text, overrides, source=name_or_path)


__all__ = [
    "LEGACY_OPTIONS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ImamlConfig",
    "InnerConfig",
    "LegacyOption",
    "ModelConfig",
    "ReleasedConfig",
    "TrainConfig",
    "bundled_config_text",
    "bundled_configs",
    "from_dict",
    "load_config",
    "parse_config",
    "parse_override",
]
