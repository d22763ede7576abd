"""Omniglot (Lake et al. 2015) with the Vinyals et al. (2016) or a random character split.

Sources, looked up in ``root`` per set (``background`` = character ids 1-964, ``evaluation`` =
965-1623), first match wins:

1. ``images_<set>.zip``: the official archive, with the layout
   ``images_<set>/<Alphabet>/characterNN/IIII_DD.png`` (IIII = global character id, DD = drawer);
2. ``images_<set>/``: that archive extracted;
3. ``images_<set>.npz``: bool array ``images`` of shape (characters, 20, 105, 105), True =
   background, row ``i`` holding global id ``first_id + i`` (the github.com/bitsandscraps/omniglot
   conversion).

For zips and folders the alphabet of each character comes from the folder layout; npz files carry
no names, so they are named from :data:`ALPHABETS`, a table of the 50 alphabets' id ranges built
once from the upstream id table (``characters.tsv``) and shipped as a constant.

Pixels: each 105x105 drawing is resized with PIL's antialiased LANCZOS filter in mode L (as the
iMAML code does) and stored with **bright ink on a dark background** (ink 255, background 0; after
the sampler's scaling, ink 1.0 and background 0.0), the convention of MAML's and ProtoNets' Omniglot
code and of MNIST. With BatchNorm after the first convolution the polarity does not affect accuracy.
The resized set is cached as uint8 under ``cache_dir`` (never in ``root``), keyed by the source
files' names, sizes and mtimes and by the image size.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from imaml.data._io import (
    DatasetError,
    DatasetNotFoundError,
    RemoteFile,
    cache_key,
    default_cache_dir,
    download,
    file_identity,
    folder_identity,
    load_arrays,
    save_arrays,
)
from imaml.data.base import ImageDataset

#: The 50 alphabets in global-id order: (folder name, first character id, number of characters).
#: Character ``characterNN`` of an alphabet has id ``first_id + NN - 1``.
ALPHABETS: tuple[tuple[str, int, int], ...] = (
    ("Arcadian", 1, 26),
    ("Armenian", 27, 41),
    ("Asomtavruli_(Georgian)", 68, 40),
    ("Balinese", 108, 24),
    ("Bengali", 132, 46),
    ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 178, 14),
    ("Braille", 192, 26),
    ("Cyrillic", 218, 33),
    ("Early_Aramaic", 251, 22),
    ("Syriac_(Estrangelo)", 273, 23),
    ("Anglo-Saxon_Futhorc", 296, 29),
    ("Futurama", 325, 26),
    ("Grantha", 351, 43),
    ("Greek", 394, 24),
    ("Gujarati", 418, 48),
    ("Hebrew", 466, 22),
    ("Japanese_(hiragana)", 488, 52),
    ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 540, 16),
    ("Malay_(Jawi_-_Arabic)", 556, 40),
    ("Japanese_(katakana)", 596, 47),
    ("Korean", 643, 40),
    ("Latin", 683, 26),
    ("Alphabet_of_the_Magi", 709, 20),
    ("Mkhedruli_(Georgian)", 729, 41),
    ("Burmese_(Myanmar)", 770, 34),
    ("N_Ko", 804, 33),
    ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 837, 14),
    ("Sanskrit", 851, 42),
    ("Tagalog", 893, 17),
    ("Tifinagh", 910, 55),
    ("Angelic", 965, 20),
    ("Atemayar_Qelisayer", 985, 26),
    ("Atlantean", 1011, 26),
    ("Aurek-Besh", 1037, 26),
    ("Avesta", 1063, 26),
    ("Ge_ez", 1089, 26),
    ("Glagolitic", 1115, 45),
    ("Gurmukhi", 1160, 45),
    ("Kannada", 1205, 41),
    ("Keble", 1246, 26),
    ("Malayalam", 1272, 47),
    ("Manipuri", 1319, 40),
    ("Mongolian", 1359, 30),
    ("Old_Church_Slavonic_(Cyrillic)", 1389, 45),
    ("Oriya", 1434, 46),
    ("Syriac_(Serto)", 1480, 23),
    ("Sylheti", 1503, 28),
    ("Tengwar", 1531, 25),
    ("Tibetan", 1556, 42),
    ("ULOG", 1598, 26),
)

#: Character ids per set, inclusive.
SET_IDS: dict[str, tuple[int, int]] = {"background": (1, 964), "evaluation": (965, 1623)}

#: Vinyals split: characters with ids up to this are train+val, the rest are test.
LAST_TRAINVAL_ID = 1200

#: Alphabets whose train+val characters form the validation split (ProtoNets / torchmeta).
VAL_ALPHABETS = frozenset(
    {"Armenian", "Bengali", "Early_Aramaic", "Hebrew", "Mkhedruli_(Georgian)"}
)

#: The character splits: ``vinyals`` (fixed lists) and ``random`` (see :func:`random_split_ids`).
CHARACTER_SPLITS = ("vinyals", "random")

#: Random split: characters held out of ``trainval`` for ``val`` (as many as the Vinyals split).
RANDOM_VAL_CHARACTERS = 172

#: Which sets each Vinyals split needs (the validation alphabets are all background alphabets).
SPLIT_SETS: dict[str, tuple[str, ...]] = {
    "train": ("background", "evaluation"),
    "val": ("background",),
    "test": ("evaluation",),
    "trainval": ("background", "evaluation"),
}

#: The official archives (github.com/brendenlake/omniglot, folder python/).
ARCHIVES: dict[str, RemoteFile] = {
    "background": RemoteFile(
        "images_background.zip",
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_background.zip",
        9_464_212,
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    ),
    "evaluation": RemoteFile(
        "images_evaluation.zip",
        "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/images_evaluation.zip",
        6_462_886,
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    ),
}

DRAWERS = 20
SOURCE_SIZE = 105
_PNG = re.compile(r"(?:.*/)?([^/]+)/(character\d+)/(\d{4})_(\d{2})\.png")
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, zlib.error, zipfile.BadZipFile)


class _Characters(NamedTuple):
    """One set's characters after resizing; n = number of characters."""

    images: np.ndarray  # (n, 20, S, S) uint8, ink 255
    ids: np.ndarray  # (n,) int64 global character ids
    alphabets: np.ndarray  # (n,) str
    folders: np.ndarray  # (n,) str, "characterNN"


