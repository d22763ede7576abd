"""Omniglot: the Vinyals split, the three source formats, the cache, downloads and bad input.

Tests marked ``real`` read the offline copy at ``$IMAML_DATA/omniglot`` (the npz pair,
characters.tsv, the reconstructed zips and the Vinyals split files); the others build small
archives of their own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import urllib.error
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imaml.data._io as data_io
import imaml.data.omniglot as omniglot
from imaml.data import (
    ChecksumError,
    DatasetError,
    DatasetNotFoundError,
    Omniglot,
    TaskSampler,
    default_cache_dir,
)
from imaml.data._io import RemoteFile

DATA = os.environ.get("IMAML_DATA")
OMNIGLOT = Path(DATA).resolve() / "omniglot" if DATA else Path("/nonexistent")
real = pytest.mark.skipif(
    not (OMNIGLOT / "images_background.npz").is_file(),
    reason="real Omniglot absent: set IMAML_DATA to the folder holding omniglot/",
)
SPLITS = ("train", "val", "test", "trainval")
CLASSES = {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
CHARACTERS = {"train": 1028, "val": 172, "test": 423, "trainval": 1200}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of both sets at 28 px, built once per session from the npz pair (a few seconds)."""
    path = tmp_path_factory.mktemp("omniglot-cache")
    Omniglot(OMNIGLOT, "trainval", cache_dir=path)
    return path


@pytest.fixture(scope="session")
def splits(cache_dir: Path) -> dict[str, Omniglot]:
    return {split: Omniglot(OMNIGLOT, split, cache_dir=cache_dir) for split in SPLITS}


def listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def png(ink_at: int = 0) -> bytes:
    """A 105x105 mode-1 drawing (white background) with one ink row, PNG-encoded."""
    image = Image.new("1", (105, 105), 1)
    image.paste(0, (10, ink_at, 90, ink_at + 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes], stored: bool = False) -> Path:
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(path, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# --- the split ---------------------------------------------------------------------------------


@real
def test_split_sizes(splits: dict[str, Omniglot], cache_dir: Path):
    for split, data in splits.items():
        assert data.num_classes == CLASSES[split] == len(data.class_names)
        assert len(data.character_ids) == CHARACTERS[split] == len(data.alphabets)
        assert data.images.shape == (CLASSES[split], 20, 1, 28, 28)
        assert data.images.dtype == np.uint8
        assert (data.images_per_class, data.image_shape) == (20, (1, 28, 28))
        plain = Omniglot(OMNIGLOT, split, rotations=False, cache_dir=cache_dir)
        assert plain.num_classes == CHARACTERS[split]
        assert np.array_equal(plain.images, data.images[::4])
        assert plain.class_names == tuple(name[: -len("/rot000")] for name in data.class_names[::4])


@real
def test_test_characters_are_disjoint_from_train_and_val(splits: dict[str, Omniglot]):
    ids = {split: set(data.character_ids.tolist()) for split, data in splits.items()}
    assert ids["trainval"] == set(range(1, 1201))
    assert ids["test"] == set(range(1201, 1624))
    assert not ids["test"] & (ids["train"] | ids["val"])
    assert ids["train"] | ids["val"] == ids["trainval"] and not ids["train"] & ids["val"]
    assert set(splits["val"].alphabets) == omniglot.VAL_ALPHABETS
    assert set(splits["test"].class_character_ids.tolist()) == ids["test"]


def test_random_split_partitions_all_characters_by_its_seed():
    ids = {split: omniglot.random_split_ids(split, seed=7) for split in SPLITS}
    for split, split_ids in ids.items():
        assert len(split_ids) == CHARACTERS[split] == len(set(split_ids.tolist()))
        assert np.array_equal(split_ids, np.sort(split_ids))
        assert np.array_equal(split_ids, omniglot.random_split_ids(split, seed=7))
    assert np.array_equal(np.sort(np.concatenate([ids["train"], ids["val"]])), ids["trainval"])
    everything = np.sort(np.concatenate([ids["trainval"], ids["test"]]))
    assert np.array_equal(everything, np.arange(1, 1624))
    # a seeded permutation, not the Vinyals ids: test draws from both sets
    assert not np.array_equal(ids["test"], omniglot.random_split_ids("test", seed=8))
    assert ids["test"].min() <= 964 < ids["test"].max()


@real
def test_random_split_tests_unseen_characters_of_training_alphabets(
    splits: dict[str, Omniglot], cache_dir: Path
):
    random = {
        split: Omniglot(OMNIGLOT, split, cache_dir=cache_dir, character_split="random")
        for split in ("trainval", "test")
    }
    test, trainval = random["test"], random["trainval"]
    assert test.character_split == "random" and test.num_classes == CLASSES["test"]
    assert np.array_equal(test.character_ids, omniglot.random_split_ids("test", seed=0))
    assert not set(test.character_ids.tolist()) & set(trainval.character_ids.tolist())
    # MAML's protocol: the test characters' alphabets are training alphabets (Vinyals: 1 of 13)
    assert set(test.alphabets) <= set(trainval.alphabets)
    assert len(set(splits["test"].alphabets) & set(splits["trainval"].alphabets)) == 1
    # the same images as in the Vinyals split, class by class
    vinyals = {name: i for i, name in enumerate(splits["test"].class_names)}
    shared = [(i, vinyals[name]) for i, name in enumerate(test.class_names) if name in vinyals]
    assert shared
    assert all(np.array_equal(test.images[i], splits["test"].images[j]) for i, j in shared)


@real
def test_classes_match_the_vinyals_split_files(splits: dict[str, Omniglot]):
    for split, data in splits.items():
        lines = (OMNIGLOT / "splits" / "vinyals" / f"{split}.txt").read_text().split()
        assert len(lines) == CLASSES[split]
        assert set(data.class_names) == set(lines)


@real
def test_alphabet_table_matches_characters_tsv():
    with (OMNIGLOT / "characters.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 1623
    ids = np.array([int(row["global_id"]) for row in rows])
    alphabets, folders = omniglot.table_names(ids)
    for row, alphabet, folder in zip(rows, alphabets, folders, strict=True):
        assert (alphabet, folder) == (row["alphabet"], row["character"])
        # row i of images_background.npz is id i + 1, of images_evaluation.npz id 964 + i + 1
        first = omniglot.SET_IDS[row["set"]][0]
        assert int(row["global_id"]) == first + int(row["index_in_npz"])
        in_val = row["alphabet"] in omniglot.VAL_ALPHABETS
        split = "test" if int(row["global_id"]) > 1200 else "val" if in_val else "train"
        assert row["vinyals_split"] == split
    firsts = [first for _, first, _ in omniglot.ALPHABETS]
    counts = [count for _, _, count in omniglot.ALPHABETS]
    assert firsts == list(np.cumsum([1, *counts[:-1]])) and sum(counts) == 1623


# --- pixels ------------------------------------------------------------------------------------


@real
def test_pixels_are_lanczos_resized_with_bright_ink(splits: dict[str, Omniglot]):
    with np.load(OMNIGLOT / "images_evaluation.npz") as npz:
        raw = npz["images"][1201 - 965 : 1201 - 965 + 3]  # the first 3 test characters
    data = splits["test"]
    for char in range(3):
        for drawer in (0, 19):
            white = Image.fromarray(raw[char, drawer].astype(np.uint8) * 255)
            expected = 255 - np.asarray(white.resize((28, 28), Image.LANCZOS))
            assert np.array_equal(data.images[4 * char, drawer, 0], expected)
    assert np.median(data.images) == 0 and data.images.max() == 255
    for k in range(4):  # class 4c + k is character c turned k * 90 degrees counterclockwise
        assert np.array_equal(data.images[k], np.rot90(data.images[0], k, axes=(2, 3)))
        assert data.class_rotations[k] == 90 * k


@real
def test_zip_and_npz_sources_give_the_same_data(cache_dir: Path, tmp_path: Path):
    root = tmp_path / "zips"
    root.mkdir()
    (root / "images_evaluation.zip").symlink_to(OMNIGLOT / "images_evaluation_reconstructed.zip")
    assert omniglot.find_source(root, "evaluation") == root / "images_evaluation.zip"
    from_zip = omniglot.load_set(root, "evaluation", 28, False, tmp_path / "cache")
    from_npz = omniglot.load_set(OMNIGLOT, "evaluation", 28, False, cache_dir)
    for field in omniglot._Characters._fields:  # alphabets and folders: layout vs built-in table
        assert np.array_equal(getattr(from_zip, field), getattr(from_npz, field)), field


@real
def test_extracted_folder_source(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from_npz = omniglot.load_set(OMNIGLOT, "background", 28, False, cache_dir)
    # Only the 26 Arcadian characters (ids 1-26), to keep the test fast.
    with zipfile.ZipFile(OMNIGLOT / "images_background_reconstructed.zip") as archive:
        names = [n for n in archive.namelist() if n.startswith("images_background/Arcadian/")]
        archive.extractall(tmp_path, members=names)
    assert omniglot.find_source(tmp_path, "background") == tmp_path / "images_background"
    monkeypatch.setitem(omniglot.SET_IDS, "background", (1, 26))
    from_folder = omniglot._read_folder(tmp_path / "images_background", "background", 28)
    for field in omniglot._Characters._fields:
        assert np.array_equal(getattr(from_folder, field), getattr(from_npz, field)[:26]), field


# --- the cache ---------------------------------------------------------------------------------


@real
def test_cache_is_reused_and_invalidated_when_the_source_changes(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy2(OMNIGLOT / "images_evaluation.npz", root)  # same name, size and mtime
    calls: list[Path] = []
    read = omniglot._READERS[".npz"]

    def counting(path: Path, set_name: str, size: int) -> omniglot._Characters:
        calls.append(path)
        return read(path, set_name, size)

    monkeypatch.setitem(omniglot._READERS, ".npz", counting)
    cached = Omniglot(root, "test", cache_dir=cache_dir)
    assert calls == []  # served from the session cache without reading the npz
    os.utime(root / "images_evaluation.npz", ns=(10**18, 10**18))
    before = listing(root)
    reread = Omniglot(root, "test", cache_dir=cache_dir)
    assert calls == [root / "images_evaluation.npz"]
    assert np.array_equal(reread.images, cached.images)
    assert listing(root) == before  # nothing written into the root
    Omniglot(root, "test", cache_dir=cache_dir)
    assert len(calls) == 1
    assert len(list((cache_dir / "omniglot").glob("evaluation-28px-*.npz"))) == 2
    assert not list((cache_dir / "omniglot").glob("*.tmp"))


@real
def test_shared_root_is_only_read(splits: dict[str, Omniglot], cache_dir: Path):
    before = listing(OMNIGLOT)
    Omniglot(OMNIGLOT, "val", cache_dir=cache_dir)
    assert listing(OMNIGLOT) == before
    assert all(not str(p).startswith(str(OMNIGLOT)) for p in cache_dir.rglob("*"))


def test_unreadable_cache_files_count_as_misses(tmp_path: Path):
    cache = tmp_path / "c.npz"
    assert data_io.load_arrays(cache, ["images"]) is None
    cache.write_bytes(b"not an npz")
    assert data_io.load_arrays(cache, ["images"]) is None
    data_io.save_arrays(cache, {"images": np.arange(3)})
    assert np.array_equal(data_io.load_arrays(cache, ["images"])["images"], np.arange(3))
    assert data_io.load_arrays(cache, ["labels"]) is None
    cache.write_bytes(cache.read_bytes()[:-40])
    assert data_io.load_arrays(cache, ["images"]) is None
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary files left


def test_failed_cache_write_leaves_no_temporary_file(tmp_path: Path):
    def fail(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        data_io.write_atomic(tmp_path / "c.npz", fail)
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "imaml"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "imaml"


# --- sampling real Omniglot --------------------------------------------------------------------


@real
def test_sampled_omniglot_tasks(splits: dict[str, Omniglot]):
    data = splits["test"]
    sampler = TaskSampler(data, ways=5, shots=1, query_shots=15, seed=0)
    xs, ys, xq, yq = sampler.sample(32)
    assert xs.shape == (32, 5, 1, 28, 28) and xq.shape == (32, 75, 1, 28, 28)
    assert torch.equal(ys, torch.arange(5).expand(32, -1))
    assert torch.equal(yq, torch.arange(5).repeat_interleave(15).expand(32, -1))
    classes, picks = sampler.task_indices(range(32))
    images = torch.from_numpy(data.images[classes[..., None], picks]).float() / 255
    assert torch.equal(xs, images[:, :, :1].reshape(xs.shape))
    assert torch.equal(xq, images[:, :, 1:].reshape(xq.shape))
    assert (data.class_character_ids[classes] > 1200).all()
    again = TaskSampler(data, 5, 1, 15, seed=0).sample(32, step=0)
    assert torch.equal(again.xq, xq)
    shards = [sampler.sample(32, step=0, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat([s.xq for s in shards]), xq)
    assert not torch.equal(TaskSampler(data, 5, 1, 15, seed=1).sample(32, step=0).xq, xq)


@real
def test_too_many_ways_or_shots(splits: dict[str, Omniglot]):
    with pytest.raises(ValueError, match="ways=689 exceeds the 688 classes"):
        TaskSampler(splits["val"], 689, 1, 1)
    with pytest.raises(ValueError, match="5 \\+ 16 = 21 exceeds the 20 images per class"):
        TaskSampler(splits["val"], 5, 5, 16)


# --- bad input ---------------------------------------------------------------------------------


def test_missing_set_says_what_to_put_where(tmp_path: Path):
    with pytest.raises(DatasetNotFoundError, match=r"images_evaluation\.zip") as error:
        Omniglot(tmp_path, "test", cache_dir=tmp_path)
    assert isinstance(error.value, FileNotFoundError) and str(tmp_path) in str(error.value)
    with pytest.raises(ValueError, match="unknown Omniglot split 'validation'"):
        Omniglot(tmp_path, "validation")
    with pytest.raises(ValueError, match="image_size"):
        Omniglot(tmp_path, "test", image_size=0)
    with pytest.raises(ValueError, match="unknown Omniglot character split 'alphabet'"):
        Omniglot(tmp_path, "test", character_split="alphabet")


def test_truncated_zip(tmp_path: Path):
    good = write_zip(
        tmp_path / "good.zip", {f"e/A/character01/0965_{d:02d}.png": png() for d in (1, 2)}
    )
    (tmp_path / "images_evaluation.zip").write_bytes(good.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"images_evaluation\.zip is not a readable zip"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_corrupt_member(tmp_path: Path):
    path = write_zip(
        tmp_path / "images_evaluation.zip",
        {"images_evaluation/A/character01/0965_01.png": png()},
        stored=True,
    )
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = bytes(20)
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"images_evaluation\.zip: cannot read .*0965_01\.png"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_incomplete_and_misplaced_drawings(tmp_path: Path):
    write_zip(tmp_path / "images_evaluation.zip", {"x/Angelic/character01/0965_01.png": png()})
    with pytest.raises(DatasetError, match="incomplete: 13179 of 13180 evaluation drawings"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")
    write_zip(tmp_path / "images_evaluation.zip", {"x/Arcadian/character01/0001_01.png": png()})
    with pytest.raises(DatasetError, match=r"unexpected drawing .*0001_01\.png"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")
    write_zip(
        tmp_path / "images_evaluation.zip",
        {"x/A/character01/0965_01.png": png(), "x/B/character01/0965_02.png": png()},
    )
    with pytest.raises(DatasetError, match="0965 is in two folders"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")
    small = io.BytesIO()
    Image.new("1", (50, 50), 1).save(small, format="PNG")
    write_zip(tmp_path / "images_evaluation.zip", {"x/A/character01/0965_01.png": small.getvalue()})
    with pytest.raises(DatasetError, match=r"0965_01\.png is \(50, 50\), expected 105x105"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")


def test_bad_npz(tmp_path: Path):
    (tmp_path / "images_evaluation.npz").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"images_evaluation\.npz: cannot read"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")
    np.savez(tmp_path / "images_evaluation.npz", images=np.zeros((3, 20, 105, 105), bool))
    with pytest.raises(DatasetError, match=r"expected bool \(659, 20, 105, 105\)"):
        Omniglot(tmp_path, "test", cache_dir=tmp_path / "cache")


# --- downloads ---------------------------------------------------------------------------------


class Served(io.BytesIO):
    """A fake HTTP response serving bytes, optionally cut after ``cut`` bytes."""

    def __init__(self, data: bytes, cut: int | None = None) -> None:
        super().__init__(data)
        self.cut = cut

    def read(self, size: int | None = -1) -> bytes:
        if self.cut is not None and self.tell() >= self.cut:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, 1000) if size and size > 0 else 1000)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., bytes]:
    """Serve a small (incomplete) evaluation zip at the official URL; returns its bytes.

    ``interrupted``: the connection drops halfway; ``sha256``: the published checksum to check.
    """
    archive = write_zip(tmp_path / "served.zip", {"x/Angelic/character01/0965_01.png": png()})
    data = archive.read_bytes()

    def start(interrupted: bool = False, sha256: str | None = None) -> bytes:
        remote = omniglot.ARCHIVES["evaluation"]
        digest = sha256 or hashlib.sha256(data).hexdigest()
        monkeypatch.setitem(
            omniglot.ARCHIVES, "evaluation", RemoteFile(remote.name, remote.url, len(data), digest)
        )

        def urlopen(url: str, timeout: float) -> Served:
            assert url == remote.url
            return Served(data, len(data) // 2 if interrupted else None)

        monkeypatch.setattr(data_io, "urlopen", urlopen)
        return data

    return start


def test_download_verifies_and_renames(serve: Callable[..., bytes], tmp_path: Path):
    data = serve()
    root = tmp_path / "root"
    # the served archive is verified, renamed and then read (and found incomplete)
    with pytest.raises(DatasetError, match="incomplete"):
        Omniglot(root, "test", download=True, cache_dir=tmp_path / "cache")
    assert [p.name for p in root.iterdir()] == ["images_evaluation.zip"]
    assert (root / "images_evaluation.zip").read_bytes() == data


def test_download_with_wrong_checksum_leaves_nothing(serve: Callable[..., bytes], tmp_path: Path):
    serve(sha256="0" * 64)
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match="does not match its published checksum"):
        Omniglot(root, "test", download=True, cache_dir=tmp_path / "cache")
    assert list(root.iterdir()) == []


def test_interrupted_download_leaves_nothing(serve: Callable[..., bytes], tmp_path: Path):
    serve(interrupted=True)
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="connection reset"):
        Omniglot(root, "test", download=True, cache_dir=tmp_path / "cache")
    assert list(root.iterdir()) == []


def test_download_without_network_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def offline(url: str, timeout: float):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(data_io, "urlopen", offline)
    with pytest.raises(DatasetError, match=r"Without network, put images_evaluation\.zip") as error:
        Omniglot(tmp_path / "root", "test", download=True, cache_dir=tmp_path / "cache")
    assert omniglot.ARCHIVES["evaluation"].url in str(error.value)


@real
def test_archive_checksums_are_the_published_ones():
    readme = (OMNIGLOT / "README.md").read_text()
    for remote in omniglot.ARCHIVES.values():
        assert remote.sha256 in readme and f"{remote.size:,}" in readme and remote.url in readme
