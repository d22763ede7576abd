"""The ``imaml`` command: ``train``, ``eval``, ``models``, ``export``, ``summary``, ``configs``
and ``plot`` (the benchmarks are scripts of a source checkout: ``benchmarks/README.md``).

Every user error ends with a one-line ``imaml: error: ...`` on stderr and exit status 1
(2 for bad command-line syntax, 130 for Ctrl-C, 143 for SIGTERM); progress goes to stderr,
results to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from imaml import checkpoint, zoo
from imaml.checkpoint import CheckpointError
from imaml.config import (
    Config,
    ConfigError,
    DataConfig,
    bundled_config_text,
    bundled_configs,
    load_config,
)
from imaml.data import DatasetError
from imaml.distributed import DeviceError, device_for, init_world, shutdown
from imaml.training import (
    EVAL_SEED,
    DataSource,
    Interrupted,
    SummaryError,
    TrainingError,
    TrainResult,
    evaluate_checkpoint,
    resolve_checkpoint,
    resume_config,
    summarize_run,
    train,
)
from imaml.training.builders import adaptation_lam
from imaml.training.plot import PlotError, plot_run, plot_validation

DEFAULT_CONFIG = "sinusoid"

USER_ERRORS = (
    ConfigError, DatasetError, CheckpointError, DeviceError, TrainingError, PlotError,
    SummaryError, OSError,
)  # fmt: skip
"""Errors reported as one line, without a traceback (OSError: disk full, no permission...)."""


def default_data_dir() -> Path:
    """``$IMAML_DATA`` if set, else ``$XDG_DATA_HOME/imaml`` (``~/.local/share/imaml``).

    The folder holds one subfolder per data set: ``omniglot/``, ``miniimagenet/``.
    """
    if os.environ.get("IMAML_DATA"):
        return Path(os.environ["IMAML_DATA"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "imaml"


def _add_machine_options(parser: argparse.ArgumentParser) -> None:
    """Options about this machine, not the experiment: data, cache, device, threads."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="folder holding omniglot/ and miniimagenet/, or one of them itself "
        "(default: $IMAML_DATA, else ~/.local/share/imaml)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="where resized images are cached (default: ~/.cache/imaml)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download a missing data set (Omniglot only)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda:LOCAL_RANK if CUDA is available, else cpu), cpu, cuda, "
        "... (default: auto)",
    )
    parser.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for torch (default: torch's)"
    )