def random_split_ids(split: str, seed: int) -> np.ndarray:
    """Global character ids of ``split`` in the random character split drawn with ``seed``.

    MAML's and iMAML's code shuffle all 1623 characters and meta-train on the first 1200, testing
    on the other 423, so test characters come from the same alphabets as training ones (the
    Vinyals split holds out whole alphabets). Their shuffles depend on ``os.listdir`` order and
    cannot be replayed; this one is ``numpy.random.default_rng(seed).permutation`` of the ids in
    increasing order: ``trainval`` = its first 1200, ``test`` = the other 423, ``val`` = the last
    172 of ``trainval`` and ``train`` = the first 1028, the sizes of the Vinyals split.

    Returns:
        int64 (num_characters,), sorted.
    """
    first, last = SET_IDS["background"][0], SET_IDS["evaluation"][1]
    order = np.random.default_rng(seed).permutation(np.arange(first, last + 1, dtype=np.int64))
    train_end = LAST_TRAINVAL_ID - RANDOM_VAL_CHARACTERS
    bounds = {
        "train": (0, train_end),
        "val": (train_end, LAST_TRAINVAL_ID),
        "test": (LAST_TRAINVAL_ID, len(order)),
        "trainval": (0, LAST_TRAINVAL_ID),
    }
    start, stop = bounds[split]
    return np.sort(order[start:stop])


