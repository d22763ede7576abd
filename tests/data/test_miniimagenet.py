"""MiniImageNet on small generated JPEG folders in the distributed layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imaml.data.miniimagenet as mini
from imaml.data import DatasetError, DatasetNotFoundError, MiniImageNet, TaskSampler

CLASSES = {"train": 3, "val": 2, "test": 2}
PER_CLASS = 6


def color(split: str, label: int, index: int) -> tuple[int, int, int]:
    """A solid colour unique to each image of the fake data set."""
    return (40 * label + 10, 30 * index + 5, 100 + 60 * list(CLASSES).index(split))


def write_fake(root: Path) -> Path:
    """Write images/*.jpg and train/val/test.csv; one image per split is not 84x84."""
    (root / "images").mkdir(parents=True)
    for split, num_classes in CLASSES.items():
        rows = ["filename,label"]
        for label in range(num_classes):
            wnid = f"n{list(CLASSES).index(split)}{label:07d}"
            for index in range(PER_CLASS):
                name = f"{wnid}{index:08d}.jpg"
                size = (120, 100) if label == index == 1 else (84, 84)
                image = Image.new("RGB", size, color(split, label, index))
                image.save(root / "images" / name, quality=95)
                rows.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    return write_fake(tmp_path / "mini")


def listing(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_loads_each_split_as_uint8_rgb(fake_root: Path, tmp_path: Path):
    before = listing(fake_root)
    for split, num_classes in CLASSES.items():
        data = MiniImageNet(fake_root, split, cache_dir=tmp_path / "cache")
        assert data.images.shape == (num_classes, PER_CLASS, 3, 84, 84)
        assert data.images.dtype == np.uint8
        assert (data.num_classes, data.images_per_class, data.image_shape) == (
            num_classes,
            PER_CLASS,
            (3, 84, 84),
        )
        index = list(CLASSES).index(split)
        assert data.class_names == tuple(f"n{index}{k:07d}" for k in range(num_classes))
        for label in range(num_classes):
            for i in range(PER_CLASS):
                pixel = data.images[label, i, :, 42, 42].astype(int)
                assert np.abs(pixel - color(split, label, i)).max() <= 3
    assert listing(fake_root) == before  # the root is never written to
    assert len(list((tmp_path / "cache" / "miniimagenet").glob("*.npy"))) == 3


def test_second_load_uses_the_memory_mapped_cache(
    fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    first = MiniImageNet(fake_root, "train", cache_dir=tmp_path)

    def fail(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(mini, "_decode", fail)
    second = MiniImageNet(fake_root, "train", cache_dir=tmp_path)
    assert isinstance(second.images, np.memmap)
    assert np.array_equal(first.images, second.images)
    # a changed image invalidates the cache
    image = next((fake_root / "images").iterdir())
    os.utime(image, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded"):
        MiniImageNet(fake_root, "train", cache_dir=tmp_path)


def test_sampler_draws_tasks(fake_root: Path, tmp_path: Path):
    data = MiniImageNet(fake_root, "train", cache_dir=tmp_path)
    xs, ys, xq, yq = TaskSampler(data, ways=2, shots=1, query_shots=5, seed=0).sample(4)
    assert xs.shape == (4, 2, 3, 84, 84) and xq.shape == (4, 10, 3, 84, 84)
    assert ys.shape == (4, 2) and yq.shape == (4, 10)


def test_missing_files_raise_with_instructions(fake_root: Path, tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="mini-imagenet-tools"):
        MiniImageNet(tmp_path / "nowhere", "train", cache_dir=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"download=True.*no stable official URL"):
        MiniImageNet(tmp_path / "nowhere", "train", download=True, cache_dir=tmp_path)
    (fake_root / "val.csv").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"val\.csv"):
        MiniImageNet(fake_root, "val", cache_dir=tmp_path)
    missing = sorted((fake_root / "images").glob("n2*.jpg"))[3]
    missing.unlink()
    with pytest.raises(DatasetNotFoundError, match=rf"1 images .*missing.*{missing.name}"):
        MiniImageNet(fake_root, "test", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown mini-ImageNet split 'training'"):
        MiniImageNet(fake_root, "training", cache_dir=tmp_path)


def test_download_is_not_needed_when_the_files_are_there(fake_root: Path, tmp_path: Path):
    assert MiniImageNet(fake_root, "val", download=True, cache_dir=tmp_path).num_classes == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,wnid\na.jpg,n1\n", "expected the header 'filename,label'"),
        ("", "expected the header"),
        ("filename,label\n", "lists no images"),
        ("filename,label\na.jpg\n", "line 2"),
        ("filename,label\na.jpg,n1\nb.jpg,n1\nc.jpg,n2\n", "equally many images"),
    ],
)
def test_malformed_csv(fake_root: Path, tmp_path: Path, content: str, message: str):
    (fake_root / "train.csv").write_text(content)
    with pytest.raises(DatasetError, match=message):
        MiniImageNet(fake_root, "train", cache_dir=tmp_path)


def test_corrupt_image_names_the_file(fake_root: Path, tmp_path: Path):
    broken = sorted((fake_root / "images").glob("n0*.jpg"))[4]
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DatasetError, match=re.escape(broken.name)):
        MiniImageNet(fake_root, "train", cache_dir=tmp_path)


def test_unwritable_cache_warns_and_still_loads(fake_root: Path, tmp_path: Path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.warns(UserWarning, match="could not write the mini-ImageNet cache"):
        data = MiniImageNet(fake_root, "val", cache_dir=not_a_folder)
    assert data.images.shape == (2, PER_CLASS, 3, 84, 84)
