"""From a :class:`~imaml.config.Config` to what the engine takes: model, loss, data, optimizers.

The names a config chooses among are the keys of registries, one per family: :data:`MODELS`
and :data:`DATASETS` here, :data:`imaml.inner.OPTIMIZERS`, :data:`imaml.solvers.SOLVERS` and
:data:`imaml.training.step.ALGORITHMS`; adding one is one entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imaml import inner as inner_lib
from imaml import solvers
from imaml.config import Config, ConfigError, DataConfig, InnerConfig
from imaml.data import DatasetNotFoundError, MiniImageNet, Omniglot, Sinusoid, TaskSampler
from imaml.learner import IMAML, MAML, MetaLearner, Reptile
from imaml.losses import ClassBatches, ModelLoss, accuracy, classification_loss, regression_loss
from imaml.models import MLP, Conv4
from imaml.types import Params

Metric = Literal["accuracy", "mse"]
METRICS: tuple[Metric, ...] = get_args(Metric)
"""The names of the metrics a :class:`Problem` reports."""


@dataclass(frozen=True)
class Problem:
    """A model with its per-task loss and the metric reported on query sets.

    ``metric`` is ``"accuracy"`` (classification, higher is better) or ``"mse"`` (regression,
    lower is better); :meth:`score` returns it for one task.
    """

    model: nn.Module
    loss_fn: Callable[..., Any]
    has_aux: bool
    metric: Metric

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger :attr:`metric` is better."""
        return self.metric == "accuracy"

    def score(self, params: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, metric)`` of one task's examples under ``params`` (0-d tensors)."""
        if self.has_aux:
            loss, aux = self.loss_fn(params, x, y)
            return loss, aux["accuracy"]
        loss = self.loss_fn(params, x, y)
        return loss, loss

    def in_class_batches(self, ways: int, shots: int) -> Problem:
        """This problem with the model run once per batch of ``shots`` examples of each of a
        task's ``ways`` classes (:class:`imaml.losses.ClassBatches`; a regression task is one
        class, whatever ``ways``), as BatchNorm sees tasks of ``shots`` examples per class; the
        loss and metric are taken over all the examples."""
        if not isinstance(self.loss_fn, ModelLoss):
            raise TypeError(f"class batches need a loss of imaml.losses, not {self.loss_fn!r}")
        batches = ClassBatches(ways if self.metric == "accuracy" else 1, shots)
        return replace(self, loss_fn=type(self.loss_fn)(self.model, batches))


def _conv4(config: Config, variant: Literal["standard", "released"]) -> Conv4:
    data, model = config.data, config.model
    return Conv4(
        DATASETS[data.dataset].channels,
        data.ways,
        hidden=model.filters,
        image_size=data.image_size,
        downsample=model.downsample,
        variant=variant,
    )


MODELS: dict[str, Callable[[Config], nn.Module]] = {
    "conv4": lambda config: _conv4(config, "standard"),
    "conv4-released": lambda config: _conv4(config, "released"),
    "mlp": lambda config: MLP(1, 1, hidden=tuple(config.model.hidden)),
}
"""The networks of ``model.name``: name → the network of a config (:class:`imaml.models.Conv4`,
its ``variant="released"``, :class:`imaml.models.MLP`)."""


def build_model(config: Config) -> nn.Module:
    """The network the config describes, initialized from ``train.seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return MODELS[config.model.name](config)


_LOSSES: dict[Metric, tuple[Callable[[nn.Module], Callable[..., Any]], bool]] = {
    "accuracy": (classification_loss, True),
    "mse": (regression_loss, False),
}
"""Each metric's loss (from the model) and whether that loss returns ``(loss, aux)``."""


def build_problem(config: Config) -> Problem:
    """The model of the config with its loss: cross-entropy + accuracy, or mean squared error."""
    model = build_model(config)
    metric = DATASETS[config.data.dataset].metric
    loss, has_aux = _LOSSES[metric]
    return Problem(model, loss(model), has_aux=has_aux, metric=metric)


def build_inner(config: InnerConfig, steps: int | None = None) -> inner_lib.InnerOptimizer:
    """The inner optimizer of ``config`` (:data:`imaml.inner.OPTIMIZERS`), optionally with
    another number of ``steps``."""
    return inner_lib.OPTIMIZERS[config.optimizer](**config.kwargs(steps))


def build_solver(config: Config) -> solvers.LinearSolver:
    """The linear solver of iMAML's meta-gradient (:data:`imaml.solvers.SOLVERS`)."""
    return solvers.SOLVERS[config.imaml.solver](**config.imaml.solver_kwargs())