def table_names(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (alphabet, ``characterNN`` folder) for global character ids, from :data:`ALPHABETS`.

    Args:
        ids: integer array of character ids in 1-1623, any shape.

    Returns:
        Two str arrays of the shape of ``ids``.
    """
    names = np.array([name for name, _, _ in ALPHABETS])
    starts = np.array([first for _, first, _ in ALPHABETS])
    which = np.searchsorted(starts, ids, side="right") - 1
    folders = np.char.add("character", np.char.zfill((ids - starts[which] + 1).astype(str), 2))
    return names[which], folders


def _resize(background_white: Image.Image, size: int) -> np.ndarray:
    """Resize a mode-L drawing (ink dark) to (size, size) and return it as uint8 with ink 255."""
    resized = background_white.resize((size, size), Image.LANCZOS)
    return 255 - np.asarray(resized)


def _progress(items: Iterable, total: int, desc: str) -> Iterator:
    """Wrap ``items`` in a progress bar shown on terminals only."""
    return iter(tqdm(items, total=total, desc=desc, unit="img", disable=None, leave=False))


def _read_pngs(
    members: list[tuple[str, Callable[[], bytes]]], set_name: str, size: int, where: Path
) -> _Characters:
    """Decode and resize the drawings of one set given as (path, read-bytes function) pairs.

    Only paths ending in ``<Alphabet>/characterNN/IIII_DD.png`` count; the set must hold exactly
    the 20 drawings of every character id in :data:`SET_IDS`.
    """
    first, last = SET_IDS[set_name]
    count = last - first + 1
    images = np.zeros((count, DRAWERS, size, size), np.uint8)
    seen = np.zeros((count, DRAWERS), bool)
    alphabets = np.full(count, "", dtype=object)
    folders = np.full(count, "", dtype=object)
    for name, read in _progress(members, len(members), f"Omniglot {set_name}: {size}px"):
        match = _PNG.fullmatch(name)
        if match is None:
            continue
        alphabet, folder, char_id, drawer = match[1], match[2], int(match[3]), int(match[4])
        if not (first <= char_id <= last and 1 <= drawer <= DRAWERS):
            raise DatasetError(
                f"{where}: unexpected drawing {name}: the {set_name} set holds character ids "
                f"{first:04d}-{last:04d} and drawers 01-{DRAWERS}"
            )
        i = char_id - first
        if alphabets[i] and (alphabets[i], folders[i]) != (alphabet, folder):
            raise DatasetError(
                f"{where}: character {char_id:04d} is in two folders: "
                f"{alphabets[i]}/{folders[i]} and {alphabet}/{folder}"
            )
        try:
            image = Image.open(io.BytesIO(read()))
            image.load()
        except _DECODE_ERRORS as err:
            raise DatasetError(f"{where}: cannot read {name} ({err}); the file is corrupt") from err
        if image.size != (SOURCE_SIZE, SOURCE_SIZE):
            raise DatasetError(f"{where}: {name} is {image.size}, expected 105x105")
        images[i, drawer - 1] = _resize(image.convert("L"), size)
        seen[i, drawer - 1] = True
        alphabets[i], folders[i] = alphabet, folder
    missing = np.argwhere(~seen)
    if len(missing):
        char, drawer = missing[0]
        raise DatasetError(
            f"{where} is incomplete: {len(missing)} of {seen.size} {set_name} drawings are "
            f"missing, the first being {first + char:04d}_{drawer + 1:02d}.png; replace it with "
            "a complete copy"
        )
    ids = np.arange(first, last + 1, dtype=np.int64)
    return _Characters(images, ids, alphabets.astype(str), folders.astype(str))


def _read_zip(path: Path, set_name: str, size: int) -> _Characters:
    """Read one set from an official-layout zip archive."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(
            f"{path} is not a readable zip archive ({err}); it is corrupt or truncated: "
            "delete it and download it again"
        ) from err
    with archive:
        members = [
            (info.filename, lambda info=info: archive.read(info))
            for info in archive.infolist()
            if not info.is_dir()
        ]
        return _read_pngs(members, set_name, size, path)


def _read_folder(path: Path, set_name: str, size: int) -> _Characters:
    """Read one set from an extracted archive folder."""
    members = [(p.relative_to(path).as_posix(), p.read_bytes) for p in sorted(path.rglob("*.png"))]
    return _read_pngs(members, set_name, size, path)


