"""What the benchmarks share: their command line, the Omniglot-shaped problem, timing,
hardware facts and output."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import imaml
from imaml.models import Conv4
from imaml.types import Params

Result = dict[str, Any]
LossFn = Callable[..., Any]
Split = tuple[Tensor, Tensor]
"""A meta-batch's support or query split: images (B, N, 1, 28, 28) and labels (B, N)."""
RESULTS = Path(__file__).parent / "results"
"""Where the committed results are, and the default ``--out``."""


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """Add ``--data-dir DIR``, the folder holding the data sets (``omniglot/``, ...): by default
    ``$IMAML_DATA``, else the working directory."""
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("IMAML_DATA", ".")),
        help="the folder holding omniglot/ (default: $IMAML_DATA, else .)",
    )  # fmt: skip


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``[--out DIR] [--quick] [--device D] [--no-plot]``,
    described by ``doc``'s first paragraph."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="default: benchmarks/results")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--no-plot", action="store_true", help="write the JSON only")
    return parser


def run_benchmark(
    name: str,
    args: argparse.Namespace,
    run: Callable[..., Result],
    plot: Callable[[Result, Path], None],
) -> int:
    """``run(quick=, device=)`` with the options of :func:`benchmark_parser`, then
    :func:`finish`; returns the exit status."""
    result = run(quick=args.quick, device=args.device or default_device())
    finish(name, result, args.out, plot=None if args.no_plot else plot)
    return 0


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def conv4_problem(
    settings: Mapping[str, Any], device: str = "cpu", seed: int = 0
) -> tuple[LossFn, Params, Split, Split]:
    """``(loss_fn, θ, support, query)`` for conv4 Omniglot N-way K-shot, on random 28×28 images.

    ``settings`` gives ``tasks``, ``ways``, ``shots``, ``queries`` (per class) and ``hidden``
    (filters). Time and memory do not depend on the pixel values, so no data set is needed;
    the shapes are those of Omniglot (1 channel, 28×28), with ``ways·shots`` support and
    ``ways·queries`` query images per task.
    """
    tasks, ways = settings["tasks"], settings["ways"]
    hidden, shots, queries = settings["hidden"], settings["shots"], settings["queries"]
    torch.manual_seed(seed)
    model = Conv4(1, ways, hidden=hidden).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def split(per_class: int) -> Split:
        x = torch.rand(tasks, ways * per_class, 1, 28, 28, device=device)
        y = torch.arange(ways, device=device).repeat_interleave(per_class).repeat(tasks, 1)
        return x, y

    return imaml.classification_loss(model), params, split(shots), split(queries)


def synchronize(device: str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: str) -> float:
    """Wall-clock seconds of one call of ``fn``, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


def hardware(device: str) -> dict[str, Any]:
    """The facts that timings depend on: CPU, threads, torch build, device, load."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def target(name: str, value: float, op: str, bound: float) -> dict[str, Any]:
    """A target ``value op bound`` (op ``"<="`` or ``">="``) and whether it is met."""
    met = value <= bound if op == "<=" else value >= bound
    return {"name": name, "value": value, "target": f"{op} {bound:g}", "met": bool(met)}


def finish(
    name: str, result: Result, out: Path, plot: Callable[[Result, Path], None] | None
) -> None:
    """Write ``out/<name>.json`` (and ``out/<name>.png`` with ``plot``) and print the targets."""
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "getloadavg"):
        result["hardware"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    written = [path]
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        plot(result, out / f"{name}.png")
        written.append(out / f"{name}.png")
    for t in result["targets"]:
        status = "MET" if t["met"] else "NOT MET"
        print(f"{status:8s} {t['name']}: {t['value']:.4g} ({t['target']})")
    print("wrote " + ", ".join(str(p) for p in written))
