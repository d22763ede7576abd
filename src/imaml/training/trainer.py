"""Meta-training: :func:`train` runs a :class:`Trainer` from step 0 (or a checkpoint) to
``train.meta_steps``, validating, checkpointing and logging as its config says."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import imaml
from imaml import checkpoint, tree
from imaml.config import Config
from imaml.diagnostics import Diagnostics
from imaml.distributed import World
from imaml.training import resume as resuming
from imaml.training.builders import (
    DataSource,
    Problem,
    build_outer_optimizer,
    build_problem,
    build_sampler,
)
from imaml.training.errors import Diverged, TrainingError
from imaml.training.evaluation import EVAL_SEED, Adaptation, EvalResult, evaluate
from imaml.training.loading import shape_mismatch
from imaml.training.metrics import MetricLogger, MetricWindow
from imaml.training.rundir import RunDir, RunInUse, resolve_checkpoint
from imaml.training.signals import Interrupted, signal_of, signals_deferred, sigterm_as_interrupt
from imaml.training.step import (
    all_finite,
    apply_gradients,
    make_gradient_fn,
    outer_lr,
    sample_shard,
    set_learning_rate,
)
from imaml.types import Params


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
        self.optimizer = build_outer_optimizer(config, list(self.params.values()))
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
            "params": tree.detach(self.params),
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
        mismatch = shape_mismatch(self.params, params)
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

    def meta_step(self) -> tuple[Tensor, Diagnostics]:
        """Sample this step's tasks, compute, average and apply the meta-gradient."""
        cfg = self.config.train
        tasks = sample_shard(self.sampler, self.world, cfg.meta_batch, self.step)
        grads, info = self.gradient_fn(self.params, tasks)
        grads = self.world.mean(grads)  # the all-reduce across processes; identity for one
        meta_loss = info.get("query_loss", info["support_loss"]).mean()
        if not self.world.all(all_finite(meta_loss, grads)):  # every rank stops, or none
            raise Diverged(self.step + 1, self.saved_step, self.run.checkpoint)
        # From the config, every step: a resumed optimizer state holds the lr it was saved with.
        set_learning_rate(self.optimizer, outer_lr(cfg, self.step))
        with signals_deferred():
            apply_gradients(self.optimizer, self.params, grads)
            self.step += 1
        return meta_loss, info

    def validate(self, log: MetricLogger) -> None:
        """Evaluate on the validation split; keep best.pt when the metric improves."""
        assert self.val_sampler is not None
        cfg = self.config.train
        result = evaluate(
            self.problem,
            tree.detach(self.params),
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
        log.log({"step": self.step, "split": "val", **result.to_dict(), "best": improved})
        log.note(f"step {self.step}: validation {result}" + (" (best)" if improved else ""))

    def fit(self, log: MetricLogger) -> None:
        """Run meta-steps up to ``train.meta_steps``, logging, validating and checkpointing."""
        cfg = self.config.train
        window = MetricWindow()
        while self.step < cfg.meta_steps:
            start = time.perf_counter()
            meta_loss, info = self.meta_step()
            window.add(meta_loss, info, time.perf_counter() - start)
            log.advance()
            last = self.step == cfg.meta_steps
            if self.step % cfg.log_every == 0 or last:
                lr = outer_lr(cfg, self.step - 1)  # that of the last update
                log.log(
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

    def test(self, log: MetricLogger) -> tuple[EvalResult, EvalResult]:
        """``eval.at_end``: the test metric of the meta-learned and of the initial parameters."""
        cfg = self.config.eval
        sampler = build_sampler(self.config, cfg.split, self.source, EVAL_SEED, self.device)
        initial = dict(build_problem(self.config).model.to(self.device).named_parameters())
        results = []
        for name, params in (("meta-learned", self.params), ("initial", initial)):
            result = evaluate(
                self.problem,
                tree.detach(params),
                sampler,
                self.adaptation,
                tasks=cfg.tasks,
                batch=cfg.batch,
                query_batch_shots=cfg.query_batch_shots,
            )
            log.log({"step": self.step, "split": cfg.split, "params": name, **result.to_dict()})
            results.append(result)
        return results[0], results[1]


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
    the config returned by :func:`~imaml.training.resume.resume_config`); the parameters
    after N steps equal those of an uninterrupted run, and metrics.jsonl holds each step
    once. A resumed run keeps its algorithm, data set, model and outer optimizer; other keys
    (``train.meta_steps``, the outer lr and its milestones, logging and validation) may
    change.
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
    run = RunDir(Path(run_dir))
    resuming.check_request(run, resume, overwrite)
    with contextlib.ExitStack() as held:
        if world.is_main:  # the other ranks write nothing
            try:
                held.enter_context(run.lock())
            except RunInUse as err:
                raise TrainingError(str(err)) from None
        trainer = _start(config, run, source, resume, overwrite, device, world)
        log = MetricLogger.for_run(
            run, config.train.meta_steps, trainer.step, quiet or not world.is_main, world.is_main
        )
        try:
            try:
                with sigterm_as_interrupt():
                    trainer.fit(log)
            except KeyboardInterrupt as err:
                trainer.save()
                raise Interrupted(trainer.step, run.checkpoint, signal_of(err)) from None
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
    resume), then prepare the directory (:func:`imaml.training.resume.prepare`). Nothing is
    written before every check has passed."""
    state = resuming.check_start(config, run, resume, overwrite, world)
    trainer = Trainer(config, run, source, device, world)
    if state is not None:
        trainer.resume_from(state)
    elif config.train.init_from:
        trainer.init_params(config.train.init_from)
    if world.is_main:
        resuming.prepare(run, config, trainer.step, resume, overwrite)
    return trainer
