"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle (2017) split, as distributed.

Layout of ``root``: ``images/<filename>.jpg`` plus ``train.csv``, ``val.csv`` and ``test.csv``, each
with header ``filename,label`` (64 / 16 / 20 classes of 600 images). Images are converted to RGB,
resized to 84x84 with LANCZOS when they are not already that size, and cached under ``cache_dir``
as one uint8 ``.npy`` per split, memory-mapped on later loads. Nothing is unpickled, ever.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from imaml.data._io import (
    DatasetError,
    DatasetNotFoundError,
    cache_key,
    default_cache_dir,
    file_identity,
    write_atomic,
)
from imaml.data.base import ImageDataset

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 84

HOW_TO_GET = (
    "mini-ImageNet cannot be downloaded automatically: its images derive from ImageNet and have "
    "no stable official URL. Get the Ravi & Larochelle version (images/*.jpg with train.csv, "
    "val.csv, test.csv) from the archive linked in github.com/yaoyao-liu/mini-imagenet-tools, or "
    "rebuild it from ILSVRC2012_img_train.tar with that repository's tool, and point root at the "
    "folder holding images/ and the CSVs. learn2learn's .pkl files are not supported (they would "
    "have to be unpickled)."
)


def read_split_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read a ``filename,label`` CSV into (class labels in first-seen order, filenames per class).

    Raises:
        DatasetNotFoundError: the file is missing.
        DatasetError: wrong header, malformed row, no rows, or classes of unequal size.
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"mini-ImageNet split file {path} not found. {HOW_TO_GET}")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["filename", "label"]:
        header = ",".join(rows[0]) if rows else "nothing"
        raise DatasetError(f"{path}: expected the header 'filename,label', found {header!r}")
    by_label: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or not all(row):
            raise DatasetError(f"{path}, line {line}: expected 'filename,label', found {row}")
        by_label.setdefault(row[1], []).append(row[0])
    if not by_label:
        raise DatasetError(f"{path} lists no images")
    sizes = {label: len(files) for label, files in by_label.items()}
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"{path}: classes must have equally many images, found {sizes}")
    return list(by_label), list(by_label.values())


def _decode(path: Path) -> np.ndarray:
    """Read one image as uint8 (3, 84, 84)."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except FileNotFoundError as err:
        raise DatasetNotFoundError(f"mini-ImageNet image {path} not found. {HOW_TO_GET}") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot read {path} ({err}); the file is corrupt") from err
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return np.asarray(rgb).transpose(2, 0, 1)


def _load_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """Memory-map a cached array (copy-on-write), or None if absent, unreadable or misshapen."""
    try:
        images = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return images if images.shape == shape and images.dtype == np.uint8 else None


class MiniImageNet(ImageDataset):
    """One split of mini-ImageNet as uint8 84x84 RGB images, cached on first load.

    Args:
        root: folder holding ``images/`` and ``train.csv`` / ``val.csv`` / ``test.csv``;
            only read.
        split: one of ``"train"``, ``"val"``, ``"test"``.
        download: not possible for this data set: when the files are missing, the error explains
            how to obtain them, whatever this flag says.
        cache_dir: where the decoded split is cached (default :func:`default_cache_dir`).

    Attributes:
        images: uint8 (num_classes, images_per_class, 3, 84, 84), memory-mapped from the cache;
            classes in order of first appearance in the CSV (600 images each in the real data).
        class_names: the WordNet id of each class.

    Raises:
        ValueError: unknown split.
        DatasetNotFoundError: the CSV or a listed image is missing.
        DatasetError: a malformed CSV or a corrupt image.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        download: bool = False,
        cache_dir: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown mini-ImageNet split {split!r}; expected one of {SPLITS}")
        root = Path(root).expanduser()
        if download and not (root / f"{split}.csv").is_file():
            raise DatasetNotFoundError(f"download=True: {HOW_TO_GET}")
        csv_path = root / f"{split}.csv"
        labels, files = read_split_csv(csv_path)
        folder = root / "images"
        every = [name for names in files for name in names]
        try:
            source = [file_identity(os.path.join(folder, name), name) for name in every]
        except FileNotFoundError as err:
            missing = sum(not (folder / name).is_file() for name in every)
            raise DatasetNotFoundError(
                f"{missing} images listed in {csv_path} are missing from {folder}, "
                f"e.g. {err.filename}. {HOW_TO_GET}"
            ) from err
        key = cache_key(
            dataset="miniimagenet",
            split=split,
            size=IMAGE_SIZE,
            source=source,
            csv=file_identity(csv_path),
        )
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache_file = cache / "miniimagenet" / f"{split}-{IMAGE_SIZE}px-{key}.npy"
        shape = (len(labels), len(files[0]), 3, IMAGE_SIZE, IMAGE_SIZE)
        images = _load_cache(cache_file, shape)
        if images is None:
            images = np.empty(shape, np.uint8)
            flat = images.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
            desc = f"mini-ImageNet {split}"
            for i, name in enumerate(tqdm(every, desc=desc, unit="img", disable=None, leave=False)):
                flat[i] = _decode(folder / name)
            try:
                write_atomic(cache_file, lambda f: np.save(f, images))
            except OSError as err:
                warnings.warn(
                    f"could not write the mini-ImageNet cache {cache_file} ({err}); the next "
                    "load will decode every image again",
                    stacklevel=2,
                )
        super().__init__(images, labels)
        self.split = split
