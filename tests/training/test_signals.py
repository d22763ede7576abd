"""Ctrl-C and SIGTERM: a checkpoint of the last whole step, and a resume equal to an
uninterrupted run."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from imaml import checkpoint
from imaml.config import Config
from imaml.training import Interrupted, resume_config, train
from imaml.training import trainer as trainer_module
from training.helpers import SOURCE, assert_same_state, logged, tiny


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_and_resume_equals_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    train(tiny(), tmp_path / "straight", SOURCE, quiet=True)

    real = trainer_module.make_gradient_fn

    def signalled_at_step_4(config: Config, problem: Any) -> Any:
        fn, calls = real(config, problem), []

        def wrapped(params: Any, tasks: Any) -> Any:
            calls.append(1)
            if len(calls) == 4:  # in the middle of computing step 4's meta-gradient
                os.kill(os.getpid(), signum)
            return fn(params, tasks)

        return wrapped

    monkeypatch.setattr(trainer_module, "make_gradient_fn", signalled_at_step_4)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as err:
        train(tiny(), tmp_path / "resumed", SOURCE, quiet=True)
    assert err.value.step == 3 and err.value.signum == signum
    assert f"interrupted ({signal.Signals(signum).name}) after step 3" in str(err.value)
    assert checkpoint.load(tmp_path / "resumed" / "checkpoint.pt")["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    monkeypatch.setattr(trainer_module, "make_gradient_fn", real)

    train(
        resume_config(tmp_path / "resumed"), tmp_path / "resumed", SOURCE, resume=True, quiet=True
    )
    assert_same_state(
        checkpoint.load(tmp_path / "straight" / "checkpoint.pt"),
        checkpoint.load(tmp_path / "resumed" / "checkpoint.pt"),
    )
    # The log of the resumed run has the records of an uninterrupted one, none twice.
    assert logged(tmp_path / "straight") == logged(tmp_path / "resumed")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_an_update_waits_for_the_update_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    train(tiny("train.meta_steps=4"), tmp_path / "straight", SOURCE, quiet=True)

    real, calls = trainer_module.apply_gradients, []

    def signalled_in_update_4(optimizer: Any, params: Any, grads: Any) -> None:
        calls.append(1)
        if len(calls) == 4:  # half-applied updates would corrupt params and Adam's moments
            os.kill(os.getpid(), signum)
        real(optimizer, params, grads)

    monkeypatch.setattr(trainer_module, "apply_gradients", signalled_in_update_4)
    with pytest.raises(Interrupted) as err:
        train(tiny(), tmp_path / "signalled", SOURCE, quiet=True)
    assert err.value.step == 4 and err.value.signum == signum
    assert_same_state(
        checkpoint.load(tmp_path / "straight" / "checkpoint.pt"),
        checkpoint.load(tmp_path / "signalled" / "checkpoint.pt"),
    )


def test_an_ignored_sigint_stays_ignored_during_updates(tmp_path: Path) -> None:
    """A run started with ``&`` from a script ignores SIGINT: deferring must not undo that."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        real, calls = trainer_module.apply_gradients, []

        def signalled(optimizer: Any, params: Any, grads: Any) -> None:
            calls.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            real(optimizer, params, grads)

        with pytest.MonkeyPatch.context() as m:
            m.setattr(trainer_module, "apply_gradients", signalled)
            result = train(tiny("eval.at_end=false"), tmp_path / "run", SOURCE, quiet=True)
        assert result.steps == 6 and len(calls) == 6
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