def build_outer_optimizer(config: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The outer optimizer of ``train.outer_optimizer`` over ``params``: torch's Adam (with
    ``train.adam_eps``) or SGD, at ``train.outer_lr``."""
    train = config.train
    if train.outer_optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.outer_lr)
    return torch.optim.Adam(params, lr=train.outer_lr, eps=train.adam_eps)


def adaptation_lam(config: Config) -> float:
    """λ of test-time adaptation: iMAML adapts with its proximal term, the others without.

    ``imaml-released`` adapts without it too, as the released code's README evaluates
    (examples/measure_accuracy.py ``--lam 0.0``: plain GD on the support loss).
    """
    return config.imaml.lam if config.algorithm == "imaml" else 0.0


@dataclass(frozen=True)
class DataSource:
    """Where data sets live on this machine (not part of an experiment's config).

    ``root`` holds one folder per data set (``omniglot/``, ``miniimagenet/``), or is the
    folder of one (:meth:`dataset_root`); resized copies are cached in ``cache_dir`` (None:
    :func:`imaml.data.default_cache_dir`); ``download`` fetches missing files where the data
    set allows it. Paths may be given as strings.
    """

    root: Path
    cache_dir: Path | None = None
    download: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def dataset_root(self, dataset: str) -> Path:
        """The folder of ``dataset``: ``root/dataset``, or ``root`` itself when it is named
        ``dataset`` (any case) and holds no ``dataset/`` folder."""
        root = self.root.expanduser()
        if root.name.lower() == dataset and not (root / dataset).is_dir():
            return root
        return root / dataset


def split_seed(seed: int, split: str) -> int:
    """The task seed of ``split``: ``seed`` itself for training, a distinct stream otherwise.

    Sinusoid tasks have no class split, so validation and test tasks must come from streams of
    their own to be held out from training.
    """
    if split == "train":
        return seed
    digest = hashlib.sha256(f"imaml:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class DatasetSpec:
    """What building from a config needs to know of one data set.

    ``open(data, root, split, source)`` opens ``split`` of it from its folder ``root`` (with
    ``source``'s cache and download setting); ``metric`` is what its tasks report (its loss:
    :data:`_LOSSES`); ``channels`` the images' channels (0: no images); ``downloadable``
    whether ``download`` can fetch it.
    """

    open: Callable[[DataConfig, Path, str, DataSource], Any]
    metric: Metric
    channels: int = 0
    downloadable: bool = False


def _omniglot(data: DataConfig, root: Path, split: str, source: DataSource) -> Omniglot:
    return Omniglot(
        root,
        split,
        data.image_size,
        data.rotations,
        source.download,
        source.cache_dir,
        data.character_split,
        data.character_seed,
    )


def _miniimagenet(data: DataConfig, root: Path, split: str, source: DataSource) -> MiniImageNet:
    return MiniImageNet(root, split, source.download, source.cache_dir)


DATASETS: dict[str, DatasetSpec] = {
    "omniglot": DatasetSpec(_omniglot, "accuracy", channels=1, downloadable=True),
    "miniimagenet": DatasetSpec(_miniimagenet, "accuracy", channels=3),
    "sinusoid": DatasetSpec(lambda data, root, split, source: Sinusoid(), "mse"),
}
"""The data sets of ``data.dataset``: name → :class:`DatasetSpec`."""


def build_sampler(
    config: Config, split: str, source: DataSource, seed: int, device: torch.device | str = "cpu"
) -> TaskSampler:
    """A task sampler over ``split`` of the config's data set, its tasks fixed by ``seed``.

    With ``data.task_pool`` > 0 its meta-steps (:meth:`TaskSampler.sample`, what training
    draws) come from that many fixed tasks; evaluation's :meth:`TaskSampler.sample_tasks`
    does not use the pool. ``data.random_rotation`` turns each class of a task by a random
    multiple of 90 degrees at each draw.

    Raises:
        DatasetNotFoundError: the data set is not under ``source.root`` (the message says how
            to get it).
    """
    data = config.data
    spec = DATASETS[data.dataset]
    try:
        dataset = spec.open(data, source.dataset_root(data.dataset), split, source)
    except DatasetNotFoundError as err:
        fetch = "add --download, or " if spec.downloadable else ""
        raise DatasetNotFoundError(
            f"{err} (command line: {fetch}point --data-dir or $IMAML_DATA at the folder "
            f"holding {data.dataset}/, or at {data.dataset}/ itself)"
        ) from None
    try:
        return TaskSampler(
            dataset, data.ways, data.shots, data.query_shots, split_seed(seed, split), device,
            pool=data.task_pool, random_rotation=data.random_rotation,
        )  # fmt: skip
    except ValueError as err:
        raise ConfigError(f"data ({split} split): {err}") from None


def build_learner(config: Config, model: nn.Module) -> MetaLearner:
    """The model-level learner of ``config``'s algorithm around ``model``, adapting as
    ``imaml eval`` does: the config's inner optimizer with ``eval.inner_steps`` (if set) and
    iMAML's λ; classifiers report ``query_accuracy``.

    Raises:
        ConfigError: the algorithm has no model-level learner (``imaml-released``).
    """
    inner = build_inner(config.inner, config.eval.inner_steps or None)
    if config.data.dataset == "sinusoid":
        loss, metrics = F.mse_loss, None
    else:
        loss, metrics = F.cross_entropy, {"accuracy": accuracy}
    common: dict[str, Any] = {"inner": inner, "metrics": metrics}
    if config.algorithm == "imaml":
        return IMAML(model, loss, lam=config.imaml.lam, solver=build_solver(config), **common)
    if config.algorithm in ("maml", "fomaml"):
        return MAML(model, loss, first_order=config.algorithm == "fomaml", **common)
    if config.algorithm == "reptile":
        return Reptile(model, loss, **common)
    raise ConfigError(f"no model-level learner for algorithm {config.algorithm!r}")
