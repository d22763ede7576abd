"""File plumbing shared by the data sets: errors, cache location and keys, atomic writes, downloads.

Nothing here ever writes into a data set's root except :func:`download`, which the user asks for
explicitly; caches go to :func:`default_cache_dir` or a caller-given folder.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np

from imaml._atomic import write_atomic

#: Bump when the content or layout of cache files changes, so that old caches are never reused.
CACHE_VERSION = 1

_CHUNK = 1 << 20


class DatasetError(Exception):
    """A data set's files are missing, corrupt, or do not match what the loader expects."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A file or folder a data set needs is absent; the message says what to put where."""


class ChecksumError(DatasetError):
    """A downloaded file's size or sha256 differs from the published one."""


class RemoteFile(NamedTuple):
    """A file to download: where from, what to call it, and its published size and sha256."""

    name: str
    url: str
    size: int
    sha256: str


def default_cache_dir() -> Path:
    """Return ``$XDG_CACHE_HOME/imaml``, or ``~/.cache/imaml`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imaml"


def file_identity(path: str | os.PathLike[str], name: str | None = None) -> list[str | int]:
    """Return ``[name, size, mtime_ns]`` of a file (``name`` defaults to its base name).

    This is what cache keys record about a source file.
    """
    stat = os.stat(path)
    return [os.path.basename(path) if name is None else name, stat.st_size, stat.st_mtime_ns]


def folder_identity(folder: Path) -> list[list[str | int]]:
    """Return :func:`file_identity` of every file under ``folder``, named relative to it, sorted."""
    identity = []
    for dirpath, _, files in os.walk(folder):
        relative = Path(dirpath).relative_to(folder).as_posix()
        for name in files:
            identity.append(file_identity(os.path.join(dirpath, name), f"{relative}/{name}"))
    return sorted(identity)


def cache_key(**fields: object) -> str:
    """Return a 16-hex-digit digest of ``fields`` (JSON-serializable) and :data:`CACHE_VERSION`."""
    text = json.dumps({"cache_version": CACHE_VERSION, **fields}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write ``arrays`` as an uncompressed ``.npz`` (plain dtypes only, no pickle)."""
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load_arrays(path: Path, names: Iterable[str]) -> dict[str, np.ndarray] | None:
    """Load the arrays ``names`` from an ``.npz`` cache file, or None if it is absent or unreadable.

    A cache file that cannot be read (truncated by a full disk, say) counts as a miss, so the caller
    rebuilds it instead of failing.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in names}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def urlopen(url: str, timeout: float) -> IO[bytes]:
    """Open ``url`` for reading (a seam that tests replace to serve local bytes)."""
    return urllib.request.urlopen(url, timeout=timeout)


def download(remote: RemoteFile, folder: Path, hint: str, timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``folder / remote.name``, verifying its size and sha256.

    The bytes go to a temporary file in ``folder`` that is renamed only after verification, so an
    interrupted or corrupt download never leaves a file under the final name. ``hint`` is appended
    to the error raised when the network cannot be reached (say what to put where instead).

    Raises:
        ChecksumError: the downloaded size or sha256 differs from ``remote``'s.
        DatasetError: the download failed (no network, HTTP error, connection cut).
    """
    dest = folder / remote.name
    digest = hashlib.sha256()
    size = 0

    def fetch(f: IO[bytes]) -> None:
        nonlocal size
        with urlopen(remote.url, timeout=timeout) as response:
            while block := response.read(_CHUNK):
                digest.update(block)
                size += len(block)
                f.write(block)
        if size != remote.size or digest.hexdigest() != remote.sha256:
            raise ChecksumError(
                f"downloaded {remote.url} does not match its published checksum: got {size:,} "
                f"bytes with sha256 {digest.hexdigest()}, expected {remote.size:,} bytes with "
                f"sha256 {remote.sha256}; nothing was written to {dest}"
            )

    try:
        write_atomic(dest, fetch)
    except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
        raise DatasetError(f"could not download {remote.url} to {dest}: {err}. {hint}") from err
    return dest