def _read_npz(path: Path, set_name: str, size: int) -> _Characters:
    """Read one set from an npz holding the bool array ``images`` (True = background)."""
    first, last = SET_IDS[set_name]
    expected = (last - first + 1, DRAWERS, SOURCE_SIZE, SOURCE_SIZE)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = npz["images"]
    except (*_DECODE_ERRORS, KeyError) as err:
        raise DatasetError(
            f"{path}: cannot read its bool array 'images' ({err}); the file is corrupt or not "
            "an Omniglot npz"
        ) from err
    if raw.dtype != np.bool_ or raw.shape != expected:
        raise DatasetError(
            f"{path}: 'images' is {raw.dtype} {raw.shape}, expected bool {expected} "
            f"for the {set_name} set"
        )
    # np.where, not a uint8 view: this npz stores True as the byte 255, not 1.
    gray = np.where(raw, np.uint8(255), np.uint8(0)).reshape(-1, SOURCE_SIZE, SOURCE_SIZE)
    resized = [_resize(Image.fromarray(a), size) for a in _progress(gray, len(gray), str(path))]
    ids = np.arange(first, last + 1, dtype=np.int64)
    alphabets, folders = table_names(ids)
    images = np.stack(resized).reshape(len(ids), DRAWERS, size, size)
    return _Characters(images, ids, alphabets, folders)


_READERS: dict[str, Callable[[Path, str, int], _Characters]] = {
    ".zip": _read_zip,
    "": _read_folder,
    ".npz": _read_npz,
}


def find_source(root: Path, set_name: str) -> Path | None:
    """Return the zip, folder or npz (in that preference) holding ``set_name`` in ``root``."""
    stem = root / f"images_{set_name}"
    if stem.with_suffix(".zip").is_file():
        return stem.with_suffix(".zip")
    if stem.is_dir():
        return stem
    if stem.with_suffix(".npz").is_file():
        return stem.with_suffix(".npz")
    return None


def _where_to_put(root: Path, set_name: str) -> str:
    """Say which files would provide ``set_name`` in ``root``."""
    archive = ARCHIVES[set_name]
    return (
        f"put {archive.name} (from {archive.url}), its extracted folder "
        f"{Path(archive.name).stem}/, or images_{set_name}.npz into {root}"
    )


def load_set(
    root: Path, set_name: str, image_size: int, download_missing: bool, cache_dir: Path
) -> _Characters:
    """Load one set resized to ``image_size``, from the cache when it matches the source.

    Downloads the official archive into ``root`` first when no source is there and
    ``download_missing`` is set.

    Raises:
        DatasetNotFoundError: no source in ``root`` and no download asked for.
        DatasetError: the source is corrupt or incomplete, or the download failed.
    """
    source = find_source(root, set_name)
    if source is None:
        if not download_missing:
            raise DatasetNotFoundError(
                f"Omniglot {set_name} set not found in {root}: "
                f"{_where_to_put(root, set_name)}, or pass download=True"
            )
        hint = f"Without network, {_where_to_put(root, set_name)} by hand"
        source = download(ARCHIVES[set_name], root, hint)
    key = cache_key(
        dataset="omniglot",
        set=set_name,
        size=image_size,
        source=folder_identity(source) if source.is_dir() else [file_identity(source)],
    )
    cache = cache_dir / "omniglot" / f"{set_name}-{image_size}px-{key}.npz"
    arrays = load_arrays(cache, _Characters._fields)
    if arrays is not None:
        return _Characters(**arrays)
    characters = _READERS[source.suffix](source, set_name, image_size)
    try:
        save_arrays(cache, characters._asdict())
    except OSError as err:
        warnings.warn(
            f"could not write the Omniglot cache {cache} ({err}); the next load will resize again",
            stacklevel=3,
        )
    return characters


