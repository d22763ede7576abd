"""The meta-training loop: logging, validation, checkpoints, resumption, divergence, Ctrl-C
and SIGTERM."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

import imaml
from imaml import checkpoint
from imaml._atomic import write_atomic
from imaml.config import Config, load_config
from imaml.distributed import World
from imaml.training.components import DataSource, Problem, build_problem, build_sampler
from imaml.training.evaluation import EVAL_SEED, Adaptation, EvalResult, evaluate
from imaml.training.rundir import RunDir, RunInUse, checkpoint_config, resolve_checkpoint
from imaml.training.step import (
    all_finite,
    apply_gradients,
    make_gradient_fn,
    outer_lr,
    sample_shard,
    set_learning_rate,
)
from imaml.tree import Params


class TrainingError(Exception):
    """Training cannot start or go on; the message says why and what to do."""


class Diverged(TrainingError):
    """The meta-loss or the meta-gradient is not finite at ``step`` (1-based); no update applied."""

    def __init__(self, step: int, last_checkpoint: int | None, path: Path) -> None:
        kept = (
            f"the last good checkpoint (step {last_checkpoint}) is kept in {path}"
            if last_checkpoint is not None
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"the meta-loss or meta-gradient is not finite (NaN/inf) at step {step}; training "
            f"stopped and {kept}. Lower train.outer_lr or inner.lr and start again."
        )
        self.step = step


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


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did: the run directory, the steps done, the best validation
    ``(step, value)`` if validated, and, with ``eval.at_end``, the test results of the
    meta-learned (``final``) and of the initial (``baseline``) parameters."""

    run_dir: RunDir
    steps: int
    best: tuple[int, float] | None = None
    final: EvalResult | None = None
    baseline: EvalResult | None = None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM stop the block like Ctrl-C does, so that ``kill`` or a scheduler's notice
    before SIGKILL (SLURM, Kubernetes) leaves a checkpoint of the last step."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
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


