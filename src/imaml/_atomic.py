"""Atomic file writes: readers see the old file (or none) or the whole new one, never a torn one."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

_TEMPORARY = ".*.tmp"
"""The glob of the temporary files :func:`write_atomic` creates (``.NAME.XXXXXXXX.tmp``)."""


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Create ``path`` by calling ``write`` on a temporary file beside it, then renaming it.

    The temporary file is flushed and fsynced before the rename, and the folder after it, so a
    crash at any point leaves the previous file intact. The temporary file is removed if
    ``write`` raises; a process killed mid-write leaves it behind (see
    :func:`remove_temporaries`).

    Raises:
        OSError: with ``errno.ENOSPC`` and ``filename=path`` when the device is full, also
            where the writer (e.g. :func:`torch.save`) wraps that error in another.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if _disk_full(err):
            raise OSError(errno.ENOSPC, "no space left on device", str(path)) from None
        raise
    _fsync_dir(path.parent)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writes killed mid-way left in ``folder``; return them.

    Only safe while no other process writes to ``folder`` (e.g. under a run directory's lock).
    """
    stale = sorted(p for p in folder.glob(_TEMPORARY) if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from or while handling, is ENOSPC."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
