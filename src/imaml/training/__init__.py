"""Meta-training and meta-testing from a :class:`~imaml.config.Config`.

:func:`train` runs the loop into a run directory; :func:`evaluate_checkpoint` meta-tests a
checkpoint; :func:`summarize_run` reads how far a run got and how it validated. The pieces
(:mod:`~imaml.training.components`, :mod:`~imaml.training.step`,
:mod:`~imaml.training.evaluation`) are usable on their own, e.g. in a notebook.
"""

from imaml.training.components import DataSource, Problem, build_problem, build_sampler
from imaml.training.evaluation import (
    EVAL_SEED,
    Adaptation,
    CheckpointEval,
    EvalResult,
    InnerProgress,
    TrainedModel,
    evaluate,
    evaluate_checkpoint,
    inner_progress,
    load_trained_model,
)
from imaml.training.loop import (
    Diverged,
    Interrupted,
    Trainer,
    TrainingError,
    TrainResult,
    resume_config,
    train,
)
from imaml.training.rundir import MetricsWarning, RunDir, RunInUse, resolve_checkpoint
from imaml.training.step import GradientFn, make_gradient_fn, outer_lr, sample_shard
from imaml.training.summary import RunSummary, SummaryError, summarize_run

__all__ = [
    "EVAL_SEED",
    "Adaptation",
    "CheckpointEval",
    "DataSource",
    "Diverged",
    "EvalResult",
    "GradientFn",
    "InnerProgress",
    "Interrupted",
    "MetricsWarning",
    "Problem",
    "RunDir",
    "RunInUse",
    "RunSummary",
    "SummaryError",
    "TrainResult",
    "TrainedModel",
    "Trainer",
    "TrainingError",
    "build_problem",
    "build_sampler",
    "evaluate",
    "evaluate_checkpoint",
    "inner_progress",
    "load_trained_model",
    "make_gradient_fn",
    "outer_lr",
    "resolve_checkpoint",
    "resume_config",
    "sample_shard",
    "summarize_run",
    "train",
]
