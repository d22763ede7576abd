"""Ctrl-C and SIGTERM during training: SIGTERM stops a run as Ctrl-C does, an update is never
cut in half, and :class:`Interrupted` says where the run was saved."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path


class Interrupted(Exception):
    """Training was stopped by ``signum`` (SIGINT: Ctrl-C; SIGTERM: ``kill`` or a scheduler)
    after ``step`` steps, all saved in ``checkpoint``."""

    def __init__(self, step: int, checkpoint_path: Path, signum: int = signal.SIGINT) -> None:
        name = signal.Signals(signum).name
        super().__init__(
            f"interrupted ({name}) after step {step}; checkpoint saved to {checkpoint_path}"
        )
        self.step = step
        self.checkpoint = checkpoint_path
        self.signum = signum


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises KeyboardInterrupt."""


def signal_of(interrupt: KeyboardInterrupt) -> int:
    """The signal that raised ``interrupt``: SIGTERM for :class:`Terminated`, else SIGINT."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM stop the block like Ctrl-C does (raising :class:`Terminated`), so that
    ``kill`` or a scheduler's notice before SIGKILL (SLURM, Kubernetes) leaves a checkpoint of
    the last step. Outside the main thread, where no handler can be set, it does nothing."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, so that an update is applied whole or
    not at all; then raise them again for the handlers that were in place (none if ignored)."""
    if not _in_main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda signum, frame: received.append(signum))
        for signum in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(signum) is not None  # None: a handler not set from Python
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            if previous[signum] is not signal.SIG_IGN:
                signal.raise_signal(signum)
