"""Few-shot tasks as batched tensors, each task a pure function of (seed, global task index).

Task ``i`` of a sampler with seed ``s`` is drawn from its own counter-based random stream
(:func:`task_generator`), so it does not depend on which other tasks are drawn, in what order, or by
how many processes. :meth:`TaskSampler.sample` maps meta-step ``k`` of a ``meta_batch``-task run to
the tasks ``k * meta_batch, ..., (k + 1) * meta_batch - 1`` and can hand each of ``world_size``
ranks its contiguous share of them. With a task pool of P tasks, the task at each of those
positions is instead task ``j`` (``0 <= j < P``) of the sampler, ``j`` drawn uniformly per
position from a stream of its own (:meth:`TaskSampler.pool_indices`): a fixed set of tasks
pre-sampled once, as the released iMAML code trains (examples/README.md: 200,000). With
``random_rotation``, each class of a task is turned by a random multiple of 90 degrees at each
draw, from a third stream keyed by (seed, position), as the released code loads its tasks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch

from imaml.data.base import ImageDataset
from imaml.data.sinusoid import Sinusoid

_MAX_U64 = 2**64


class TaskBatch(NamedTuple):
    """A batch of B tasks; unpacks as ``xs, ys, xq, yq``.

    Classification (N = ways, images of shape (C, H, W)):
        xs: float32 (B, N * shots, C, H, W) in [0, 1]; ys: int64 (B, N * shots) in [0, N).
        xq: float32 (B, N * query_shots, C, H, W); yq: int64 (B, N * query_shots).
        Examples are grouped by label: ``ys[b] == [0] * shots + [1] * shots + ...``.
    Regression (sinusoid):
        xs, ys: float32 (B, shots, 1); xq, yq: float32 (B, query_shots, 1).
    """

    xs: torch.Tensor
    ys: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor


def _check_u64(name: str, value: int) -> None:
    if not 0 <= value < _MAX_U64:
        raise ValueError(f"{name} must lie in [0, 2**64), got {value}")


def task_generator(seed: int, index: int) -> np.random.Generator:
    """Return the random stream of task ``index`` under ``seed``: Philox keyed by (seed, index).

    Both must lie in [0, 2**64). Streams of distinct (seed, index) pairs are independent.
    """
    _check_u64("seed", seed)
    _check_u64("task index", index)
    return np.random.Generator(np.random.Philox(key=(seed << 64) | index))


def _derived_seed(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"imaml:{purpose}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def pool_seed(seed: int) -> int:
    """The seed of the pool-index streams of a sampler with ``seed``: derived from it by hash,
    so that they are independent of its task streams."""
    return _derived_seed(seed, "task-pool")


def rotation_seed(seed: int) -> int:
    """The seed of the random-rotation streams of a sampler with ``seed``: derived from it by
    hash, so that they are independent of its task and pool streams."""
    return _derived_seed(seed, "rotation")


class TaskSampler:
    """Draws N-way K-shot tasks from an image data set, or regression tasks from a Sinusoid.

    A classification task picks ``ways`` distinct classes without replacement, in random order
    (label ``j`` is the ``j``-th class picked, so the class-to-label assignment is shuffled per
    task), then ``shots + query_shots`` distinct images of each class, the first ``shots`` for the
    support set and the rest for the query set: support and query never share an image. Images are
    gathered with one indexing op from the data set's uint8 array and scaled to float32 in [0, 1].
    A regression task draws the sinusoid's parameters, then ``shots + query_shots`` points.

    Sampling is stateless apart from :attr:`step`, the meta-step :meth:`sample` draws when it is
    given none; :meth:`state_dict` / :meth:`load_state_dict` save and restore it (and the seed).

    Distributed use: with ``world_size`` processes sharing a global meta-batch of B tasks, rank
    ``r`` calls ``sample(B, step=k, rank=r, world_size=W)`` and receives tasks
    ``k*B + r*B/W, ..., k*B + (r+1)*B/W - 1``; concatenated over ranks, these are exactly the
    ``sample(B, step=k)`` batch of one process. :meth:`sample_tasks` takes any task indices.

    Task pool: with ``pool`` = P > 0, :meth:`sample` draws each task of a meta-step from the
    fixed pool of tasks ``0, ..., P - 1`` (with replacement, as the released iMAML code's
    ``np.random.choice(num_tasks, size=task_mb_size)``, examples/omniglot_implicit_maml.py);
    pool task ``j`` is task ``j`` of the sampler, a pure function of (seed, j), and which one
    fills each position is a pure function of (seed, position), so resumed and distributed runs
    draw the same tasks. :meth:`sample_tasks` is not affected.

    Random rotation: with ``random_rotation``, the images of each class of a task are turned
    counterclockwise by ``90 * k`` degrees, ``k`` uniform in {0, 1, 2, 3} per class and drawn
    afresh at each draw (:meth:`quarter_turns`), as the released iMAML code's
    ``OmniglotFewShotDataset.__getitem__`` (implicit_maml/dataset.py) rotates a pre-sampled task
    each time it loads it: in :meth:`sample` the draw is the meta-batch position, so a pool task
    drawn twice is rotated anew; in :meth:`sample_tasks` it is the task index unless
    ``rotation_keys`` are given. Support and query images of a class share its turn. Use it on
    a data set without rotated copies as classes (``Omniglot(rotations=False)``).

    Args:
        dataset: an :class:`ImageDataset` (Omniglot, MiniImageNet, ...) or a :class:`Sinusoid`.
        ways: classes per task (ignored for regression; pass 1).
        shots: support examples per class (per task for regression).
        query_shots: query examples per class (per task for regression).
        seed: in [0, 2**64); fixes every task.
        pool: the number of pre-sampled tasks :meth:`sample` draws from; 0 (default) draws a
            fresh task at every position.
        random_rotation: turn each class of a task by a random multiple of 90 degrees per draw
            (square images only).
        device: where batches are produced. For an image data set on a non-CPU device, the whole
            uint8 image array is copied there once, at construction.

    Raises:
        ValueError: a count below 1, ``ways`` above the number of classes,
            ``shots + query_shots`` above the images per class, a negative ``pool``, or
            ``random_rotation`` for a regression data set or non-square images.
    """

    def __init__(
        self,
        dataset: ImageDataset | Sinusoid,
        ways: int,
        shots: int,
        query_shots: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        pool: int = 0,
        random_rotation: bool = False,
    ) -> None:
        for name, value in {"ways": ways, "shots": shots, "query_shots": query_shots}.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not isinstance(pool, int) or pool < 0:
            raise ValueError(f"pool must be an int >= 0 (0: no pool), got {pool!r}")
        _check_u64("seed", seed)
        if random_rotation and not (
            isinstance(dataset, ImageDataset) and dataset.image_shape[1] == dataset.image_shape[2]
        ):
            raise ValueError(f"random_rotation needs a data set of square images, not {dataset!r}")
        self.pool = pool
        self.random_rotation = random_rotation
        self.dataset = dataset
        self.ways = ways
        self.shots = shots
        self.query_shots = query_shots
        self.seed = seed
        self.step = 0
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if isinstance(dataset, ImageDataset):
            if ways > dataset.num_classes:
                raise ValueError(
                    f"ways={ways} exceeds the {dataset.num_classes} classes of {dataset!r}"
                )
            if shots + query_shots > dataset.images_per_class:
                raise ValueError(
                    f"shots + query_shots = {shots} + {query_shots} = {shots + query_shots} "
                    f"exceeds the {dataset.images_per_class} images per class of {dataset!r}"
                )
            flat = dataset.images.reshape(-1, *dataset.image_shape)
            # On the CPU, numpy gathers faster than torch's small multi-threaded ops; elsewhere the
            # images live on the device and are gathered there.
            self._images: np.ndarray | torch.Tensor = (
                flat
                if self.device.type == "cpu"
                else torch.from_numpy(np.require(flat, requirements="W")).to(self.device)
            )
            # uint8 → [0, 1] by table on a device, the CPU's float32 quotients bit for bit (CUDA
            # divides by a scalar as a product with its reciprocal: 1 ulp off for some values).
            self._pixel_values = torch.from_numpy(
                np.arange(256, dtype=np.float32) / np.float32(255)
            ).to(self.device)

    def task_generator(self, index: int) -> np.random.Generator:
        """Return the random stream of task ``index`` (see :func:`task_generator`).

        For a Sinusoid, ``dataset.draw(sampler.task_generator(i), shots + query_shots)`` returns
        task ``i``'s amplitude, phase and points, the same as in any batch holding task ``i``.
        """
        return task_generator(self.seed, index)

    def pool_indices(self, positions: Iterable[int]) -> np.ndarray:
        """The pool tasks (int64, one per position) that fill the given meta-batch positions.

        Position ``t`` (task ``t mod meta_batch`` of meta-step ``t // meta_batch``) gets task
        ``j``, uniform in [0, pool), drawn from the stream ``task_generator(pool_seed(seed), t)``.

        Raises:
            ValueError: the sampler has no pool.
        """
        if not self.pool:
            raise ValueError("this sampler has no task pool (pool=0)")
        stream = pool_seed(self.seed)
        return np.array(
            [task_generator(stream, int(t)).integers(self.pool) for t in positions], np.int64
        )

    def quarter_turns(self, keys: Iterable[int]) -> np.ndarray:
        """The counterclockwise quarter turns (int64 (B, ways), each in {0, 1, 2, 3}) of the
        classes of the draws with the given keys, from the streams
        ``task_generator(rotation_seed(seed), key)``; used with ``random_rotation``."""
        stream = rotation_seed(self.seed)
        return np.array(
            [task_generator(stream, int(k)).integers(4, size=self.ways) for k in keys], np.int64
        ).reshape(-1, self.ways)

    def sample_tasks(
        self, indices: Iterable[int], rotation_keys: Iterable[int] | None = None
    ) -> TaskBatch:
        """Return the tasks with the given global indices, in that order (B = len(indices)).

        With ``random_rotation``, ``rotation_keys`` (one per task, default: the indices) key the
        classes' turns (:meth:`quarter_turns`); :meth:`sample` passes the positions.
        """
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("no task indices given")
        if isinstance(self.dataset, Sinusoid):
            return self._regression(self.dataset, indices)
        classes, picks = self.task_indices(indices)
        flat = classes[..., None] * self.dataset.images_per_class + picks
        turns = None
        if self.random_rotation:
            keys = indices if rotation_keys is None else [int(k) for k in rotation_keys]
            if len(keys) != len(indices):
                raise ValueError(f"{len(keys)} rotation keys given for {len(indices)} tasks")
            turns = self.quarter_turns(keys)
        return TaskBatch(
            self._gather(flat[..., : self.shots], turns),
            self._labels(len(indices), self.shots),
            self._gather(flat[..., self.shots :], turns),
            self._labels(len(indices), self.query_shots),
        )

    def task_indices(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Return which classes and images the tasks with the given indices use (B tasks).

        Returns:
            classes: int64 (B, ways), the data set class of each label, distinct within a task.
            images: int64 (B, ways, shots + query_shots), distinct image indices within each class;
                the first ``shots`` go to the support set, the rest to the query set.

        Raises:
            TypeError: the data set is not an :class:`ImageDataset`.
        """
        dataset = self.dataset
        if not isinstance(dataset, ImageDataset):
            raise TypeError(f"task_indices needs an ImageDataset, not {type(dataset).__name__}")
        generators = [self.task_generator(int(i)) for i in indices]
        classes = np.empty((len(generators), self.ways), np.int64)
        keys = np.empty((len(generators), self.ways, dataset.images_per_class))
        for task, rng in enumerate(generators):
            classes[task] = rng.choice(dataset.num_classes, self.ways, replace=False)
            rng.random(out=keys[task])
        return classes, keys.argsort(axis=-1)[..., : self.shots + self.query_shots]

    def sample(
        self, meta_batch: int, step: int | None = None, rank: int = 0, world_size: int = 1
    ) -> TaskBatch:
        """Return rank ``rank``'s share of meta-step ``step`` (default :attr:`step`).

        Meta-step ``k`` holds the ``meta_batch`` tasks ``k * meta_batch, ...,
        (k + 1) * meta_batch - 1`` (with a pool, the pool tasks :meth:`pool_indices` assigns to
        those positions); rank ``r`` of ``world_size`` receives the ``r``-th of ``world_size``
        equal contiguous slices, so B = meta_batch // world_size tasks. Sets :attr:`step` to
        ``step + 1`` afterwards.

        Raises:
            ValueError: ``meta_batch`` not divisible by ``world_size``, ``rank`` outside
                [0, world_size), or a negative step.
        """
        if meta_batch < 1 or world_size < 1 or meta_batch % world_size:
            raise ValueError(
                f"meta_batch={meta_batch} must be a positive multiple of world_size={world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        step = self.step if step is None else step
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        per_rank = meta_batch // world_size
        start = step * meta_batch + rank * per_rank
        positions = range(start, start + per_rank)
        tasks = self.pool_indices(positions) if self.pool else positions
        batch = self.sample_tasks(tasks, rotation_keys=positions)
        self.step = step + 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """Return ``{"seed": ..., "step": ...}``: all that the tasks still to come depend on."""
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the seed and step saved by :meth:`state_dict`."""
        _check_u64("seed", state["seed"])
        _check_u64("step", state["step"])
        self.seed = state["seed"]
        self.step = state["step"]

    def _gather(self, flat: np.ndarray, turns: np.ndarray | None = None) -> torch.Tensor:
        """Images at flat indices (B, ways, n) as float32 (B, ways * n, C, H, W) in [0, 1], those
        of class ``(b, j)`` turned by ``turns[b, j]`` quarter turns if given."""
        shape = (len(flat), -1, *self._images.shape[1:])
        if isinstance(self._images, np.ndarray):
            images = self._images[flat.reshape(-1)].astype(np.float32)
            images /= np.float32(255)
            pixels = torch.from_numpy(images)
        else:
            index = torch.from_numpy(flat.reshape(-1)).to(self.device)
            pixels = self._pixel_values[self._images.index_select(0, index).long()]
        if turns is not None:
            pixels = pixels.view(*flat.shape, *pixels.shape[1:])
            turn = torch.from_numpy(turns).to(self.device).view(*turns.shape, 1, 1, 1, 1)
            turned = pixels
            for k in range(1, 4):
                turned = torch.where(turn == k, torch.rot90(pixels, k, dims=(-2, -1)), turned)
            pixels = turned
        return pixels.reshape(shape)

    def _labels(self, count: int, per_class: int) -> torch.Tensor:
        """Labels (count, ways * per_class): [0] * per_class + [1] * per_class + ..."""
        labels = torch.arange(self.ways, device=self.device).repeat_interleave(per_class)
        return labels.expand(count, -1).contiguous()

    def _regression(self, dataset: Sinusoid, indices: list[int]) -> TaskBatch:
        n = self.shots + self.query_shots
        tasks = [dataset.draw(self.task_generator(i), n) for i in indices]
        x = torch.from_numpy(np.stack([t.x for t in tasks])[..., None])
        y = torch.from_numpy(np.stack([t.y for t in tasks])[..., None])
        x, y = (v.to(device=self.device, dtype=torch.float32) for v in (x, y))
        s = self.shots
        return TaskBatch(
            x[:, :s].contiguous(),
            y[:, :s].contiguous(),
            x[:, s:].contiguous(),
            y[:, s:].contiguous(),
        )
