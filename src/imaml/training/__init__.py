"""Meta-training and meta-testing from a :class:`~imaml.config.Config`.

:func:`train` runs the loop into a run directory; :func:`evaluate_checkpoint` meta-tests a
checkpoint; :func:`summarize_run` reads how far a run got and how it validated. Each module
does one job and is usable on its own, e.g. in a notebook:

- :mod:`~imaml.training.builders`: the model, loss, samplers and optimizers a config names;
- :mod:`~imaml.training.step`: one meta-step's gradient and update;
- :mod:`~imaml.training.trainer`: :class:`Trainer` and :func:`train`, the loop;
- :mod:`~imaml.training.resume`: whether a run may start or resume in a run directory;
- :mod:`~imaml.training.rundir`: the files of a run directory and its lock;
- :mod:`~imaml.training.metrics`: the logged diagnostics and their sinks (:class:`MetricSink`);
- :mod:`~imaml.training.signals`: Ctrl-C and SIGTERM (:class:`Interrupted`);
- :mod:`~imaml.training.errors`: :class:`TrainingError` and :class:`Diverged`;
- :mod:`~imaml.training.evaluation`: meta-testing;
- :mod:`~imaml.training.convergence`: how far adaptation gets (:func:`inner_progress`);
- :mod:`~imaml.training.loading`: checkpoints and model files read back to adapt;
- :mod:`~imaml.training.summary`: a run's progress read from its metrics;
- :mod:`~imaml.training.plot`: learning curves (also as :mod:`imaml.plot`).
"""

from imaml.training.builders import (
    DataSource,
    Problem,
    build_learner,
    build_problem,
    build_sampler,
)
from imaml.training.convergence import InnerProgress, inner_progress
from imaml.training.errors import Diverged, TrainingError
from imaml.training.evaluation import (
    EVAL_SEED,
    Adaptation,
    CheckpointEval,
    EvalResult,
    evaluate,
    evaluate_checkpoint,
)
from imaml.training.loading import TrainedModel, load_trained_model
from imaml.training.metrics import MetricSink
from imaml.training.resume import resume_config
from imaml.training.rundir import MetricsWarning, RunDir, RunInUse, resolve_checkpoint
from imaml.training.signals import Interrupted
from imaml.training.step import GradientFn, make_gradient_fn, outer_lr, sample_shard
from imaml.training.summary import RunSummary, SummaryError, summarize_run
from imaml.training.trainer import Trainer, TrainResult, train

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
    "MetricSink",
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
    "build_learner",
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
