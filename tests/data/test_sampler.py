"""TaskSampler on synthetic image data sets whose pixels encode (class, image) indices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imaml.data import ImageDataset, TaskBatch, TaskSampler, task_generator


def coded_dataset(num_classes: int = 40, per_class: int = 20, side: int = 3) -> ImageDataset:
    """Images whose first three pixels hold class % 256, class // 256 and the image index."""
    images = np.zeros((num_classes, per_class, 1, side, side), np.uint8)
    images[:, :, 0, 0, 0] = (np.arange(num_classes) % 256)[:, None]
    images[:, :, 0, 0, 1] = (np.arange(num_classes) // 256)[:, None]
    images[:, :, 0, 0, 2] = np.arange(per_class)[None, :]
    return ImageDataset(images)


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class, image index) of each image of a (B, n, 1, H, W) batch."""
    v = torch.round(x[:, :, 0, 0, :3] * 255).long()
    return v[..., 0] + 256 * v[..., 1], v[..., 2]


def assert_same(a, b) -> None:
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_shapes_dtypes_and_range():
    sampler = TaskSampler(coded_dataset(side=4), ways=5, shots=2, query_shots=3, seed=1)
    xs, ys, xq, yq = sampler.sample(7)
    assert xs.shape == (7, 10, 1, 4, 4) and xq.shape == (7, 15, 1, 4, 4)
    assert ys.shape == (7, 10) and yq.shape == (7, 15)
    assert xs.dtype == xq.dtype == torch.float32
    assert ys.dtype == yq.dtype == torch.int64
    assert 0.0 <= xs.min() and xs.max() <= 1.0
    assert xs.is_contiguous() and xq.is_contiguous()


@pytest.mark.parametrize(("ways", "shots", "query_shots"), [(5, 1, 15), (20, 5, 5), (3, 1, 19)])
def test_label_structure(ways: int, shots: int, query_shots: int):
    sampler = TaskSampler(coded_dataset(), ways, shots, query_shots, seed=3)
    xs, ys, xq, yq = sampler.sample(16)
    support_class, support_image = decode(xs)
    query_class, query_image = decode(xq)
    expected = torch.arange(ways)
    assert torch.equal(ys, expected.repeat_interleave(shots).expand(16, -1))
    assert torch.equal(yq, expected.repeat_interleave(query_shots).expand(16, -1))
    for b in range(16):
        label_class = support_class[b].view(ways, shots)[:, 0]
        assert len(set(label_class.tolist())) == ways  # distinct classes per task
        assert torch.equal(
            support_class[b].view(ways, shots), label_class[:, None].expand(-1, shots)
        )
        assert torch.equal(
            query_class[b].view(ways, -1), label_class[:, None].expand(-1, query_shots)
        )
        support = set(zip(support_class[b].tolist(), support_image[b].tolist(), strict=True))
        query = set(zip(query_class[b].tolist(), query_image[b].tolist(), strict=True))
        assert len(support) == ways * shots and len(query) == ways * query_shots
        assert not support & query


def test_batch_matches_task_indices():
    dataset = coded_dataset()
    sampler = TaskSampler(dataset, 4, 2, 3, seed=5)
    classes, picks = sampler.task_indices(range(10, 16))
    assert classes.shape == (6, 4) and picks.shape == (6, 4, 5)
    xs, _, xq, _ = sampler.sample_tasks(range(10, 16))
    images = torch.from_numpy(dataset.images[classes[..., None], picks]).float() / 255
    assert torch.equal(xs, images[:, :, :2].reshape(xs.shape))
    assert torch.equal(xq, images[:, :, 2:].reshape(xq.shape))


def test_fewer_query_shots_keep_the_support_set_and_the_first_query_images():
    """The papers' 1-query test is the first query image per class of the 15-query one, on the
    same classes and support images (docs/results.md, "The papers' query size")."""
    many = TaskSampler(coded_dataset(), ways=5, shots=1, query_shots=15, seed=2).sample_tasks(
        range(6)
    )
    for q in (1, 3):
        few = TaskSampler(coded_dataset(), ways=5, shots=1, query_shots=q, seed=2).sample_tasks(
            range(6)
        )
        assert torch.equal(few.xs, many.xs) and torch.equal(few.ys, many.ys)
        first = many.xq.view(6, 5, 15, *many.xq.shape[2:])[:, :, :q].reshape(few.xq.shape)
        assert torch.equal(few.xq, first)
        assert torch.equal(few.yq, many.yq.view(6, 5, 15)[:, :, :q].reshape(6, -1))


def test_class_to_label_assignment_is_shuffled_and_uniform():
    sampler = TaskSampler(coded_dataset(num_classes=10), 5, 1, 1, seed=0)
    classes, _ = sampler.task_indices(range(4000))
    assert (np.diff(classes, axis=1) < 0).any(axis=1).mean() > 0.9  # mostly not in sorted order
    for label in range(5):  # each label gets each class about 1/10 of the time
        counts = np.bincount(classes[:, label], minlength=10)
        assert counts.min() > 300 and counts.max() < 500


def test_same_seed_same_tasks_different_seed_different():
    dataset = coded_dataset()
    a = TaskSampler(dataset, 5, 1, 5, seed=11)
    b = TaskSampler(dataset, 5, 1, 5, seed=11)
    c = TaskSampler(dataset, 5, 1, 5, seed=12)
    for _ in range(3):
        batch_a, batch_b, batch_c = a.sample(8), b.sample(8), c.sample(8)
        assert_same(batch_a, batch_b)
        assert not torch.equal(batch_a.xs, batch_c.xs)
    assert not torch.equal(a.sample(8, step=0).xs, a.sample(8, step=1).xs)


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_tasks_do_not_depend_on_process_count(world_size: int):
    sampler = TaskSampler(coded_dataset(), 5, 2, 3, seed=7)
    for step in (0, 3):
        whole = sampler.sample(16, step=step)
        shards = [
            sampler.sample(16, step=step, rank=r, world_size=world_size) for r in range(world_size)
        ]
        assert all(len(shard.xs) == 16 // world_size for shard in shards)
        assert_same(whole, [torch.cat(parts) for parts in zip(*shards, strict=True)])
        # meta-step k holds the global tasks k * B, ..., k * B + B - 1
        assert_same(whole, sampler.sample_tasks(range(step * 16, step * 16 + 16)))


def test_single_task_is_independent_of_its_batch():
    sampler = TaskSampler(coded_dataset(), 5, 1, 2, seed=2)
    batch = sampler.sample(8, step=1)
    for i in (8, 13):
        one = sampler.sample_tasks([i])
        assert_same([t[i - 8] for t in batch], [t[0] for t in one])
    reordered = sampler.sample_tasks([13, 8])
    assert torch.equal(reordered.xs[0], batch.xs[5]) and torch.equal(reordered.xs[1], batch.xs[0])


def test_state_dict_resumes_the_same_tasks():
    dataset = coded_dataset()
    first = TaskSampler(dataset, 5, 1, 5, seed=4)
    for _ in range(3):
        first.sample(8)
    state = first.state_dict()
    assert state == {"seed": 4, "step": 3}
    expected = first.sample(8)
    resumed = TaskSampler(dataset, 5, 1, 5, seed=999)
    resumed.load_state_dict(state)
    assert_same(resumed.sample(8), expected)
    assert resumed.step == 4
    resumed.sample(8, step=10)
    assert resumed.state_dict()["step"] == 11


def test_a_task_pool_draws_meta_batches_from_its_tasks_only():
    sampler = TaskSampler(coded_dataset(), 5, 1, 2, seed=5, pool=6)
    used = set()
    for step in range(10):
        batch = sampler.sample(8, step=step)
        indices = sampler.pool_indices(range(step * 8, step * 8 + 8))
        assert indices.dtype == np.int64 and ((0 <= indices) & (indices < 6)).all()
        assert_same(batch, sampler.sample_tasks(indices))
        used |= set(indices.tolist())
    assert used == set(range(6))  # 80 draws with replacement reach every one of 6 tasks


def test_pool_draws_are_uniform_and_keyed_by_seed_and_position():
    sampler = TaskSampler(coded_dataset(), 5, 1, 2, seed=5, pool=4)
    counts = np.bincount(sampler.pool_indices(range(4000)), minlength=4)
    assert np.abs(counts - 1000).max() < 100  # binomial std 27
    again = TaskSampler(coded_dataset(), 5, 1, 2, seed=5, pool=4)
    assert np.array_equal(again.pool_indices([7, 3, 4000]), sampler.pool_indices([7, 3, 4000]))
    other = TaskSampler(coded_dataset(), 5, 1, 2, seed=6, pool=4)
    assert not np.array_equal(other.pool_indices(range(64)), sampler.pool_indices(range(64)))


@pytest.mark.parametrize("world_size", [1, 4])
def test_a_pooled_run_resumes_and_shards_to_the_same_tasks(world_size: int):
    dataset = coded_dataset()
    first = TaskSampler(dataset, 5, 1, 2, seed=3, pool=10)
    for _ in range(3):
        first.sample(8)
    expected = first.sample(8)
    resumed = TaskSampler(dataset, 5, 1, 2, seed=0, pool=10)
    resumed.load_state_dict({"seed": 3, "step": 3})
    shards = [resumed.sample(8, step=3, rank=r, world_size=world_size) for r in range(world_size)]
    assert_same(expected, [torch.cat(parts) for parts in zip(*shards, strict=True)])
    # Pool task j is task j of the sampler whatever the pool's size.
    bigger = TaskSampler(dataset, 5, 1, 2, seed=3, pool=1000)
    assert_same(bigger.sample_tasks([4]), first.sample_tasks([4]))


def random_dataset(num_classes: int = 12, per_class: int = 6, side: int = 4) -> ImageDataset:
    """Random images: no two alike, and none unchanged by a quarter turn."""
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (num_classes, per_class, 1, side, side), np.uint8))


def turned_tasks(sampler: TaskSampler, indices: list[int], keys: list[int]) -> TaskBatch:
    """The tasks, built image by image with np.rot90 from task_indices and quarter_turns."""
    classes, picks = sampler.task_indices(indices)
    turns = sampler.quarter_turns(keys)
    images = sampler.dataset.images
    parts = [[], []]
    for b in range(len(indices)):
        for j in range(sampler.ways):
            for n, image in enumerate(picks[b, j]):
                turned = np.rot90(images[classes[b, j], image], turns[b, j], axes=(1, 2))
                parts[n >= sampler.shots].append(turned.astype(np.float32) / np.float32(255))
    shape = (len(indices), -1, *images.shape[2:])
    xs, xq = (torch.from_numpy(np.stack(p)).view(shape) for p in parts)
    plain = TaskSampler(sampler.dataset, sampler.ways, sampler.shots, sampler.query_shots)
    _, ys, _, yq = plain.sample_tasks(indices)
    return TaskBatch(xs, ys, xq, yq)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_random_rotation_turns_each_class_of_a_draw(device: str):
    sampler = TaskSampler(random_dataset(), 3, 2, 2, seed=4, random_rotation=True, device=device)
    if device == "meta":
        xs, _, xq, _ = sampler.sample_tasks([0, 1])
        assert xs.shape == (2, 6, 1, 4, 4) and xq.shape == (2, 6, 1, 4, 4)
        return
    # By default a task's turns are keyed by its index; given keys, by those keys.
    assert_same(sampler.sample_tasks([3, 0, 7]), turned_tasks(sampler, [3, 0, 7], [3, 0, 7]))
    assert_same(sampler.sample_tasks([3, 3], [5, 9]), turned_tasks(sampler, [3, 3], [5, 9]))
    # The classes and images are those of the sampler without rotation.
    plain = TaskSampler(random_dataset(), 3, 2, 2, seed=4)
    assert np.array_equal(sampler.task_indices([3])[0], plain.task_indices([3])[0])
    turns = sampler.quarter_turns(range(4000))
    assert turns.shape == (4000, 3) and np.abs(np.bincount(turns.ravel()) - 3000).max() < 200


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_pool_task_drawn_twice_is_turned_anew(world_size: int):
    sampler = TaskSampler(random_dataset(), 3, 1, 1, seed=2, pool=3, random_rotation=True)
    positions = list(range(5 * 8, 6 * 8))
    tasks = sampler.pool_indices(positions).tolist()
    shards = [sampler.sample(8, step=5, rank=r, world_size=world_size) for r in range(world_size)]
    batch = TaskBatch(*(torch.cat(parts) for parts in zip(*shards, strict=True)))
    assert_same(batch, turned_tasks(sampler, tasks, positions))
    repeated = [p for p in range(8) if tasks[p] in tasks[:p]]  # 8 draws from a pool of 3
    turns = sampler.quarter_turns(positions)
    assert repeated and any(
        not np.array_equal(turns[p], turns[tasks.index(tasks[p])]) for p in repeated
    )


def test_task_generator_is_keyed_by_seed_and_index():
    draw = [task_generator(s, i).random(4) for s, i in [(0, 0), (0, 1), (1, 0), (0, 0)]]
    assert np.array_equal(draw[0], draw[3])
    assert not np.array_equal(draw[0], draw[1]) and not np.array_equal(draw[0], draw[2])
    task_generator(2**64 - 1, 2**64 - 1)
    with pytest.raises(ValueError, match="seed"):
        task_generator(-1, 0)
    with pytest.raises(ValueError, match="task index"):
        task_generator(0, 2**64)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_read_only_image_arrays_can_be_sampled(device: str):
    images = np.zeros((5, 4, 1, 2, 2), np.uint8)
    images.flags.writeable = False
    xs, *_ = TaskSampler(ImageDataset(images), 2, 1, 1, device=device).sample(3)
    assert xs.shape == (3, 2, 1, 2, 2)


def test_other_device_path_gathers_on_the_device():
    xs, ys, xq, _ = TaskSampler(coded_dataset(), 5, 1, 3, device="meta").sample(4)
    assert xs.device.type == ys.device.type == "meta"
    assert (
        xs.shape == (4, 5, 1, 3, 3) and xq.shape == (4, 15, 1, 3, 3) and xs.dtype == torch.float32
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    dataset = coded_dataset()
    cpu = TaskSampler(dataset, 5, 1, 3, seed=9).sample(4)
    gpu = TaskSampler(dataset, 5, 1, 3, seed=9, device="cuda").sample(4)
    assert all(t.is_cuda for t in gpu)
    assert_same(cpu, [t.cpu() for t in gpu])


def test_bad_arguments_raise_clear_errors():
    dataset = coded_dataset(num_classes=40, per_class=20)
    with pytest.raises(ValueError, match=r"ways=41 exceeds the 40 classes"):
        TaskSampler(dataset, 41, 1, 1)
    with pytest.raises(ValueError, match=r"6 \+ 15 = 21 exceeds the 20 images per class"):
        TaskSampler(dataset, 5, 6, 15)
    for ways, shots, query in [(0, 1, 1), (5, 0, 1), (5, 1, 0)]:
        with pytest.raises(ValueError, match="must be at least 1"):
            TaskSampler(dataset, ways, shots, query)
    with pytest.raises(ValueError, match="seed"):
        TaskSampler(dataset, 5, 1, 1, seed=-1)
    sampler = TaskSampler(dataset, 5, 1, 1)
    with pytest.raises(ValueError, match="multiple of world_size=3"):
        sampler.sample(8, world_size=3)
    with pytest.raises(ValueError, match="rank=2"):
        sampler.sample(8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="step"):
        sampler.sample(8, step=-1)
    with pytest.raises(ValueError, match="no task indices"):
        sampler.sample_tasks([])
    with pytest.raises(ValueError, match="pool must be an int >= 0"):
        TaskSampler(dataset, 5, 1, 1, pool=-1)
    with pytest.raises(ValueError, match="no task pool"):
        sampler.pool_indices([0])
    with pytest.raises(ValueError, match="2 rotation keys given for 1 tasks"):
        TaskSampler(dataset, 5, 1, 1, random_rotation=True).sample_tasks([0], [1, 2])
    with pytest.raises(ValueError, match="random_rotation needs a data set of square images"):
        wide = ImageDataset(np.zeros((6, 4, 1, 2, 3), np.uint8))
        TaskSampler(wide, 2, 1, 1, random_rotation=True)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(np.zeros((2, 3, 1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="3 class names given for 2 classes"):
        ImageDataset(np.zeros((2, 3, 1, 2, 2), np.uint8), ["a", "b", "c"])


def test_image_dataset_properties():
    dataset = ImageDataset(np.zeros((6, 4, 3, 5, 7), np.uint8), [f"c{i}" for i in range(6)])
    assert (dataset.num_classes, dataset.images_per_class, dataset.image_shape) == (6, 4, (3, 5, 7))
    assert len(dataset) == 6 and dataset.class_names[2] == "c2"
    assert "num_classes=6" in repr(dataset)