def _add_set_option(parser: argparse.ArgumentParser, example: str, whose: str = "") -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key{whose}, e.g. --set {example} (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``imaml`` command."""
    parser = argparse.ArgumentParser(
        prog="imaml", description="Meta-learning with implicit gradients (iMAML)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="meta-train from a config", description=_train.__doc__)
    p.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help=f"a bundled config name (see `imaml configs`) or a TOML file (default: "
        f"{DEFAULT_CONFIG}; with --resume, the run's own config, which may be left out)",
    )
    _add_set_option(p, "train.meta_steps=100")
    p.add_argument("--run-dir", type=Path, metavar="DIR", help="default: runs/<config>-<timestamp>")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in a --run-dir that holds a run, deleting its metrics and checkpoints",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_machine_options(p)
    p.set_defaults(func=_train)

    p = commands.add_parser(
        "eval", help="meta-test a published model or a checkpoint", description=_eval.__doc__
    )
    p.add_argument(
        "path",
        metavar="MODEL",
        help="a published model's name (see `imaml models`), a checkpoint or model file, or a "
        "run directory (its best.pt)",
    )
    p.add_argument(
        "--split",
        choices=("train", "val", "test", "trainval"),
        help="default: the config's eval.split (test)",
    )
    p.add_argument("--tasks", type=int, metavar="N", help="default: the config's eval.tasks (600)")
    p.add_argument(
        "--seed", type=int, default=EVAL_SEED, metavar="S", help="task seed (default: %(default)s)"
    )
    _add_set_option(p, "eval.inner_steps=32", " of the checkpoint (how it adapts)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_machine_options(p)
    p.set_defaults(func=_eval)

    p = commands.add_parser(
        "summary", help="how far a run got and how it validated", description=_summary.__doc__
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.add_argument(
        "--recent", type=int, default=250, metavar="N",
        help="average the training diagnostics over the last N steps (default: %(default)s)",
    )  # fmt: skip
    p.add_argument("--until", type=int, metavar="STEP", help="the run as it stood at STEP")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_summary)

    p = commands.add_parser(
        "configs", help="list the bundled configs", description=_configs.__doc__
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="print this config's TOML")
    p.set_defaults(func=_configs)

    p = commands.add_parser("models", help="list the published models", description=_models.__doc__)
    p.add_argument("--json", action="store_true", help="print one JSON object per model")
    p.set_defaults(func=_models)

    p = commands.add_parser(
        "export", help="write a checkpoint's model as a .safetensors file",
        description=_export.__doc__,
    )  # fmt: skip
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT", type=Path)
    p.add_argument("out", metavar="FILE.safetensors", type=Path)
    p.set_defaults(func=_export)

    p = commands.add_parser(
        "plot", help="plot a run's learning curves, or compare runs", description=_plot.__doc__
    )
    p.add_argument("run_dirs", metavar="RUN_DIR", type=Path, nargs="+")
    p.add_argument(
        "-o", "--out", type=Path,
        help="PNG file (default for one run: RUN_DIR/curves.png; required to compare runs)",
    )  # fmt: skip
    p.set_defaults(func=_plot)
    return parser


def _source(args: argparse.Namespace) -> DataSource:
    return DataSource(args.data_dir or default_data_dir(), args.cache_dir, args.download)


def _new_run_dir(name: str) -> Path:
    stem = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = stem, 1
    while path.exists():
        path, n = Path(f"{stem}-{n}"), n + 1
    return path


def _episodes(data: DataConfig) -> str:
    """The tasks a config meta-learns, e.g. ``omniglot 5-way 1-shot`` (``sinusoid``)."""
    return (
        data.dataset
        if data.dataset == "sinusoid"
        else f"{data.dataset} {data.ways}-way {data.shots}-shot"
    )


def _train(args: argparse.Namespace) -> int:
    """Meta-train from a bundled config or a TOML file, into a run directory."""
    if args.resume:
        if args.run_dir is None:
            raise ConfigError("--resume needs --run-dir DIR, the run to continue")
        named = None if args.config is None else load_config(args.config, args.overrides)[1]
        config = resume_config(args.run_dir, args.overrides, named, args.config or "CONFIG")
        run_dir = args.run_dir
        name = run_dir.name
    else:
        name, config = load_config(args.config or DEFAULT_CONFIG, args.overrides)
        run_dir = args.run_dir or _new_run_dir(name)
    cfg = config.train
    if not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        verb = "resuming" if args.resume else "training"
        print(
            f"imaml: {verb} {name} ({config.algorithm}, {_episodes(config.data)}, "
            f"{cfg.meta_steps} meta-steps of {cfg.meta_batch} tasks) in {run_dir}",
            file=sys.stderr,
        )
    start = time.perf_counter()
    device = device_for(args.device)
    world = init_world(device)
    try:
        result = train(
            config,
            run_dir,
            _source(args),
            resume=args.resume,
            overwrite=args.overwrite,
            quiet=args.quiet,
            device=device,
            world=world,
        )
    finally:
        shutdown(world)
    if world.is_main:
        _print_summary(config, result, time.perf_counter() - start)
    return 0


def _print_summary(config: Config, result: TrainResult, seconds: float) -> None:
    print(f"trained to step {result.steps} in {seconds:.1f} s; run dir: {result.run_dir.path}")
    if result.best is not None:
        step, value = result.best
        print(f"best validation {value:.4f} at step {step} (best.pt)")
    if result.final is not None and result.baseline is not None:
        steps = config.eval.inner_steps or config.inner.steps
        how = f"{steps} {config.inner.optimizer} steps, lam {adaptation_lam(config):g}"
        print(f"{config.eval.split}: {result.final.tasks} held-out tasks, adapted ({how}) from")
        print(f"  the meta-learned init: {result.final}")
        print(f"  the initial random init: {result.baseline}")


def _eval(args: argparse.Namespace) -> int:
    """Meta-test a checkpoint on held-out tasks: mean accuracy (MSE) ± 95% CI."""
    out = evaluate_checkpoint(
        zoo.locate(args.path), _source(args), split=args.split, tasks=args.tasks, seed=args.seed,
        overrides=args.overrides, device=device_for(args.device),
    )  # fmt: skip
    r = out.result
    data = out.config.data
    characters = {"character_split": data.character_split} if data.dataset == "omniglot" else {}
    if args.json:
        record = {
            **r.to_dict(),
            "split": out.split,
            **characters,
            "seed": args.seed,
            "checkpoint": str(out.path),
            "step": out.step,
            "algorithm": out.config.algorithm,
            "overrides": args.overrides,
        }
        print(json.dumps(record))
    else:
        sets = "".join(f" --set {o}" for o in args.overrides)
        of = ""
        if data.character_split == "random":
            of = f" of the random character split (seed {data.character_seed})"
        print(
            f"{out.path}{sets} (step {out.step}), {_episodes(data)}, {r.tasks} {out.split} "
            f"tasks{of}: {r}"
        )
    return 0


def _summary(args: argparse.Namespace) -> int:
    """Meta-steps done, their wall-clock time and the validation history of a run directory."""
    summary = summarize_run(args.run_dir, args.recent, args.until)
    print(json.dumps(summary.to_dict()) if args.json else summary)
    return 0


def _configs(args: argparse.Namespace) -> int:
    """List the bundled configs, or print one."""
    configs = bundled_configs()
    if args.name is not None:
        if args.name not in configs:
            raise ConfigError(f"no bundled config {args.name!r}; bundled: {', '.join(configs)}")
        print(bundled_config_text(args.name), end="")
        return 0
    width = max(map(len, configs))
    for name, description in configs.items():
        print(f"{name:<{width}}  {description}")
    return 0


def _percent(fraction: float, ci95: float) -> str:
    """An accuracy and its 95% CI, fractions, as ``"98.49 ± 0.20 %"``."""
    return f"{100 * fraction:.2f} ± {100 * ci95:.2f} %"


def _models(args: argparse.Namespace) -> int:
    """List the published models: name, setting, test accuracy and meta-steps."""
    entries = zoo.list_models()
    if args.json:
        for entry in entries:
            print(json.dumps(zoo.describe(entry)))
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        queries = "query" if e.shots == 1 else "queries"
        print(
            f"{e.name:<{width}}  {e.dataset} {e.ways}-way {e.shots}-shot, {e.algorithm}, "
            f"{e.character_split} split: {_percent(e.accuracy, e.ci95)} "
            f"({_percent(e.k_query_accuracy, e.k_query_ci95)} in batches of {e.shots} {queries} "
            f"per class; {e.meta_steps:,} meta-steps; paper {e.paper})"
        )
    return 0


def _export(args: argparse.Namespace) -> int:
    """Write the parameters and config of a checkpoint (or a run directory's best one) as a
    model file (safetensors: loading it runs no code), and print its sha256."""
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"the model file must end in .safetensors, got {args.out}")
    state = checkpoint.load(resolve_checkpoint(args.path))
    digest = zoo.save_model(args.out, state["params"], state["config"], state["step"])
    print(f"{args.out} (step {state['step']}): sha256 {digest}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    """Write a PNG of a run's learning curves; with several runs, of their validation metric
    against meta-steps and hours of meta-steps, side by side."""
    if len(args.run_dirs) == 1:
        print(plot_run(args.run_dirs[0], args.out))
        return 0
    if args.out is None:
        raise PlotError(f"comparing {len(args.run_dirs)} runs needs -o FILE.png")
    print(plot_validation(args.run_dirs, args.out))
    return 0


def _show_warning(message: Warning | str, *args: object, **kwargs: object) -> None:
    """Show a warning as one ``imaml: warning: ...`` line on stderr (no source line)."""
    print(f"imaml: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imaml`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be > 0, got {args.threads}")
            torch.set_num_threads(args.threads)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except Interrupted as err:
        run_dir = err.checkpoint.parent
        print(
            f"imaml: {err}; resume with: imaml train --resume --run-dir {run_dir}",
            file=sys.stderr,
        )
        return 128 + err.signum
    except KeyboardInterrupt:
        print("imaml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (`imaml models | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except USER_ERRORS as err:
        message = " ".join(str(err).split())
        print(f"imaml: error: {message}", file=sys.stderr)
        return 1
