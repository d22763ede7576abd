"""Benchmarks of the paper's claims on this library's code: ``imaml bench memory|speed|accuracy``.

Each benchmark writes ``<name>.json`` (settings, hardware, measurements and the targets, each
marked met or not) and ``<name>.png`` to ``--out`` (default ``benchmarks/results``).
``--quick`` runs tiny settings that only exercise the code paths (the tests use it).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

BENCHMARKS = ("memory", "speed", "accuracy")


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark from command-line arguments; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="imaml bench", description="Benchmarks of memory, speed and meta-gradient accuracy."
    )
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--no-plot", action="store_true", help="write the JSON only")
    args = parser.parse_args(argv)

    from imaml.bench._common import default_device, finish

    module = importlib.import_module(f"imaml.bench.{args.benchmark}")
    device = args.device or default_device()
    result = module.run(quick=args.quick, device=device)
    finish(args.benchmark, result, args.out, plot=None if args.no_plot else module.plot)
    return 0