class _Window:
    """Running sums of the per-step diagnostics between two log lines (no host sync)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps = 0
        self.seconds = 0.0

    def add(self, meta_loss: Tensor, info: dict[str, Tensor], seconds: float) -> None:
        for key, value in {"meta_loss": meta_loss, **info}.items():
            value = value.detach().mean()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps += 1
        self.seconds += seconds

    def flush(self, meta_batch: int, world: World) -> dict[str, float]:
        """The window's means over steps and, in a distributed run, over all the tasks of
        every rank (one all-reduce); then its rate of steps and tasks, timed on this rank."""
        means = torch.stack([v.double() for v in self.sums.values()]) / self.steps
        tasks = world.shard(meta_batch)
        means = world.weighted_mean(means, weight=tasks.stop - tasks.start)
        record = dict(zip(self.sums, means.tolist(), strict=True))
        record["sec_per_step"] = self.seconds / self.steps
        record["tasks_per_sec"] = meta_batch * self.steps / self.seconds
        self._reset()
        return record


class _Log:
    """metrics.jsonl, optional TensorBoard scalars, and progress on stderr.

    Progress is a tqdm bar on a terminal, one line per log step otherwise, nothing when quiet.
    """

    def __init__(self, run: RunDir, total: int, start: int, quiet: bool, write: bool) -> None:
        stream = sys.stderr
        self.file = run.metrics.open("a", encoding="utf-8") if write else None
        self.tensorboard = _tensorboard(run.path, start) if write else None
        self.lines = None if quiet or stream.isatty() else stream
        self.bar = tqdm(
            total=total,
            initial=start,
            file=stream,
            disable=quiet or self.lines is not None,
            unit="step",
            dynamic_ncols=True,
        )
        self.total = total

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with ``step`` and ``split``) to metrics.jsonl and TensorBoard.

        A process other than rank 0 writes nothing.
        """
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "split") and isinstance(value, int | float):
                    self.tensorboard.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def train(self, record: dict[str, Any]) -> None:
        """Log a training record and show it in the progress."""
        self.record(record)
        shown = {"loss": f"{record['meta_loss']:.4f}"}
        if "query_accuracy" in record:
            shown["acc"] = f"{record['query_accuracy']:.3f}"
        shown["tasks/s"] = f"{record['tasks_per_sec']:.1f}"
        self.bar.set_postfix(shown, refresh=False)
        self.say(f"step {record['step']}/{self.total} " + " ".join(map(" ".join, shown.items())))

    def say(self, message: str) -> None:
        """A line of progress when stderr is no terminal (there the bar shows progress)."""
        if self.lines is not None:
            print(message, file=self.lines, flush=True)

    def note(self, message: str) -> None:
        """A message worth keeping on screen (validation results)."""
        if self.bar.disable:
            self.say(message)
        else:
            self.bar.write(message, file=self.bar.fp)

    def close(self) -> None:
        """Flush and close everything."""
        self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard(path: Path, start: int) -> Any:
    """A TensorBoard SummaryWriter on ``path``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(path), purge_step=start or None)


class Trainer:
    """The state of one run: config, model parameters, optimizer, samplers and step.

    Use :func:`train`; this class exists so that the steps of the loop are small methods.
    """

    def __init__(
        self,
        config: Config,
        run: RunDir,
        source: DataSource,
        device: torch.device | str = "cpu",
        world: World | None = None,
    ) -> None:
        self.config = config
        self.run = run
        self.source = source
        self.device = torch.device(device)
        self.world = world or World()
        self.problem: Problem = build_problem(config)
        self.problem.model.to(self.device)
        self.params = dict(self.problem.model.named_parameters())
        # The same seed gives every rank the same initial parameters; make sure of it.
        self.world.broadcast([p.detach() for p in self.params.values()])
        self.optimizer = _outer_optimizer(config, list(self.params.values()))
        self.gradient_fn = make_gradient_fn(config, self.problem)
        self.adaptation = Adaptation.of(config)
        train, val = config.data.train_split, config.data.val_split
        self.sampler = build_sampler(config, train, source, config.train.seed, self.device)
        self.val_sampler = (
            build_sampler(config, val, source, config.train.seed, self.device)
            if config.train.val_every
            else None
        )
        self.step = 0
        self.saved_step: int | None = None
        self.best: tuple[int, float] | None = None

    # -- state -------------------------------------------------------------------------------

    def state(self, kind: str = "last") -> dict[str, Any]:
        """A checkpoint (tensors and plain data only): ``"last"`` to resume, ``"best"`` to keep
        the parameters alone."""
        state = {
            "kind": kind,
            "imaml_version": imaml.__version__,
            "config": self.config.to_json(),
            "step": self.step,
            "params": _detached(self.params),
            "best": None if self.best is None else {"step": self.best[0], "value": self.best[1]},
        }
        if kind == "last":
            state["optimizer"] = self.optimizer.state_dict()
            state["rng"] = {"torch": torch.get_rng_state()}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of :meth:`state` (of this run's model and optimizer)."""
        self._assign(state["params"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = self.saved_step = state["step"]
        best = state["best"]
        self.best = None if best is None else (best["step"], best["value"])

    def resume_from(self, state: dict[str, Any]) -> None:
        """:meth:`load_state`, as a :class:`TrainingError` where the optimizer or RNG state
        does not fit."""
        try:
            self.load_state(state)
        except (KeyError, ValueError, TypeError, RuntimeError) as err:
            raise TrainingError(
                f"{self.run.checkpoint}: its optimizer or RNG state does not fit this run ({err}); "
                "start a new run from it with --set train.init_from=PATH"
            ) from None

    def init_params(self, path: str | Path) -> None:
        """Start from the parameters of the checkpoint at ``path`` (a file or a run directory):
        ``train.init_from``.

        Raises:
            TrainingError: its parameters are not those of this run's model.
            CheckpointError: no readable checkpoint there.
        """
        source = resolve_checkpoint(path)
        params = checkpoint.load(source)["params"]
        mismatch = _shape_mismatch(self.params, params)
        if mismatch:
            raise TrainingError(
                f"train.init_from: the parameters of {source} do not fit this run's model "
                f"(differing name/shape: {mismatch[:4]}); use a checkpoint of the same [model] "
                "config"
            )
        self._assign(params)

    def _assign(self, params: Params) -> None:
        """Copy ``params`` (same names and shapes, any device) into the meta-parameters."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(params[name])

    def save(self) -> None:
        """Write checkpoint.pt atomically."""
        if self.world.is_main:
            checkpoint.save(self.state(), self.run.checkpoint)
        self.saved_step = self.step

    # -- the loop ----------------------------------------------------------------------------

    def meta_step(self) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample this step's tasks, compute, average and apply the meta-gradient."""
        cfg = self.config.train
        tasks = sample_shard(self.sampler, self.world, cfg.meta_batch, self.step)
        grads, info = self.gradient_fn(self.params, tasks)
        grads = self.world.mean(grads)  # the all-reduce across processes; identity for one
        meta_loss = info.get("query_loss", info["support_loss"]).mean()
        if not all_finite(meta_loss, grads):
            raise Diverged(self.step + 1, self.saved_step, self.run.checkpoint)
        # From the config, every step: a resumed optimizer state holds the lr it was saved with.
        set_learning_rate(self.optimizer, outer_lr(cfg, self.step))
        with _signals_deferred():
            apply_gradients(self.optimizer, self.params, grads)
            self.step += 1
        return meta_loss, info

    def validate(self, log: _Log) -> None:
        """Evaluate on the validation split; keep best.pt when the metric improves."""
        assert self.val_sampler is not None
        cfg = self.config.train
        result = evaluate(
            self.problem,
            _detached(self.params),
            self.val_sampler,
            self.adaptation,
            tasks=cfg.val_tasks,
            batch=self.config.eval.batch,
        )
        sign = 1 if self.problem.higher_is_better else -1
        improved = self.best is None or sign * result.mean > sign * self.best[1]
        if improved:
            self.best = (self.step, result.mean)
            if self.world.is_main:
                checkpoint.save(self.state("best"), self.run.best)
        log.record({"step": self.step, "split": "val", **result.to_dict(), "best": improved})
        log.note(f"step {self.step}: validation {result}" + (" (best)" if improved else ""))

    def fit(self, log: _Log) -> None:
        """Run meta-steps up to ``train.meta_steps``, logging, validating and checkpointing."""
        cfg = self.config.train
        window = _Window()
        while self.step < cfg.meta_steps:
            start = time.perf_counter()
            meta_loss, info = self.meta_step()
            window.add(meta_loss, info, time.perf_counter() - start)
            log.bar.update(1)
            last = self.step == cfg.meta_steps
            if self.step % cfg.log_every == 0 or last:
                lr = outer_lr(cfg, self.step - 1)  # that of the last update
                log.train(
                    {
                        "step": self.step,
                        "split": "train",
                        "outer_lr": lr,
                        **window.flush(cfg.meta_batch, self.world),
                    }
                )
            if cfg.val_every and (self.step % cfg.val_every == 0 or last):
                self.validate(log)
            if self.step % cfg.checkpoint_every == 0 or last:
                self.save()

    def test(self, log: _Log) -> tuple[EvalResult, EvalResult]:
        """``eval.at_end``: the test metric of the meta-learned and of the initial parameters."""
        cfg = self.config.eval
        sampler = build_sampler(self.config, cfg.split, self.source, EVAL_SEED, self.device)
        initial = dict(build_problem(self.config).model.to(self.device).named_parameters())
        results = []
        for name, params in (("meta-learned", self.params), ("initial", initial)):
            result = evaluate(
                self.problem,
                _detached(params),
                sampler,
                self.adaptation,
                tasks=cfg.tasks,
                batch=cfg.batch,
            )
            log.record({"step": self.step, "split": cfg.split, "params": name, **result.to_dict()})
            results.append(result)
        return results[0], results[1]


def _detached(params: dict[str, Tensor]) -> Params:
    return {k: v.detach() for k, v in params.items()}


def _outer_optimizer(config: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.train.outer_optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.train.outer_lr)
    return torch.optim.Adam(params, lr=config.train.outer_lr)


def train(
    config: Config,
    run_dir: str | Path,
    source: DataSource,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    device: torch.device | str = "cpu",
    world: World | None = None,
) -> TrainResult:
    """Meta-train as ``config`` says, writing everything to ``run_dir``.

    The run directory has one writer: this process locks it (:meth:`RunDir.lock`) before
    writing anything, and checks what it holds against what is asked before writing too. A
    fresh start refuses a directory that already holds a run unless ``overwrite`` (which
    deletes that run's files). With ``resume``, continue from ``run_dir/checkpoint.pt`` (pass
    the config returned by :func:`resume_config`); the parameters after N steps equal those of
    an uninterrupted run, and metrics.jsonl holds each step once. A resumed run keeps its
    algorithm, data set, model and outer optimizer; other keys (``train.meta_steps``, the
    outer lr and its milestones, logging and validation) may change.
    With a distributed ``world`` (see :mod:`imaml.distributed`), each rank computes its shard
    of every meta-batch, the logged figures are means over the whole meta-batch, only rank 0
    writes to ``run_dir``, and every rank reads the checkpoint to resume (so ``run_dir`` must
    be on a file system that all ranks see).

    Raises:
        TrainingError: the run directory is in use by another process, conflicts with
            ``resume``/``overwrite``, or holds a checkpoint that ``config`` cannot continue
            (:class:`Diverged`: a non-finite meta-loss; the last checkpoint is kept).
        Interrupted: Ctrl-C or SIGTERM during the meta-steps; the state was saved first, so
            the run can be resumed.
        CheckpointError: the checkpoint is unreadable, or the disk filled up writing one.
        DatasetError, ConfigError: the data set is missing or does not fit the config.
    """
    world = world or World()
    try:
        world.shard(config.train.meta_batch)
    except ValueError as err:
        raise TrainingError(str(err)) from None
    if resume and overwrite:
        raise TrainingError("resume continues a run and overwrite starts it afresh: choose one")
    run = RunDir(Path(run_dir))
    if resume and not run.checkpoint.is_file():
        raise TrainingError(f"nothing to resume: {run.checkpoint} does not exist")
    with contextlib.ExitStack() as held:
        if world.is_main:  # the other ranks write nothing
            try:
                held.enter_context(run.lock())
            except RunInUse as err:
                raise TrainingError(str(err)) from None
        trainer = _start(config, run, source, resume, overwrite, device, world)
        log = _Log(
            run, config.train.meta_steps, trainer.step, quiet or not world.is_main, world.is_main
        )
        try:
            try:
                with _sigterm_as_interrupt():
                    trainer.fit(log)
            except KeyboardInterrupt as err:
                trainer.save()
                signum = signal.SIGTERM if isinstance(err, _Terminated) else signal.SIGINT
                raise Interrupted(trainer.step, run.checkpoint, signum) from None
            final = baseline = None
            if config.eval.at_end:
                final, baseline = trainer.test(log)
        finally:
            log.close()
    return TrainResult(run, trainer.step, trainer.best, final, baseline)


def _start(
    config: Config,
    run: RunDir,
    source: DataSource,
    resume: bool,
    overwrite: bool,
    device: torch.device | str,
    world: World,
) -> Trainer:
    """Check ``run`` against what is asked, build the trainer (loaded from the checkpoint to
    resume), then prepare the directory: metrics cut to the checkpoint's step (resume) or
    the old run's files deleted (overwrite), and config.toml written. Nothing is written
    before every check has passed."""
    state = None
    if resume:
        state = checkpoint.load(run.checkpoint)
        _check_resume(run, state, config)
    elif world.is_main and not overwrite and run.holds_a_run():
        way = (
            "pass --resume to continue it, --overwrite to start afresh"
            if run.checkpoint.is_file()
            else "it has no checkpoint to resume; pass --overwrite to start afresh"
        )
        raise TrainingError(
            f"{run.path} already holds a run; {way} (deleting its metrics and checkpoints), or "
            "another --run-dir"
        )
    trainer = Trainer(config, run, source, device, world)
    if state is not None:
        trainer.resume_from(state)
    elif config.train.init_from:
        trainer.init_params(config.train.init_from)
    if world.is_main:
        if resume:
            run.truncate_metrics(trainer.step)
        elif overwrite:
            run.clear()
        text = config.to_toml().encode("utf-8")
        write_atomic(run.config, lambda f: f.write(text))
    return trainer


_KEPT_ON_RESUME = ("algorithm", "data.dataset", "model.", "train.outer_optimizer")
"""The config keys (and key prefixes) a resumed run keeps: what it meta-learns, with which
model, and the optimizer whose state the checkpoint holds."""


def _check_resume(run: RunDir, state: dict[str, Any], config: Config) -> None:
    """Check that ``run``'s checkpoint (``state``) is this run's, and that ``config`` keeps
    what a resumed run must keep: the checkpoint's model, parameter shapes and optimizer.

    Raises:
        TrainingError: naming the keys at fault.
    """
    saved = checkpoint_config(state)
    if run.config.is_file():
        foreign = _kept(_differences(saved, load_config(str(run.config))[1]))
        if foreign:
            raise TrainingError(
                f"{run.checkpoint} is not this run's checkpoint: "
                f"{_listed(foreign, 'in it', 'in config.toml')}; resume it in its own run dir"
            )
    changed = _kept(_differences(saved, config))
    if changed:
        raise TrainingError(
            f"a resumed run keeps its {', '.join(changed)}: "
            f"{_listed(changed, 'in the checkpoint', 'asked')}; start a new run to change it "
            f"(another --run-dir; --set train.init_from={run.path} starts from its parameters)"
        )
    mismatch = _shape_mismatch(
        dict(build_problem(config).model.named_parameters()), state["params"]
    )
    if mismatch:
        keys = [k for k in _differences(saved, config) if k.startswith("data.")]
        raise TrainingError(
            f"{' and '.join(keys) or 'the config'} cannot change on resume: the model's "
            f"parameters would change shape (differing name/shape: {mismatch[:4]}); start a "
            "new run instead (another --run-dir)"
        )
    missing = [key for key in ("optimizer", "rng") if key not in state]
    if missing:
        raise TrainingError(
            f"{run.checkpoint} cannot be resumed: it holds no {' or '.join(missing)} state "
            "(a best.pt?); start a new run from it with --set train.init_from=PATH"
        )


def _differences(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in a, value in b)}`` of the keys whose values differ."""
    flat_a, flat_b = _flat(a.to_dict()), _flat(b.to_dict())
    return {key: (value, flat_b[key]) for key, value in flat_a.items() if value != flat_b[key]}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"table.key": value}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _kept(differences: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The differences in keys that a resumed run keeps."""
    return {k: v for k, v in differences.items() if k.startswith(_KEPT_ON_RESUME)}


def _listed(differences: dict[str, tuple[Any, Any]], first: str, second: str) -> str:
    """``key is A <first>, B <second>`` for each difference, comma-separated."""
    return ", ".join(f"{k} is {a!r} {first}, {b!r} {second}" for k, (a, b) in differences.items())


def _shape_mismatch(expected: Params, found: Params) -> list[tuple[str, tuple[int, ...]]]:
    """The ``(name, shape)`` pairs of one parameter dict missing from the other, sorted."""
    shapes = [{name: tuple(p.shape) for name, p in params.items()} for params in (expected, found)]
    return sorted(set(shapes[0].items()) ^ set(shapes[1].items()))


def resume_config(
    run_dir: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    named: Config | None = None,
    name: str = "CONFIG",
) -> Config:
    """The config of the run in ``run_dir`` (from its checkpoint), with overrides applied.

    ``named``, the config ``name`` given along with ``--resume`` (overrides applied), must be
    the run's own: equal to its ``config.toml`` (else its checkpoint's config) with the same
    overrides.

    Raises:
        TrainingError: no checkpoint to resume, or ``named`` differs (the keys are listed).
    """
    run = RunDir(Path(run_dir))
    if not run.checkpoint.is_file():
        raise TrainingError(f"nothing to resume: {run.checkpoint} does not exist")
    config = checkpoint_config(checkpoint.load(run.checkpoint), overrides)
    if named is not None:
        own = load_config(str(run.config), overrides)[1] if run.config.is_file() else config
        differences = _differences(own, named)
        if differences:
            raise TrainingError(
                f"{name} is not the config of the run in {run.path}: "
                f"{_listed(differences, 'in the run', f'in {name}')}; drop {name} to resume the "
                "run with its own config (--set changes a key)"
            )
    return config