class Omniglot(ImageDataset):
    """Omniglot characters of one split, resized and cached as uint8.

    Vinyals splits, by global character id (the IIII of the file names): ``trainval`` = ids
    1-1200, ``test`` = ids 1201-1623, ``val`` = the trainval characters of Armenian, Bengali,
    Early_Aramaic, Hebrew and Mkhedruli_(Georgian), ``train`` = the other trainval characters;
    test alphabets are (but for Gurmukhi) never seen in training. ``character_split="random"``
    draws the characters of each split at random instead (:func:`random_split_ids`: MAML's and
    iMAML's protocol, test characters from training alphabets). Either way: characters train
    1028, val 172, test 423, trainval 1200. With ``rotations`` each character
    at 0, 90, 180 and 270 degrees (counterclockwise, as ``PIL.Image.rotate``) is its own class,
    materialized in memory: 4112 / 688 / 1692 / 4800 classes.

    Args:
        root: folder holding the two official zips, their extracted folders, or the npz pair
            (see the module docstring). Only read, unless ``download`` fetches missing zips into it.
        split: one of ``"train"``, ``"val"``, ``"test"``, ``"trainval"``.
        image_size: side of the square images after resizing (antialiased LANCZOS).
        rotations: make the 90/180/270-degree rotations of each character classes of their own.
        download: fetch missing official zips into ``root`` and verify their sha256.
        cache_dir: where resized sets are cached (default :func:`default_cache_dir`).
        character_split: ``"vinyals"`` or ``"random"``, see above.
        character_seed: the seed of the random character split (unused for ``"vinyals"``).

    Attributes:
        images: uint8 (num_classes, 20, 1, image_size, image_size), ink 255 on background 0;
            class ``c`` is character ``c // 4`` rotated by ``90 * (c % 4)`` degrees with rotations,
            character ``c`` without.
        character_ids: int64 (num_characters,), sorted global ids of the split's characters.
        alphabets: alphabet of each character, aligned with ``character_ids``.
        class_character_ids: int64 (num_classes,), the character id of each class.
        class_rotations: int64 (num_classes,), each class's rotation in degrees.
        class_names: ``"Alphabet/characterNN/rotDDD"`` per class (without ``/rotDDD`` when
            ``rotations`` is False), as in the Vinyals split files.

    Raises:
        ValueError: unknown split or character split, or image_size below 1.
        DatasetNotFoundError: a set the split needs is missing from ``root``.
        DatasetError: a source is corrupt or incomplete, or a download failed or mismatched.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int = 28,
        rotations: bool = True,
        download: bool = False,
        cache_dir: str | Path | None = None,
        character_split: str = "vinyals",
        character_seed: int = 0,
    ) -> None:
        if split not in SPLIT_SETS:
            raise ValueError(
                f"unknown Omniglot split {split!r}; expected one of {list(SPLIT_SETS)}"
            )
        if character_split not in CHARACTER_SPLITS:
            raise ValueError(
                f"unknown Omniglot character split {character_split!r}; expected one of "
                f"{list(CHARACTER_SPLITS)}"
            )
        if image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {image_size}")
        root = Path(root).expanduser()
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        at_random = character_split == "random"
        sets = tuple(SET_IDS) if at_random else SPLIT_SETS[split]
        parts = [load_set(root, s, image_size, download, cache) for s in sets]
        chars = _Characters(*(np.concatenate(field) for field in zip(*parts, strict=True)))
        if at_random:
            keep = np.isin(chars.ids, random_split_ids(split, character_seed))
        else:
            in_val = np.isin(chars.alphabets, list(VAL_ALPHABETS))
            trainval = chars.ids <= LAST_TRAINVAL_ID
            keep = {
                "train": trainval & ~in_val,
                "val": trainval & in_val,
                "test": ~trainval,
                "trainval": trainval,
            }[split]
        images = chars.images[keep][:, :, None]
        names = np.char.add(np.char.add(chars.alphabets[keep], "/"), chars.folders[keep])
        ids = chars.ids[keep]
        if rotations:
            turns = [np.rot90(images, k, axes=(3, 4)) for k in range(4)]
            images = np.stack(turns, axis=1).reshape(-1, *images.shape[1:])
            degrees = np.tile(np.arange(0, 360, 90), len(ids))
            names = np.char.add(np.repeat(names, 4), np.char.mod("/rot%03d", degrees))
            class_ids = np.repeat(ids, 4)
        else:
            degrees = np.zeros(len(ids), dtype=np.int64)
            class_ids = ids
        super().__init__(images, names.tolist())
        self.split = split
        self.character_split = character_split
        self.image_size = image_size
        self.rotations = rotations
        self.character_ids = ids
        self.alphabets = tuple(chars.alphabets[keep].tolist())
        self.class_character_ids = class_ids
        self.class_rotations = degrees.astype(np.int64)
